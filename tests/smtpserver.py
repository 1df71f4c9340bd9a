"""A controllable SMTP server for tests, built on aiosmtpd.

``SmtpTestServer`` listens on 127.0.0.1 in a thread of its own, records every
message it accepts and injects the faults real relays show: deferred and
rejected recipients, dropped connections, late replies, AUTH, STARTTLS and
TLS from the first byte. It does not depend on pytest.

Run it as a process, recording each message to a folder:

    python -m tests.smtpserver --port 2525 --record-dir /tmp/received
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import json
import os
import signal
import socket
import ssl
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DROP_POINTS = ("MAIL", "RCPT", "DATA", "after_data", "after_data_accepted")


@dataclass(frozen=True)
class ReceivedMessage:
    """A message the server accepted, as it arrived on the wire."""

    sender: str
    recipients: tuple[str, ...]
    # The content after DATA, dots unstuffed, without the final ".\r\n".
    data: bytes
    mail_options: tuple[str, ...]
    # The AUTH user name of the session, None without AUTH.
    login: str | None
    tls: bool
    # Which connection carried it, counted from 1 since the server started.
    connection: int


@dataclass(frozen=True)
class Certificate:
    """Paths of a PEM certificate and its private key."""

    cert: Path
    key: Path


def make_self_signed_cert(directory: Path, host: str = "localhost") -> Certificate:
    """Write a self-signed certificate for ``host`` and 127.0.0.1 into ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(timezone.utc)
    alternative_names = x509.SubjectAlternativeName(
        [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(alternative_names, critical=False)
        .sign(key, hashes.SHA256())
    )

    directory.mkdir(parents=True, exist_ok=True)
    paths = Certificate(cert=directory / "smtp-cert.pem", key=directory / "smtp-key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def server_tls_context(certificate: Certificate) -> ssl.SSLContext:
    """Return a server TLS context that presents ``certificate``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate.cert, certificate.key)
    return context


class SmtpTestServer:
    """An aiosmtpd server on 127.0.0.1 that records messages and injects faults.

    Fault methods may be called while the server runs; they are thread-safe.
    Addresses are compared case-insensitively.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        smtputf8: bool = True,
        auth: tuple[str, str] | None = None,
        require_auth: bool = False,
        starttls: Certificate | None = None,
        require_starttls: bool = False,
        implicit_tls: Certificate | None = None,
        record_dir: Path | None = None,
        pipelining: bool = True,
        reply_delay: float = 0.0,
    ):
        self.host = host
        self._requested_port = port
        self._smtputf8 = smtputf8
        self._starttls = starttls
        self._require_starttls = require_starttls
        self._implicit_tls = implicit_tls
        self._handler = _FaultHandler(auth=auth, require_auth=require_auth, record_dir=record_dir)
        self._handler.pipelining = pipelining
        # Seconds each message waits before its final reply, like a slower relay.
        self._handler.reply_delay = reply_delay
        self._controller: _Controller | None = None

    def __enter__(self) -> SmtpTestServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """Return the port the server listens on."""
        if self._controller is None:
            raise RuntimeError("the SMTP test server is not running")
        return self._controller.port

    @property
    def connection_count(self) -> int:
        """Return how many SMTP connections clients opened since start."""
        return self._handler.connection_count

    @property
    def messages(self) -> list[ReceivedMessage]:
        """Return a copy of the accepted messages, oldest first."""
        return self._handler.received()

    def start(self) -> None:
        """Start listening. After this, ``port`` returns the port picked when 0 was given."""
        smtp_options: dict[str, Any] = {
            "enable_SMTPUTF8": self._smtputf8,
            # Without it aiosmtpd would look up this machine's FQDN for every connection.
            "server_hostname": "smtp.test.invalid",
            # AUTH over plain text is fine on loopback and keeps tests simple.
            "auth_require_tls": False,
            "authenticator": self._handler.authenticate,
        }
        if self._starttls is not None:
            smtp_options["tls_context"] = server_tls_context(self._starttls)
            smtp_options["require_starttls"] = self._require_starttls

        ssl_context = server_tls_context(self._implicit_tls) if self._implicit_tls else None
        self._controller = _Controller(
            self._handler, hostname=self.host, port=self._requested_port, ssl_context=ssl_context, **smtp_options
        )
        self._controller.start()

        # Start-up opened one connection to check the server; it does not count.
        self._handler.reset_connection_count()

    def stop(self) -> None:
        """Close every open connection and stop the server."""
        controller, self._controller = self._controller, None
        if controller is None:
            return

        close = asyncio.run_coroutine_threadsafe(self._handler.close_connections(), controller.loop)
        close.result(timeout=5)
        controller.stop()

    def messages_to(self, address: str) -> list[ReceivedMessage]:
        """Return the accepted messages that have ``address`` among their recipients."""
        wanted = address.casefold()
        return [m for m in self.messages if wanted in (r.casefold() for r in m.recipients)]

    def count_by_recipient(self) -> collections.Counter[str]:
        """Return how many accepted messages each recipient address got."""
        return collections.Counter(r for m in self.messages for r in m.recipients)

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Wait until at least ``count`` messages arrived and return them all.

        Raises TimeoutError when fewer arrived within ``timeout`` seconds.
        """
        return self._handler.wait_for(count, timeout)

    def defer(self, address: str, times: int = 1, reply: str = "451 4.3.0 try again later") -> None:
        """Reply to RCPT TO for ``address`` with a 4xx ``reply`` the next ``times`` times."""
        self._handler.set_rcpt_reply(address, reply, times)

    def reject(self, address: str, reply: str = "550 5.1.1 user unknown") -> None:
        """Reply to every RCPT TO for ``address`` with a 5xx ``reply``."""
        self._handler.set_rcpt_reply(address, reply, None)

    def reply_to_mail(self, reply: str, times: int = 1) -> None:
        """Reply to the next ``times`` MAIL FROM commands with ``reply``."""
        self._handler.queue_reply("MAIL", reply, times)

    def reply_to_data(self, reply: str, times: int = 1) -> None:
        """Reply to the next ``times`` final dots with ``reply``. The message is stored only for a 2xx reply."""
        self._handler.queue_reply("DATA", reply, times)

    def drop_connection_once(self, at: str) -> None:
        """Close the next connection that reaches ``at`` abruptly, without a reply.

        ``at`` is "MAIL", "RCPT" or "DATA" to drop at that command.
        "after_data" drops after the whole message arrived, without storing
        it, like a relay that crashed before queueing it. "after_data_accepted"
        stores the message and then drops, like a relay whose reply was lost.
        """
        if at not in DROP_POINTS:
            raise ValueError(f"invalid drop point {at!r}: expected one of {', '.join(DROP_POINTS)}")
        self._handler.queue_drop(at)

    def stall_once(self, seconds: float) -> None:
        """Delay the reply to the next final dot by ``seconds``.

        The message is stored only if the client is still connected when the
        reply is due, so a client that timed out leaves nothing behind.
        """
        self._handler.queue_stall(seconds)


class SilentServer:
    """A TCP listener on 127.0.0.1 that accepts connections and never sends a byte.

    The kernel completes the TCP handshake for queued connections, so a client
    connects and then waits for an SMTP greeting that never comes.
    """

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self.port: int = self._socket.getsockname()[1]

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening; queued connections are reset."""
        self._socket.close()


def unused_port() -> int:
    """Return a port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Controller(Controller):
    """aiosmtpd's threaded controller, counting connections and accepting port 0."""

    def factory(self) -> SMTP:
        number = self.handler.open_connection()
        return _TestSMTP(self.handler, number, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # aiosmtpd 1.4 start() connects to self.port to create the first SMTP
        # instance. With port 0 that must be the port the OS picked.
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class _TestSMTP(SMTP):
    """aiosmtpd's SMTP session, remembering its connection number."""

    def __init__(self, handler: _FaultHandler, connection: int, **options: Any):
        super().__init__(handler, **options)
        self.connection = connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.event_handler.live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.event_handler.live.discard(self)
        super().connection_lost(error)

    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd answers 354 before any handler hook runs, so a drop at the
        # DATA command itself has to happen here.
        if self.event_handler.take_drop("DATA"):
            await abort_connection(self)
        await super().smtp_DATA(arg)


def _uses_tls(server: SMTP) -> bool:
    """Tell whether the session runs over TLS, from the first byte or after STARTTLS."""
    # aiosmtpd fills session.ssl only after STARTTLS.
    return server.transport is not None and server.transport.get_extra_info("ssl_object") is not None


async def abort_connection(server: SMTP) -> None:
    """Close the connection without a reply and wait until aiosmtpd cancels the session."""
    assert server.transport is not None
    server.transport.abort()

    # connection_lost() cancels the session task, which ends this wait.
    await asyncio.get_running_loop().create_future()


class _FaultHandler:
    """aiosmtpd handler hooks: records messages and applies the configured faults."""

    def __init__(self, *, auth: tuple[str, str] | None, require_auth: bool, record_dir: Path | None):
        self._auth = auth
        self._require_auth = require_auth
        self._record_dir = record_dir
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._messages: list[ReceivedMessage] = []
        self._connections = 0
        # address (casefolded) -> [reply, remaining times or None for always]
        self._rcpt_replies: dict[str, list[Any]] = {}
        self._queued_replies: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._drops: collections.Counter[str] = collections.Counter()
        self._stalls: collections.deque[float] = collections.deque()
        self.reply_delay = 0.0
        # Sessions with an open connection; only touched in the server thread.
        self.live: set[_TestSMTP] = set()
        # Advertise PIPELINING (RFC 2920), as Postfix and most relays do.
        # aiosmtpd reads commands one line at a time, so it serves a
        # pipelined group in order without advertising it itself.
        self.pipelining = True

    async def handle_EHLO(self, server: SMTP, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    @property
    def connection_count(self) -> int:
        with self._lock:
            return self._connections

    def open_connection(self) -> int:
        with self._lock:
            self._connections += 1
            return self._connections

    def reset_connection_count(self) -> None:
        with self._lock:
            self._connections = 0

    def received(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float) -> list[ReceivedMessage]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(f"expected {count} messages within {timeout} s, got {len(self._messages)}")
            return list(self._messages)

    def set_rcpt_reply(self, address: str, reply: str, times: int | None) -> None:
        with self._lock:
            self._rcpt_replies[address.casefold()] = [reply, times]

    def queue_reply(self, command: str, reply: str, times: int) -> None:
        with self._lock:
            self._queued_replies[command].extend([reply] * times)

    def queue_drop(self, at: str) -> None:
        with self._lock:
            self._drops[at] += 1

    def queue_stall(self, seconds: float) -> None:
        with self._lock:
            self._stalls.append(seconds)

    def take_drop(self, at: str) -> bool:
        with self._lock:
            if self._drops[at] == 0:
                return False
            self._drops[at] -= 1
            return True

    def _take_reply(self, command: str) -> str | None:
        with self._lock:
            queue = self._queued_replies[command]
            return queue.popleft() if queue else None

    def _take_rcpt_reply(self, address: str) -> str | None:
        with self._lock:
            entry = self._rcpt_replies.get(address.casefold())
            if entry is None:
                return None
            reply, times = entry
            if times is not None:
                if times == 0:
                    return None
                entry[1] = times - 1
            return reply

    def _take_stall(self) -> float | None:
        with self._lock:
            return self._stalls.popleft() if self._stalls else None

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """Accept the configured user name and password, reject everything else."""
        if self._auth is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)

        username, password = self._auth
        accepted = auth_data.login == username.encode() and auth_data.password == password.encode()
        return AuthResult(success=accepted, handled=False, auth_data=auth_data)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # aiosmtpd leaves recording the EHLO name to a handler that has this hook.
        session.host_name = hostname
        if self._auth is None:
            # Offer no AUTH at all instead of aiosmtpd's always-failing default.
            responses = [line for line in responses if not line.startswith("250-AUTH")]
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.take_drop("MAIL"):
            await abort_connection(server)

        if self._require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"

        queued = self._take_reply("MAIL")
        if queued is not None:
            return queued

        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.take_drop("RCPT"):
            await abort_connection(server)

        reply = self._take_rcpt_reply(address)
        if reply is not None:
            return reply

        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: _TestSMTP, session: Session, envelope: Envelope) -> str:
        if self.take_drop("after_data"):
            await abort_connection(server)

        if self.take_drop("after_data_accepted"):
            self._store(server, session, envelope)
            await abort_connection(server)

        stall = self._take_stall()
        if stall is not None:
            # A client that gives up closes the connection, and aiosmtpd then
            # cancels this wait, so nothing is stored.
            await asyncio.sleep(stall)
        if self.reply_delay:
            await asyncio.sleep(self.reply_delay)

        reply = self._take_reply("DATA")
        if reply is not None and not reply.startswith("2"):
            return reply

        number = self._store(server, session, envelope)
        return reply or f"250 2.0.0 OK: queued as Q{number:06d}"

    def _store(self, server: _TestSMTP, session: Session, envelope: Envelope) -> int:
        credentials = session.auth_data
        login = credentials.login.decode() if isinstance(credentials, LoginPassword) else None
        message = ReceivedMessage(
            sender=envelope.mail_from or "",
            recipients=tuple(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            mail_options=tuple(envelope.mail_options),
            login=login,
            tls=_uses_tls(server),
            connection=server.connection,
        )
        with self._arrived:
            self._messages.append(message)
            number = len(self._messages)
            self._arrived.notify_all()

        if self._record_dir is not None:
            _write_record(self._record_dir, number, message)
        return number

    async def close_connections(self) -> None:
        """Close every open client connection, so that stopping leaves no transport open."""
        for server in list(self.live):
            # After STARTTLS, aiosmtpd keeps the TCP transport under the TLS
            # one; a TLS transport already shutting down may leave it open.
            for transport in (server.transport, server._original_transport):
                if transport is not None and not transport.is_closing():
                    transport.abort()

        # Let the connection_lost() callbacks that abort() scheduled run.
        for _ in range(3):
            await asyncio.sleep(0)


def _write_record(directory: Path, number: int, message: ReceivedMessage) -> None:
    """Write a message as NNNNNN.eml plus its envelope as NNNNNN.json, each renamed into place."""
    directory.mkdir(parents=True, exist_ok=True)
    envelope = asdict(message)
    del envelope["data"]
    for suffix, content in (
        (".eml", message.data),
        (".json", json.dumps(envelope, ensure_ascii=False, indent=1).encode()),
    ):
        final = directory / f"{number:06d}{suffix}"
        partial = final.with_name(f".{final.name}.part")
        partial.write_bytes(content)
        os.replace(partial, final)


def main(argv: list[str] | None = None) -> None:
    """Run the test server in the foreground until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m tests.smtpserver", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=2525, help="TCP port to listen on; 0 picks a free one (default 2525)"
    )
    parser.add_argument("--record-dir", type=Path, help="folder that receives each accepted message as .eml and .json")
    parser.add_argument("--no-smtputf8", action="store_true", help="do not offer the SMTPUTF8 extension")
    parser.add_argument(
        "--reply-delay", type=float, default=0.0, help="seconds each message waits for its final reply (default 0)"
    )
    args = parser.parse_args(argv)

    stopping = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stopping.set())

    server = SmtpTestServer(
        host=args.host,
        port=args.port,
        smtputf8=not args.no_smtputf8,
        record_dir=args.record_dir,
        reply_delay=args.reply_delay,
    )
    with server:
        print(f"SMTP test server listening on {args.host}:{server.port}", flush=True)
        while not stopping.wait(0.5):
            pass
        print(f"SMTP test server stopping after {len(server.messages)} messages", flush=True)


if __name__ == "__main__":
    main()
