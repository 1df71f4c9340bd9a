"""A threaded WSGI server on 127.0.0.1 that keeps HTTP/1.1 connections open between requests.

werkzeug's development server (3.1) closes the connection after every
response, so a client that sends thousands of requests pays for a TCP
connection each time, which the vendors' real APIs do not make it pay. The
stand-ins serve on this server when ``keep_alive`` is set.

It takes what HTTP clients send to an API: a request body with
Content-Length, or none. It replies 411 to a chunked request body and
closes the connection.
"""

from __future__ import annotations

import io
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# Seconds an idle connection stays open, waiting for its next request.
IDLE_TIMEOUT = 30.0

# Headers this server writes itself, from the length of the body it has.
_FRAMING_HEADERS = frozenset({"content-length", "connection", "transfer-encoding"})


class KeepAliveServer(ThreadingHTTPServer):
    """Serves ``app`` over HTTP/1.1 keep-alive connections, one thread per connection.

    ``close_connections`` closes every open connection, so that after
    ``shutdown`` no request is served, as with a server that closes each one.
    ``connections_accepted`` counts the connections accepted so far.
    """

    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 drops the connection attempts of a
    # client that opens many at once, which then wait a second to try again.
    request_queue_size = 128

    def __init__(self, host: str, port: int, app: WsgiApp):
        super().__init__((host, port), _KeepAliveHandler)
        self.app = app
        self.connections_accepted = 0
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
            self.connections_accepted += 1
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)

    def close_connections(self) -> None:
        """Shut down every open connection, which ends their threads."""
        with self._open_lock:
            connections = list(self._open)

        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the client closed it already


class _KeepAliveHandler(BaseHTTPRequestHandler):
    """Turns each request into a WSGI call and writes the response with its length."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    server: KeepAliveServer

    def handle_one_request(self) -> None:
        """Read and serve one request, or close the connection on a timeout or a malformed request."""
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            return

        if not self.raw_requestline or not self.parse_request():
            self.close_connection = True
            return

        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Write no access log line, as the stand-ins' werkzeug handler does not."""

    def _serve(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._write(411, "Length Required", [("Content-Type", "text/plain")], [b"chunked bodies are not supported"])
            return

        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
            reply["status"], reply["headers"] = status, headers
            return lambda data: None

        try:
            chunks = list(self.server.app(self._environ(body), start_response))
        except Exception:
            # As werkzeug's server does: log the traceback and reply 500, so
            # the client gets a response rather than a dropped connection.
            traceback.print_exc()
            self.close_connection = True
            self._write(500, "Internal Server Error", [("Content-Type", "text/plain")], [b"stand-in error"])
            return

        code, _, reason = reply["status"].partition(" ")
        self._write(int(code), reason, reply["headers"], chunks)

    def _environ(self, body: bytes) -> dict[str, Any]:
        """Return the WSGI environ of the request just read (PEP 3333)."""
        target = urlsplit(self.path)
        host, port = self.server.server_address[:2]
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(target.path, "latin-1"),
            "QUERY_STRING": target.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "SERVER_NAME": str(host),
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                environ[key] = f"{environ[key]},{value}" if key in environ else value

        return environ

    def _write(self, code: int, reason: str, headers: list[tuple[str, str]], chunks: list[bytes]) -> None:
        """Write the status line, headers and body in one send, so that Nagle's algorithm delays nothing."""
        payload = b"".join(chunks)
        lines = [f"{self.protocol_version} {code} {reason}"]
        lines.extend(f"{name}: {value}" for name, value in headers if name.lower() not in _FRAMING_HEADERS)
        lines.append(f"Content-Length: {len(payload)}")
        if self.close_connection:
            lines.append("Connection: close")

        head = "\r\n".join(lines) + "\r\n\r\n"
        self.wfile.write(head.encode("latin-1") + payload)
