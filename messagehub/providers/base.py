"""The contract between the campaign engine and a sender of one message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, Union

# Called by a sender right before the step it cannot take back, so the engine
# can record that the message is on its way (see ``Sender.send``).
HandoverCallback = Callable[[], None]


@dataclass(frozen=True)
class OutgoingMessage:
    """A rendered message ready for the wire.

    ``sender`` and ``recipient`` are the SMTP envelope addresses, already in the
    form the wire needs (IDNA-encoded domains). ``data`` is the complete RFC 5322
    message with CRLF line endings. ``message_id`` is the Message-ID header's
    value, angle brackets included.
    """

    sender: str
    recipient: str
    data: bytes
    message_id: str
    needs_smtputf8: bool = False
    # The rendered parts, for APIs that take fields instead of raw MIME.
    content: EmailContent | None = None
    # True when the builder of ``data`` writes no bare CR or LF
    # (messagehub.messages.mime), so the SMTP sender need not look for one.
    crlf_only: bool = False


@dataclass(frozen=True)
class EmailContent:
    """The parts of one personalised email, before MIME encoding."""

    subject: str
    text: str
    html: str
    from_name: str
    from_email: str
    reply_to: str
    to_name: str
    to_email: str


@dataclass(frozen=True)
class OutgoingSms:
    """A rendered text message.

    ``recipient`` is an E.164 number. ``sender`` is a number in E.164, an
    alphanumeric sender id, or a Twilio messaging service SID (``MG...``).
    ``message_id`` is MessageHub's own id of the delivery, for logs and
    ``was_delivered``.
    """

    recipient: str
    sender: str
    body: str
    message_id: str


@dataclass(frozen=True)
class SendResult:
    """The provider's reply to a message it accepted."""

    reply: str
    provider_id: str | None = None
    # False when the connection was lost after handover, before the reply arrived.
    confirmed: bool = True


class SendError(Exception):
    """Base class of every error a sender raises for one message."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


class TemporaryFailure(SendError):
    """The provider asked to try again later (SMTP 4xx, throttling).

    ``retry_after`` is the delay in seconds the provider asked for, if any.
    """

    def __init__(self, reply: str, retry_after: float | None = None):
        super().__init__(reply)
        self.retry_after = retry_after


class Throttled(TemporaryFailure):
    """The provider refused the request for its rate limit (HTTP 429, SES Throttling).

    The message was not accepted. The engine queues it again without counting
    an attempt, and holds back every sender of the same account for
    ``retry_after`` seconds.
    """


class PermanentFailure(SendError):
    """The provider refused this recipient for good (SMTP 5xx, invalid number or address).

    ``opted_out`` is true when the provider reports that the recipient asked
    not to receive messages (Twilio 21610). The engine then records the
    opt-out, so no campaign sends to that address again. ``code`` is the provider's
    error code, if it gave one.
    """

    def __init__(self, reply: str, opted_out: bool = False, code: str | None = None):
        super().__init__(reply)
        self.opted_out = opted_out
        self.code = code


class ConnectionLost(SendError):
    """The connection broke before handover; the message was not accepted."""


class ProviderUnavailable(SendError):
    """The provider cannot be reached or rejects every message.

    Raised for faults that no retry of a single recipient can fix, such as a
    wrong password or an unreachable host. The engine retries a few times,
    then pauses the campaign.
    """


class Sender(Protocol):
    """Delivers one message at a time over a connection it keeps open."""

    def send(
        self, message: OutgoingMessage, on_handover: HandoverCallback, following: OutgoingMessage | None = None
    ) -> SendResult:
        """Deliver ``message`` and return the provider's reply.

        The sender calls ``on_handover`` exactly once, immediately before the
        step after which the provider may have accepted the message (for SMTP,
        writing the content and its final dot). If it raises before calling
        ``on_handover``, the provider has not accepted the message. If
        ``on_handover`` itself raises, the sender abandons the message without
        handing it over (for SMTP: no final dot, the transaction is reset or the
        connection closed) and lets that exception propagate; the engine's
        callback raises when it cannot write its handover journal. After
        ``on_handover`` it either returns, or raises ``PermanentFailure`` or
        ``TemporaryFailure`` because the provider answered so.

        ``following``, if given, is the message the caller sends next on this
        sender; a sender may start on it early (SMTP writes its envelope
        behind this message). The next call must then be for ``following``.

        :raises TemporaryFailure: retry this recipient later.
        :raises PermanentFailure: this recipient cannot be delivered.
        :raises ConnectionLost: the connection broke before handover.
        :raises ProviderUnavailable: no message can be sent now.
        """

    def was_delivered(self, message_id: str) -> bool | None:
        """Tell whether a message handed over by an earlier run reached the provider.

        Returns None when the provider offers no way to find out.
        """

    def close(self) -> None:
        """Close any open connection."""


Outgoing = Union[OutgoingMessage, OutgoingSms]

# The result a batch sender reports for each message of a request.
Outcome = Union[SendResult, SendError]


class BatchSender(Protocol):
    """Delivers messages through an HTTP API, up to ``batch_limit`` per request.

    The engine commits every message of a batch as handed over before it calls
    ``send_batch``, so a request that may have reached the provider is never
    sent again by a later run.
    """

    # Maximum number of messages one call of ``send_batch`` accepts.
    batch_limit: int

    def send_batch(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        """Send ``messages`` and return one outcome per message, in the same order.

        An outcome is a ``SendResult`` for an accepted message, or the
        ``SendError`` for that message alone (``PermanentFailure`` for an
        invalid address or number, ``TemporaryFailure`` or ``Throttled`` when
        only that message should be tried again).

        When a timeout strikes after the request was written, the provider may
        have accepted it: the outcome is ``SendResult(confirmed=False)``, never
        a retry, so no recipient gets a second copy.

        :raises Throttled: the provider refused the whole request for its rate limit.
        :raises TemporaryFailure: the whole request failed in a way worth retrying (5xx).
        :raises ConnectionLost: the request never reached the provider.
        :raises ProviderUnavailable: no request can succeed now (credentials refused).
        """

    def was_delivered(self, message_id: str) -> bool | None:
        """Tell whether a message handed over by an earlier run reached the provider, or None."""

    def check(self) -> list[tuple[str, bool, str]]:
        """Check credentials and reachability; return (step, passed, detail) for each step taken."""

    def close(self) -> None:
        """Release any open connection."""
