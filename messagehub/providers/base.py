"""The contract between the campaign engine and a sender of one message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

# Called by a sender right before the step it cannot take back, so the engine
# can commit that the message is on its way (see ``Sender.send``).
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


class PermanentFailure(SendError):
    """The provider refused this recipient for good (SMTP 5xx)."""


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

    def send(self, message: OutgoingMessage, on_handover: HandoverCallback) -> SendResult:
        """Deliver ``message`` and return the provider's reply.

        The sender calls ``on_handover`` exactly once, immediately before the
        step after which the provider may have accepted the message (for SMTP,
        writing the final dot of DATA). If it raises before calling
        ``on_handover``, the provider has not accepted the message. If
        ``on_handover`` itself raises, the sender abandons the message without
        handing it over (for SMTP: no final dot, the transaction is reset or the
        connection closed) and lets that exception propagate; the engine uses
        this when another process claimed the recipient first. After
        ``on_handover`` it either returns, or raises ``PermanentFailure`` or
        ``TemporaryFailure`` because the provider answered so.

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
