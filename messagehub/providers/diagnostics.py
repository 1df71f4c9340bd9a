"""Check an SMTP relay step by step and explain, in plain words, the first step that fails.

The steps follow a real session: name lookup, TCP connect, TLS (for security
"tls"), greeting and EHLO, STARTTLS (for security "starttls") and login (when
a user name is set). When a test recipient is given, a last step sends a test
message through ``SmtpSender``, the same code that sends campaigns.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime, make_msgid

from messagehub.providers.base import OutgoingMessage, PermanentFailure, ProviderUnavailable, SendError
from messagehub.providers.smtp import (
    SmtpSender,
    SmtpSettings,
    describe_connection_error,
    format_reply,
    greet,
    log_in,
    make_tls_context,
    redact,
    start_tls,
)

log = logging.getLogger(__name__)

NAME_LOOKUP = "name lookup"
CONNECT = "connect"
GREETING = "greeting"
STARTTLS = "STARTTLS"
TLS = "TLS"
LOGIN = "login"
TEST_MESSAGE = "test message"


@dataclass(frozen=True)
class CheckStep:
    """The outcome of one step of ``check_smtp``, with its duration in seconds."""

    name: str
    ok: bool
    detail: str
    seconds: float


def check_smtp(settings: SmtpSettings, *, test_recipient: str | None = None, sender: str) -> list[CheckStep]:
    """Run the steps of an SMTP session in order and stop after the first one that fails.

    ``sender`` is the envelope and From address of the test message, which is
    sent only when ``test_recipient`` is given. Network and protocol errors
    become failed steps, never exceptions. No detail contains the password.
    """
    probe = _Probe(settings)
    steps: list[CheckStep] = []
    try:
        for name, action in _plan(settings, test_recipient, sender):
            step = _run_step(name, action, probe)
            steps.append(step)
            if not step.ok:
                log.info("SMTP check of %s failed at %s: %s", settings.address, name, step.detail)
                break
    finally:
        probe.close()

    return steps


Action = Callable[["_Probe"], str]


def _plan(settings: SmtpSettings, test_recipient: str | None, sender: str) -> list[tuple[str, Action]]:
    """Return the steps that ``settings`` call for, in session order."""
    plan: list[tuple[str, Action]] = [(NAME_LOOKUP, _look_up), (CONNECT, _connect)]
    if settings.security == "tls":
        plan.append((TLS, _wrap_tls))

    plan.append((GREETING, _greet))
    if settings.security == "starttls":
        plan.append((STARTTLS, _start_tls))

    if settings.username:
        plan.append((LOGIN, _log_in))

    if test_recipient:
        plan.append((TEST_MESSAGE, lambda probe: _send_test_message(probe, sender, test_recipient)))

    return plan


def _run_step(name: str, action: Action, probe: _Probe) -> CheckStep:
    """Run one step, timing it and turning its error into a failed step."""
    started = time.monotonic()
    try:
        detail = action(probe)
        ok = True
    except SendError as err:
        detail = err.reply
        ok = False
    except OSError as err:
        # smtplib's exceptions derive from OSError as well.
        detail = describe_connection_error(probe.settings, err)
        ok = False

    seconds = time.monotonic() - started
    return CheckStep(name=name, ok=ok, detail=redact(detail, probe.settings), seconds=seconds)


class _Probe:
    """The state the steps share: resolved addresses, the socket and the SMTP session."""

    def __init__(self, settings: SmtpSettings):
        self.settings = settings
        self.addresses: list[tuple] = []
        self.sock: socket.socket | None = None
        self.smtp: _AdoptingSMTP | None = None

    def close(self) -> None:
        """Send QUIT if a session is open, and close the socket."""
        smtp, self.smtp = self.smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except OSError:
                # Only the courtesy QUIT failed, which changes no step's result.
                pass
            finally:
                smtp.close()

        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _AdoptingSMTP(smtplib.SMTP):
    """smtplib.SMTP that reads its greeting on a socket connected beforehand.

    This lets the check time the TCP connect, the TLS handshake and the
    greeting as separate steps over one connection.
    """

    def __init__(self, sock: socket.socket, settings: SmtpSettings):
        self._adopted = sock
        self.greeting: tuple[int, bytes] = (0, b"")
        super().__init__(settings.host, settings.port, local_hostname=settings.local_hostname, timeout=settings.timeout)

    def connect(
        self, host: str = "localhost", port: int = 0, source_address: tuple[str, int] | None = None
    ) -> tuple[int, bytes]:
        self.greeting = super().connect(host, port, source_address)
        return self.greeting

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # smtplib has no public way to take over a connected socket. This is
        # the method its own SMTP_SSL and LMTP classes override (CPython 3.11).
        return self._adopted


def _look_up(probe: _Probe) -> str:
    settings = probe.settings
    try:
        probe.addresses = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ProviderUnavailable(describe_connection_error(settings, err)) from err

    found = list(dict.fromkeys(str(info[4][0]) for info in probe.addresses))
    return f"{settings.host} resolves to {', '.join(found)}"


def _connect(probe: _Probe) -> str:
    """Connect to the looked-up addresses in turn, as smtplib does, and keep the first connection that succeeds."""
    last_error: OSError | None = None
    for family, kind, protocol, _, address in probe.addresses:
        sock = socket.socket(family, kind, protocol)
        sock.settimeout(probe.settings.timeout)
        try:
            sock.connect(address)
        except OSError as err:
            sock.close()
            last_error = err
            continue

        probe.sock = sock
        return f"connected to {address[0]} port {address[1]}"

    assert last_error is not None, "getaddrinfo returned no address"
    raise ProviderUnavailable(describe_connection_error(probe.settings, last_error))


def _wrap_tls(probe: _Probe) -> str:
    settings = probe.settings
    assert probe.sock is not None
    context = make_tls_context(settings.verify_tls)
    probe.sock = context.wrap_socket(probe.sock, server_hostname=settings.host)
    return _describe_tls(probe.sock, settings)


def _greet(probe: _Probe) -> str:
    settings = probe.settings
    assert probe.sock is not None
    probe.smtp = _AdoptingSMTP(probe.sock, settings)
    greet(probe.smtp, settings)
    greeting = format_reply(*probe.smtp.greeting)
    return f"{greeting}; {_describe_extensions(probe.smtp)}"


def _start_tls(probe: _Probe) -> str:
    assert probe.smtp is not None
    start_tls(probe.smtp, probe.settings)
    return f"{_describe_tls(probe.smtp.sock, probe.settings)}; {_describe_extensions(probe.smtp)}"


def _log_in(probe: _Probe) -> str:
    assert probe.smtp is not None
    log_in(probe.smtp, probe.settings)
    return f"logged in as {probe.settings.username}"


def _send_test_message(probe: _Probe, sender: str, recipient: str) -> str:
    """Send a short message through SmtpSender on a connection of its own."""
    # The sender's own connection repeats the steps above, so the check's
    # session is closed first rather than kept open beside it.
    probe.close()
    message = build_test_message(probe.settings, sender, recipient)
    with SmtpSender(probe.settings) as smtp_sender:
        result = smtp_sender.send(message, lambda: None)

    if not result.confirmed:
        raise ProviderUnavailable(
            f"the test message to {recipient} may have been sent, but no reply came: {result.reply}"
        )

    return f"{probe.settings.address} accepted the test message to {recipient}: {result.reply}"


def build_test_message(settings: SmtpSettings, sender: str, recipient: str) -> OutgoingMessage:
    """Return a short plain-text test message from ``sender`` to ``recipient``."""
    needs_smtputf8 = not (sender + recipient).isascii()
    domain = sender.rpartition("@")[2] or "messagehub.invalid"

    email = EmailMessage()
    try:
        email["From"] = sender
        email["To"] = recipient
    except ValueError as err:
        # The email package rejects line breaks and other header injection.
        raise PermanentFailure(f"invalid test message address {sender!r} or {recipient!r}: {err}") from err

    email["Subject"] = "MessageHub SMTP check"
    email["Date"] = format_datetime(datetime.now(timezone.utc))
    email["Message-ID"] = make_msgid(domain=domain)
    email.set_content(
        f"This message was sent by the SMTP check in MessageHub through {settings.address}.\n"
        "It arrived, so campaigns can be sent through this server. No reply is needed.\n"
    )

    data = email.as_bytes(policy=SMTPUTF8 if needs_smtputf8 else SMTP)
    return OutgoingMessage(
        sender=sender,
        recipient=recipient,
        data=data,
        message_id=email["Message-ID"],
        needs_smtputf8=needs_smtputf8,
    )


def _describe_tls(sock: socket.socket, settings: SmtpSettings) -> str:
    assert isinstance(sock, ssl.SSLSocket)
    version = sock.version() or "TLS"
    cipher = sock.cipher()
    cipher_name = f", cipher {cipher[0]}" if cipher else ""
    if settings.verify_tls:
        check = f"certificate verified for {settings.host}"
    else:
        check = "certificate not checked, because verify TLS is off"

    return f"{version}{cipher_name}; {check}"


def _describe_extensions(smtp: smtplib.SMTP) -> str:
    if not smtp.does_esmtp:
        return "the server answered HELO only and offers no extensions"

    extensions = [f"{name.upper()} {value.strip()}".strip() for name, value in smtp.esmtp_features.items()]
    return f"extensions: {', '.join(extensions) or 'none'}"
