"""HTTP clients for the twilio SDK that tell whether a failed request may have reached Twilio.

``KeepAliveHttpClient`` sends over one keep-alive connection per thread with
``http.client``. The SDK's own client goes through a requests ``Session``,
which reads the proxy variables of the environment on every request. Those
lookups and the rest of requests' preparation took about 0.9 ms of CPU per
message, more than half of the engine's CPU per Twilio message
(cProfile of ``python -m messagehub.engine``, 2 CPUs, requests 2.34).
``make_http_client`` therefore picks it whenever no proxy variable applies to the
API's URL, and otherwise keeps the requests-based ``ProxiedHttpClient``.

Both raise ``TransportError`` for a request that failed below HTTP, with
``sent`` False only when the request cannot have left this host.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import select
import socket
import ssl
import threading
import urllib.request
from typing import Any
from urllib.parse import urlencode, urlsplit

import certifi
import requests
from requests.adapters import HTTPAdapter
from twilio.http import HttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

# The SDK's own logger, so the SDK's request log lines (without the
# Authorization header) keep their place and level.
_sdk_log = logging.getLogger("twilio.http_client")


class TransportError(Exception):
    """A request failed below HTTP: no connection, a timeout, a broken connection.

    ``sent`` is False when the request cannot have reached Twilio (the
    connection or the proxy was never reached), and True when it may have.
    """

    def __init__(self, reason: str, sent: bool):
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


def make_http_client(base_url: str, timeout: float, connections: int) -> KeepAliveHttpClient | ProxiedHttpClient:
    """Return the HTTP client for ``base_url``: through requests when a proxy variable applies to it, else direct.

    ``connections`` is how many threads may send at the same time.
    """
    if proxy_applies(base_url):
        return ProxiedHttpClient(timeout, connections)
    return KeepAliveHttpClient(base_url, timeout)


def proxy_applies(url: str) -> bool:
    """Tell whether the proxy variables of the environment (HTTPS_PROXY, NO_PROXY...) send ``url`` through a proxy."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False

    return not urllib.request.proxy_bypass(parts.netloc)


class KeepAliveHttpClient(HttpClient):
    """Sends the SDK's requests to one origin, over a keep-alive connection per thread.

    Thread-safe: each thread has its own connection and its own
    ``last_response``. It reads no proxy variables, no ~/.netrc and no
    Requests CA variables per request. TLS uses the CA bundle in
    REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE when set, read once, else certifi's
    bundle as requests does.
    """

    def __init__(self, base_url: str, timeout: float):
        super().__init__(_sdk_log, is_async=False, timeout=timeout)
        parts = urlsplit(base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._tls = _tls_context() if parts.scheme == "https" else None
        self._local = threading.local()
        self._opened: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @property
    def last_response(self) -> Response | None:
        """The response to this thread's last request, or None when it got none."""
        return getattr(self._local, "response", None)

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        """Send one request and return Twilio's response, without following redirects."""
        self._local.response = None
        target = self._target(url, params)
        headers = dict(headers or {})
        body = _encoded_body(data, headers)
        if auth is not None:
            headers["Authorization"] = _basic_credentials(auth)

        # The SDK formats its log lines before the logger filters them.
        if self.logger.isEnabledFor(logging.INFO):
            self.log_request({"method": method.upper(), "url": url, "params": params, "headers": headers})

        status, text, reply_headers = self._exchange(method.upper(), target, body, headers, timeout or self.timeout)
        response = Response(status, text, reply_headers)
        self._local.response = response

        if self.logger.isEnabledFor(logging.INFO):
            self.log_response(status, response)

        return response

    def close(self) -> None:
        """Close every thread's connection; a later request opens a new one."""
        with self._lock:
            opened, self._opened = self._opened, []

        for connection in opened:
            connection.close()

    def _target(self, url: str, params: dict[str, object] | None) -> str:
        """Return the request target (path and query) of ``url``, which must be on this client's origin."""
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != self.origin:
            raise TransportError(f"invalid request URL {url}: this client sends only to {self.origin}", sent=False)

        target = parts.path or "/"
        query = "&".join(part for part in (parts.query, urlencode(params or {}, doseq=True)) if part)
        return f"{target}?{query}" if query else target

    def _exchange(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str], timeout: float | None
    ) -> tuple[int, str, http.client.HTTPMessage]:
        """Send the request on this thread's connection and read the whole response."""
        connection = self._connected(timeout)

        # From here on the request may reach Twilio, so any failure counts as sent.
        try:
            connection.request(method, target, body=body, headers=headers)
            reply = connection.getresponse()
            payload = reply.read()
        except (OSError, http.client.HTTPException) as err:
            connection.close()
            raise TransportError(_describe(err), sent=True) from err

        return reply.status, payload.decode(_charset(reply), errors="replace"), reply.headers

    def _connected(self, timeout: float | None) -> http.client.HTTPConnection:
        """Return this thread's connection, connected; a failure here means nothing was sent."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._new_connection()
            self._local.connection = connection

        # An idle connection that is readable was closed by the server (or
        # sent something unasked), so it is replaced before anything is written.
        if connection.sock is not None and _readable(connection.sock):
            connection.close()

        connection.timeout = timeout
        if connection.sock is None:
            try:
                connection.connect()
            except OSError as err:
                connection.close()
                raise TransportError(_describe(err), sent=False) from err
        else:
            connection.sock.settimeout(timeout)

        return connection

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._tls is not None:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._tls
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

        with self._lock:
            self._opened.append(connection)
        return connection


class ProxiedHttpClient(TwilioHttpClient):
    """The SDK's requests-based client for a proxy, raising ``TransportError`` and keeping one response per thread."""

    def __init__(self, timeout: float, connections: int):
        super().__init__(timeout=timeout)
        self._local = threading.local()

        # Room in the connection pools for every sending thread, so no
        # connection is opened and discarded per request.
        adapter = HTTPAdapter(pool_maxsize=max(connections, 1))
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    @property
    def last_response(self) -> Response | None:
        """The response to this thread's last request, or None when it got none."""
        return getattr(self._local, "response", None)

    def request(self, *args: Any, **kwargs: Any) -> Response:
        """Send one request through requests; raise ``TransportError`` when it fails below HTTP."""
        self._local.response = None
        try:
            response = super().request(*args, **kwargs)
        except requests.exceptions.RequestException as err:
            raise TransportError(_connection_reason(err), sent=not never_sent(err)) from err

        self._local.response = response
        return response

    def close(self) -> None:
        """Close the session's connections."""
        self.session.close()


def never_sent(err: requests.exceptions.RequestException) -> bool:
    """Tell whether ``err`` struck before the request left this host: no connection, no proxy, or a bad URL."""
    never_left = (
        requests.exceptions.ConnectTimeout,
        requests.exceptions.ProxyError,
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
    )
    if isinstance(err, never_left):
        return True

    # urllib3 reports a refused or failed connection (and a failed name
    # lookup) as ConnectTimeoutError or a subclass of it, wrapped in
    # MaxRetryError. A connection that breaks later may have carried the
    # request, so it counts as sent.
    reason = err.args[0] if err.args else None
    if isinstance(reason, MaxRetryError):
        return isinstance(reason.reason, ConnectTimeoutError)

    return False


def _connection_reason(err: requests.exceptions.RequestException) -> str:
    reason = err.args[0] if err.args else err
    if isinstance(reason, MaxRetryError) and reason.reason is not None:
        return str(reason.reason)
    return str(reason)


def _tls_context() -> ssl.SSLContext:
    """Return a verifying TLS context with the CA bundle requests would use."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    if os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)


def _encoded_body(data: dict[str, object] | None, headers: dict[str, str]) -> bytes | None:
    """Encode ``data`` as JSON when the SDK sets a JSON Content-Type, else as a form, as the SDK's own client does."""
    if data is None:
        return None

    content_type = headers.get("Content-Type", "")
    if content_type in ("application/json", "application/scim+json"):
        return json.dumps(data).encode()

    headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    return urlencode(data, doseq=True).encode()


def _basic_credentials(auth: tuple[str, str]) -> str:
    username, password = auth
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _charset(reply: http.client.HTTPResponse) -> str:
    """Return the charset of the reply's Content-Type, or UTF-8, which JSON uses."""
    return reply.headers.get_content_charset() or "utf-8"


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _describe(err: Exception) -> str:
    return str(err) or type(err).__name__
