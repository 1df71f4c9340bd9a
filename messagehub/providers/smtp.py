"""Deliver messages to an SMTP relay over one connection kept open across messages.

The connection setup helpers (``connect``, ``greet``, ``start_tls``,
``log_in``) raise ``ProviderUnavailable`` with a plain-words reason and are
shared with ``messagehub.providers.diagnostics``. No error text built here
contains the password.
"""

from __future__ import annotations

import base64
import logging
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass, field

from messagehub.providers.base import (
    ConnectionLost,
    HandoverCallback,
    OutgoingMessage,
    PermanentFailure,
    ProviderUnavailable,
    SendError,
    SendResult,
    TemporaryFailure,
)

log = logging.getLogger(__name__)

SECURITY_MODES = ("none", "starttls", "tls")

# The reply stored when the final dot was written but no reply came back: the
# relay may have queued the message, so the engine must not send it again.
IN_DOUBT_REPLY = "connection lost after the message was handed over"

# Reply codes that reject the client itself rather than one message: 530
# authentication (or STARTTLS) required, 535 credentials invalid, 538
# encryption required for the authentication mechanism (RFC 4954).
ACCOUNT_REPLY_CODES = frozenset({530, 535, 538})

# 552 at MAIL FROM means the announced SIZE is too large, which depends on
# the message. Every other 5xx at MAIL FROM rejects the sender or the client.
MESSAGE_SIZE_EXCEEDED = 552

# A server closing the channel (RFC 5321 section 3.8) sends 421 and then
# disconnects, so the connection cannot be reused after it.
SERVICE_CLOSING = 421

# Exceptions of a broken or timed-out connection. smtplib's exceptions derive
# from OSError, so this also catches SMTPServerDisconnected and the
# SMTPResponseException that smtplib raises for an overlong reply line.
CONNECTION_ERRORS = (OSError,)

_MIN_REDACTED_LENGTH = 4
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_LINE_START_DOT = re.compile(rb"(?m)^\.")
_ENHANCED_CODE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True)
class SmtpSettings:
    """Address, security and credentials of an SMTP relay.

    ``security`` is "none", "starttls" (upgrade a plain connection and never
    fall back to plain text) or "tls" (TLS from the first byte, usually port
    465). ``verify_tls=False`` accepts any certificate, including self-signed
    ones and ones issued for another host name. Use it only for an intranet
    relay you trust, because it gives up protection against a
    man-in-the-middle. ``timeout`` is in seconds and applies to each network
    operation (connect, each reply, each write), not to a whole message.
    Writing the message content is one operation, so a large message over a
    slow link needs a timeout that covers its whole upload.
    ``local_hostname`` is the name sent with EHLO; None uses the machine's
    fully qualified domain name.
    """

    host: str
    port: int = 25
    security: str = "none"
    username: str = ""
    password: str = field(default="", repr=False)
    timeout: float = 30.0
    local_hostname: str | None = None
    verify_tls: bool = True

    def __post_init__(self) -> None:
        if self.security not in SECURITY_MODES:
            raise ValueError(
                f"invalid SMTP security {self.security!r}: expected one of {', '.join(SECURITY_MODES)}"
            )

        if not 0 < self.port < 65536:
            raise ValueError(f"invalid SMTP port {self.port}: expected 1 to 65535")

        if self.timeout <= 0:
            raise ValueError(f"invalid SMTP timeout {self.timeout}: expected seconds above 0")

    @property
    def address(self) -> str:
        """Return host:port as people write it, with an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class SmtpSender:
    """Send messages through one SMTP connection that stays open between messages.

    The connection opens on the first ``send`` and is reused. A connection
    that the server closed while idle is replaced once, transparently, when
    MAIL FROM fails on it. Not thread-safe: use one sender per thread.
    """

    def __init__(self, settings: SmtpSettings):
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None
        # The message whose MAIL, RCPT and DATA went out behind the previous
        # message's final dot, with their replies not read yet.
        self._written_ahead: OutgoingMessage | None = None

    def __enter__(self) -> SmtpSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(
        self, message: OutgoingMessage, on_handover: HandoverCallback, following: OutgoingMessage | None = None
    ) -> SendResult:
        """Deliver ``message`` in one MAIL/RCPT/DATA transaction (see ``Sender.send``).

        With PIPELINING, the envelope of ``following`` goes out right behind
        this message's final dot, so the next ``send`` (which must be for
        ``following``) finds its replies waiting: one round trip per message
        instead of two.
        """
        started = self.start(message, on_handover, following)
        return started if started is not None else self.finish(message)

    def start(
        self, message: OutgoingMessage, on_handover: HandoverCallback, following: OutgoingMessage | None = None
    ) -> SendResult | None:
        """Do the first part of ``send``: everything up to the write that ends in the final dot.

        Returns None while the server's reply to the dot is still to be read
        with ``finish``, or the result when the write broke after the dot left.
        A caller with several senders starts a message on each, then finishes
        them, so that the servers work on all of them at once.
        """
        if self._written_ahead is not message:
            # A message written ahead was checked before its envelope went out.
            check_envelope(message)
        smtp = self._open_transaction(message)
        return self._hand_over(smtp, message, on_handover, following)

    def finish(self, message: OutgoingMessage) -> SendResult:
        """Read the reply to the final dot of ``message``, which ``start`` wrote, and turn it into the result."""
        try:
            code, text = self._smtp.getreply()
        except CONNECTION_ERRORS as err:
            self._discard()
            log.warning(
                "lost SMTP connection to %s after handover of %s: %s", self.settings.address, message.message_id, err
            )
            return SendResult(reply=IN_DOUBT_REPLY, confirmed=False)

        return self._final_result(code, text, message)

    def was_delivered(self, message_id: str) -> None:
        """Return None: SMTP offers no way to ask a relay about an earlier message."""
        return None

    def close(self) -> None:
        """Send QUIT and close the connection, if one is open."""
        if self._written_ahead is not None:
            # The server may be waiting for that message's content after 354,
            # and would take QUIT for content: only closing cancels it.
            self._discard()
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return

        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            # The connection is being discarded anyway; a failed QUIT loses nothing.
            pass
        finally:
            smtp.close()

        log.info("closed SMTP connection to %s", self.settings.address)

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is None:
            self._smtp = open_connection(self.settings)
            log.info("opened SMTP connection to %s (security %s)", self.settings.address, self.settings.security)

        return self._smtp

    def _discard(self) -> None:
        """Drop the connection without QUIT, so the next send reconnects."""
        self._written_ahead = None
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def _open_transaction(self, message: OutgoingMessage) -> smtplib.SMTP:
        """Send MAIL FROM, RCPT TO and DATA, and return the connection once the server replied 354."""
        written = self._written_ahead is message
        if self._written_ahead is not None and not written:
            # Another message's envelope is waiting on this connection.
            self._discard()
        self._written_ahead = None

        reused = self._smtp is not None
        smtp = self._connection()
        try:
            if smtp.has_extn("pipelining"):
                smtp = self._pipelined_envelope(smtp, message, reused, written)
            else:
                smtp = self._mail_from(smtp, message, reused)
                _expect(smtp, "RCPT", f"TO:<{message.recipient}>", 200)
                _expect(smtp, "DATA", "", 354)
        except _Rejected as rejection:
            self._after_rejection(rejection)
            raise rejection.error(self.settings) from None
        except CONNECTION_ERRORS as err:
            self._discard()
            raise ConnectionLost(f"connection to {self.settings.address} lost before handover: {err}") from err

        return smtp

    def _mail_from(self, smtp: smtplib.SMTP, message: OutgoingMessage, reused: bool) -> smtplib.SMTP:
        """Send MAIL FROM, and reconnect once if the server closed a reused connection while it was idle."""
        try:
            _send_mail_from(smtp, message)
            return smtp
        except CONNECTION_ERRORS as err:
            if not reused:
                raise
            reason = str(err)
        except _Rejected as rejection:
            if not reused or rejection.code != SERVICE_CLOSING:
                raise
            reason = rejection.reply

        # Nothing of this message reached the server yet, so a new connection
        # can take it without any risk of a duplicate.
        log.info("reconnecting to %s: the idle connection was closed (%s)", self.settings.address, reason)
        self._discard()
        smtp = self._connection()
        _send_mail_from(smtp, message)
        return smtp

    def _pipelined_envelope(
        self, smtp: smtplib.SMTP, message: OutgoingMessage, reused: bool, written: bool = False
    ) -> smtplib.SMTP:
        """Send MAIL FROM, RCPT TO and DATA in one write (RFC 2920), then read their three replies.

        One round trip instead of three; none when the previous ``send``
        already wrote them (``written``). A reused connection that the server
        closed while idle is replaced once, as in ``_mail_from``.
        """
        try:
            replies = _read_envelope_replies(smtp) if written else _send_envelope(smtp, message)
            _check_envelope_replies(replies)
            return smtp
        except CONNECTION_ERRORS as err:
            if not reused:
                raise
            reason = str(err)
        except _Rejected as rejection:
            if not reused or rejection.command != "MAIL" or rejection.code != SERVICE_CLOSING:
                raise
            reason = rejection.reply

        # Nothing of this message reached the server yet, so a new connection
        # can take it without any risk of a duplicate.
        log.info("reconnecting to %s: the idle connection was closed (%s)", self.settings.address, reason)
        self._discard()
        smtp = self._connection()
        _check_envelope_replies(_send_envelope(smtp, message))
        return smtp

    def _after_rejection(self, rejection: _Rejected) -> None:
        """Bring the connection back to a clean state after a rejected command."""
        smtp = self._smtp
        if smtp is None:
            return

        # A server that replied 354 to a pipelined DATA waits for content:
        # only closing the connection ends that transaction without a message.
        if rejection.code == SERVICE_CLOSING or rejection.code < 400 or rejection.data_open:
            self._discard()
            return

        try:
            code, text = smtp.rset()
        except CONNECTION_ERRORS:
            self._discard()
            return

        if code != 250:
            reply = format_reply(code, text)
            log.info("discarding SMTP connection to %s: RSET failed with %s", self.settings.address, reply)
            self._discard()

    def _hand_over(
        self,
        smtp: smtplib.SMTP,
        message: OutgoingMessage,
        on_handover: HandoverCallback,
        following: OutgoingMessage | None = None,
    ) -> SendResult | None:
        """Call ``on_handover``, then write the content and the final dot in one write; see ``start`` for the result.

        One write keeps the window between the handover record and the final
        dot as short as a single system call, and saves a write per message.
        The envelope of ``following`` rides in the same write: the server
        replies to the dot and to the next envelope at once. The write counts the
        bytes that left, so a failure still tells whether the dot did.
        """
        content = encode_data(message.data, message.crlf_only) + b".\r\n"
        ahead = self._envelope_ahead(smtp, following)
        try:
            on_handover()
        except BaseException:
            # Closing before the final dot makes the server cancel the
            # transaction (RFC 5321 section 3.8), so the message is not sent.
            self._discard()
            raise

        try:
            _send_counted(smtp.sock, content + ahead)
        except _WriteFailed as failure:
            self._discard()
            if failure.sent < len(content):
                # The final dot did not leave in full: the server cannot have accepted the message.
                raise ConnectionLost(
                    f"connection to {self.settings.address} lost while sending the message: {failure.error}"
                ) from failure.error
            log.warning(
                "lost SMTP connection to %s after handover of %s: %s",
                self.settings.address, message.message_id, failure.error,
            )
            return SendResult(reply=IN_DOUBT_REPLY, confirmed=False)
        if ahead:
            self._written_ahead = following
        return None

    def _envelope_ahead(self, smtp: smtplib.SMTP, following: OutgoingMessage | None) -> bytes:
        """Return the envelope of the next message to write behind this one's dot, or b"" to wait for it."""
        if following is None or not smtp.has_extn("pipelining"):
            return b""
        try:
            check_envelope(following)
            return _envelope_bytes(smtp, following)
        except SendError:
            # Its own send raises this again and records it for that recipient.
            return b""

    def _final_result(self, code: int, text: bytes, message: OutgoingMessage) -> SendResult:
        """Turn the reply to the final dot into a result or a failure."""
        if 200 <= code < 300:
            description = reply_text(text)
            return SendResult(reply=format_reply(code, description), provider_id=description)

        reply = format_reply(code, text)

        if code == SERVICE_CLOSING:
            self._discard()

        if 400 <= code < 500:
            raise TemporaryFailure(reply)

        if 500 <= code < 600:
            raise PermanentFailure(reply)

        # Not a reply SMTP allows here, so the state of the message is unknown.
        self._discard()
        log.warning(
            "unexpected SMTP reply from %s after handover of %s: %s", self.settings.address, message.message_id, reply
        )
        return SendResult(reply=f"unexpected reply after the message was handed over: {reply}", confirmed=False)


class _WriteFailed(Exception):
    """A write broke off after ``sent`` bytes."""

    def __init__(self, sent: int, error: OSError):
        super().__init__(sent, error)
        self.sent = sent
        self.error = error


def _send_counted(sock: socket.socket, data: bytes) -> None:
    """Write all of ``data`` like ``sendall``, raising ``_WriteFailed`` with the bytes that left first."""
    sent = 0
    view = memoryview(data)
    try:
        while sent < len(data):
            sent += sock.send(view[sent:])
    except CONNECTION_ERRORS as error:
        raise _WriteFailed(sent, error) from error


class _Rejected(Exception):
    """A command got a reply other than the expected one."""

    def __init__(self, command: str, code: int, text: bytes, data_open: bool = False):
        super().__init__(command, code)
        self.command = command
        self.code = code
        self.reply = format_reply(code, text)
        # True when a pipelined DATA got 354 although an earlier command failed.
        self.data_open = data_open

    def error(self, settings: SmtpSettings) -> SendError:
        """Classify the reply into the failure the engine acts on."""
        if self.code in ACCOUNT_REPLY_CODES:
            return ProviderUnavailable(f"{settings.address} rejected {self.command}: {self.reply}")

        if self.command == "MAIL" and 500 <= self.code < 600 and self.code != MESSAGE_SIZE_EXCEEDED:
            return ProviderUnavailable(
                f"{settings.address} rejected MAIL FROM, so no message can be sent with this sender: {self.reply}"
            )

        if 400 <= self.code < 500:
            return TemporaryFailure(self.reply)

        if 500 <= self.code < 600:
            return PermanentFailure(self.reply)

        # A malformed or out-of-sequence reply: the session state is unknown,
        # and the caller discards the connection for codes below 400.
        return ConnectionLost(f"unexpected reply from {settings.address} to {self.command}: {self.reply}")


def _send_mail_from(smtp: smtplib.SMTP, message: OutgoingMessage) -> None:
    """Send MAIL FROM with the parameters this message and server need."""
    options = mail_options(smtp, message)
    smtp.command_encoding = "utf-8" if message.needs_smtputf8 else "ascii"
    _expect(smtp, "MAIL", f"FROM:<{message.sender}>{options}", 200)


def _send_envelope(smtp: smtplib.SMTP, message: OutgoingMessage) -> list[tuple[int, bytes]]:
    """Write MAIL FROM, RCPT TO and DATA as one group and return the three replies.

    When the connection breaks after the first reply arrived, the replies read
    so far are returned: a server that rejects MAIL FROM with 421 closes the
    connection before it replies to the rest.
    """
    smtp.send(_envelope_bytes(smtp, message))
    return _read_envelope_replies(smtp)


def _envelope_bytes(smtp: smtplib.SMTP, message: OutgoingMessage) -> bytes:
    """Return MAIL FROM, RCPT TO and DATA as one group, encoded as the message needs."""
    options = mail_options(smtp, message)
    commands = f"MAIL FROM:<{message.sender}>{options}\r\nRCPT TO:<{message.recipient}>\r\nDATA\r\n"
    return commands.encode("utf-8" if message.needs_smtputf8 else "ascii")


def _read_envelope_replies(smtp: smtplib.SMTP) -> list[tuple[int, bytes]]:
    """Read the replies to a MAIL, RCPT and DATA group; see ``_send_envelope``."""
    replies = [smtp.getreply()]
    for _ in range(2):
        try:
            replies.append(smtp.getreply())
        except CONNECTION_ERRORS:
            if 200 <= replies[0][0] < 300:
                raise
            break
    return replies


def _check_envelope_replies(replies: list[tuple[int, bytes]]) -> None:
    """Raise ``_Rejected`` for the first of MAIL, RCPT and DATA that did not get its expected reply."""
    data_open = len(replies) == 3 and replies[2][0] == 354
    for command, (code, text), expected in zip(("MAIL", "RCPT", "DATA"), replies, (200, 200, 354)):
        accepted = 200 <= code < 300 if expected == 200 else code == expected
        if not accepted:
            raise _Rejected(command, code, text, data_open=data_open)


def _expect(smtp: smtplib.SMTP, command: str, argument: str, expected: int) -> None:
    """Send one command and raise ``_Rejected`` unless the reply code is ``expected``.

    ``expected`` 200 accepts any 2xx code, because RCPT may reply 251.
    """
    code, text = smtp.docmd(command, argument)
    accepted = 200 <= code < 300 if expected == 200 else code == expected
    if not accepted:
        raise _Rejected(command, code, text)


def check_envelope(message: OutgoingMessage) -> None:
    """Raise unless the envelope addresses can be written into SMTP commands.

    A bad sender fails every message of the campaign, so it raises
    ``ProviderUnavailable``; a bad recipient raises ``PermanentFailure``.
    """
    sender_problem = _address_problem(message.sender, message.needs_smtputf8, allow_empty=True)
    if sender_problem:
        raise ProviderUnavailable(f"invalid envelope sender {message.sender!r}: {sender_problem}")

    recipient_problem = _address_problem(message.recipient, message.needs_smtputf8, allow_empty=False)
    if recipient_problem:
        raise PermanentFailure(f"invalid envelope recipient {message.recipient!r}: {recipient_problem}")


def _address_problem(address: str, smtputf8: bool, *, allow_empty: bool) -> str | None:
    if not address and not allow_empty:
        return "it is empty"

    # A line break would end the command and start another one.
    if _CONTROL_CHARACTERS.search(address):
        return "it contains a control character or line break"

    if "<" in address or ">" in address:
        return "it contains an angle bracket"

    if not smtputf8 and not address.isascii():
        return "it is not ASCII and the message is not marked as needing SMTPUTF8"

    return None


def mail_options(smtp: smtplib.SMTP, message: OutgoingMessage) -> str:
    """Return the MAIL FROM parameters for ``message``, each after a space.

    Raises ``PermanentFailure`` when the message needs SMTPUTF8 and the server
    does not offer it.
    """
    options = []
    if smtp.has_extn("size"):
        options.append(f"SIZE={len(message.data)}")

    if not message.data.isascii() and smtp.has_extn("8bitmime"):
        options.append("BODY=8BITMIME")

    if message.needs_smtputf8:
        if not smtp.has_extn("smtputf8"):
            raise PermanentFailure(
                f"server does not support SMTPUTF8, which {message.recipient} or {message.sender} needs"
            )
        options.append("SMTPUTF8")

    return "".join(f" {option}" for option in options)


def encode_data(data: bytes, crlf_only: bool = False) -> bytes:
    """Return ``data`` ready for DATA: CRLF line ends, leading dots doubled, ending in CRLF.

    A bare CR or LF becomes CRLF, so that no line ending the server might read
    differently can hide an early end-of-data sequence in the content.
    ``crlf_only`` skips that search, for data whose builder writes no bare CR
    or LF (``OutgoingMessage.crlf_only``).
    """
    # Counting is much cheaper than a substitution, though counting single
    # bytes still took most of this function's time for a 2 KB message.
    bare = False
    if not crlf_only:
        line_ends = data.count(b"\r\n")
        bare = data.count(b"\r") != line_ends or data.count(b"\n") != line_ends
    normalized = _LINE_END.sub(b"\r\n", data) if bare else data
    leading_dot = normalized.startswith(b".") or b"\n." in normalized
    stuffed = _LINE_START_DOT.sub(b"..", normalized) if leading_dot else normalized
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"

    return stuffed


def format_reply(code: int, text: bytes | str) -> str:
    """Return an SMTP reply as one line: "550 5.1.1 user unknown".

    smtplib strips the code from each line of a multiline reply; the enhanced
    status code repeated on continuation lines is dropped as well.
    """
    return f"{code} {reply_text(text)}".strip()


def reply_text(text: bytes | str) -> str:
    """Return the text of a reply without its code, multiline replies joined with spaces."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if "\n" not in text:
        # A one-line reply has nothing to join and no repeated code to drop.
        return text

    lines = text.split("\n")
    first_word = lines[0].split(" ", 1)[0]
    enhanced = first_word if _ENHANCED_CODE.match(first_word) else None
    parts = [lines[0]]
    for line in lines[1:]:
        if enhanced and line.startswith(enhanced):
            line = line[len(enhanced):].lstrip()
        parts.append(line)

    return " ".join(part for part in parts if part)


def make_tls_context(verify: bool) -> ssl.SSLContext:
    """Return a client TLS context that checks certificates unless ``verify`` is False."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

    return context


def open_connection(settings: SmtpSettings) -> smtplib.SMTP:
    """Connect, send EHLO, switch to TLS if configured and log in if a user name is set."""
    smtp = connect(settings)
    try:
        # Each message is two small writes that wait for a reply (the
        # envelope, then content and dot). With Nagle's algorithm on, a write
        # can wait for the server's delayed ACK (about 40 ms on Linux).
        smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        greet(smtp, settings)
        if settings.security == "starttls":
            start_tls(smtp, settings)
        if settings.username:
            log_in(smtp, settings)
    except CONNECTION_ERRORS as err:
        smtp.close()
        raise ProviderUnavailable(describe_connection_error(settings, err)) from err
    except BaseException:
        smtp.close()
        raise

    return smtp


def connect(settings: SmtpSettings) -> smtplib.SMTP:
    """Open the TCP connection (TLS first when security is "tls") and read the greeting."""
    try:
        if settings.security == "tls":
            return smtplib.SMTP_SSL(
                settings.host,
                settings.port,
                local_hostname=settings.local_hostname,
                timeout=settings.timeout,
                context=make_tls_context(settings.verify_tls),
            )
        return smtplib.SMTP(
            settings.host, settings.port, local_hostname=settings.local_hostname, timeout=settings.timeout
        )
    except CONNECTION_ERRORS as err:
        raise ProviderUnavailable(describe_connection_error(settings, err)) from err


def greet(smtp: smtplib.SMTP, settings: SmtpSettings) -> None:
    """Send EHLO (HELO if the server rejects EHLO) to learn the server's extensions."""
    try:
        smtp.ehlo_or_helo_if_needed()
    except smtplib.SMTPHeloError as err:
        reply = format_reply(err.smtp_code, err.smtp_error)
        raise ProviderUnavailable(f"{settings.address} rejected EHLO and HELO: {reply}") from err


def start_tls(smtp: smtplib.SMTP, settings: SmtpSettings) -> None:
    """Switch the connection to TLS with STARTTLS and send EHLO again.

    Raises ``ProviderUnavailable`` when the server does not offer STARTTLS:
    sending in plain text instead would expose the password and the messages.
    """
    if not smtp.has_extn("starttls"):
        raise ProviderUnavailable(
            f"{settings.address} does not offer STARTTLS, and security is set to STARTTLS, "
            "so nothing is sent in plain text: check the port, or choose TLS for a port such as 465"
        )

    try:
        code, text = smtp.starttls(context=make_tls_context(settings.verify_tls))
    except ssl.SSLError as err:
        raise ProviderUnavailable(describe_connection_error(settings, err)) from err

    # smtplib returns instead of raising when the server rejects STARTTLS.
    if code != 220:
        raise ProviderUnavailable(f"{settings.address} rejected STARTTLS: {format_reply(code, text)}")

    greet(smtp, settings)


def log_in(smtp: smtplib.SMTP, settings: SmtpSettings) -> None:
    """Authenticate with ``settings.username`` and ``settings.password``."""
    try:
        smtp.login(settings.username, settings.password)
    except smtplib.SMTPAuthenticationError as err:
        reply = format_reply(err.smtp_code, err.smtp_error)
        raise ProviderUnavailable(
            redact(f"authentication failed at {settings.address}: {reply}; check the user name and password", settings)
        ) from None
    except smtplib.SMTPNotSupportedError:
        hint = "; many servers offer AUTH only after STARTTLS" if settings.security == "none" else ""
        raise ProviderUnavailable(f"{settings.address} does not offer AUTH, but a user name is set{hint}") from None
    except smtplib.SMTPServerDisconnected:
        raise
    except smtplib.SMTPException as err:
        # smtplib raises the base class when it supports none of the offered mechanisms.
        offered = smtp.esmtp_features.get("auth", "").strip() or "none"
        raise ProviderUnavailable(
            f"{settings.address} offers no AUTH mechanism that MessageHub supports "
            f"(offered: {offered}; supported: CRAM-MD5, PLAIN, LOGIN): {err}"
        ) from None


def redact(text: str, settings: SmtpSettings) -> str:
    """Replace the password, and the base64 forms AUTH sends it in, with "***".

    Passwords shorter than 4 characters are left alone: replacing every
    occurrence of such a short string would garble the text and protect little.
    """
    if len(settings.password) < _MIN_REDACTED_LENGTH:
        return text

    password = settings.password.encode()
    plain_credentials = b"\0" + settings.username.encode() + b"\0" + password
    for secret in (
        settings.password,
        base64.b64encode(password).decode(),
        base64.b64encode(plain_credentials).decode(),
    ):
        text = text.replace(secret, "***")

    return text


def describe_connection_error(settings: SmtpSettings, err: OSError) -> str:
    """Explain a network, TLS or greeting failure in plain words, naming host:port and a next step."""
    address = settings.address
    if isinstance(err, ssl.SSLCertVerificationError):
        return (
            f"certificate verify failed for {address}: {err.verify_message}; "
            "set verify TLS off only for a relay you trust"
        )

    if isinstance(err, ssl.SSLError):
        return (
            f"TLS handshake with {address} failed ({err.reason or err}): check that the port "
            "expects the configured security (TLS from the first byte, usually 465; STARTTLS, usually 587)"
        )

    if isinstance(err, smtplib.SMTPServerDisconnected):
        return _describe_disconnect(settings, err)

    if isinstance(err, smtplib.SMTPConnectError):
        return f"{address} rejected the connection: {format_reply(err.smtp_code, err.smtp_error)}"

    if isinstance(err, smtplib.SMTPResponseException):
        return f"{address} replied {format_reply(err.smtp_code, err.smtp_error)}"

    if isinstance(err, ConnectionRefusedError):
        return f"connection refused by {address}: is the server running and is the port right?"

    if isinstance(err, TimeoutError):
        return (
            f"connection to {address} timed out after {settings.timeout:g} s: "
            "check the host, the port and any firewall in between"
        )

    reason = getattr(err, "strerror", None) or str(err)
    if isinstance(err, socket.gaierror):
        return f"cannot resolve host name {settings.host!r}: {reason}; check the host name"

    return f"cannot connect to {address}: {reason}"


def _describe_disconnect(settings: SmtpSettings, err: smtplib.SMTPServerDisconnected) -> str:
    """Explain a connection that closed, or went silent, while a reply was awaited."""
    if isinstance(err.__context__, TimeoutError):
        hint = ""
        if settings.security != "tls":
            hint = "; a port that expects TLS from the first byte, such as 465, stays silent for a plain client"
        return f"no reply from {settings.address} within {settings.timeout:g} s{hint}"

    return f"{settings.address} closed the connection: {err}"
