"""Storage interface of the engine: plain data classes and one Protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class CampaignSpec:
    """A campaign's content and sending options, as the engine reads them."""

    id: int
    name: str
    status: str
    subject: str
    text_body: str
    html_body: str
    from_name: str
    from_email: str
    reply_to: str
    delivery_method: str
    channel: str = "email"
    sms_sender: str = ""
    provider_account_id: int | None = None


@dataclass(frozen=True)
class Recipient:
    """One queued delivery with the contact data its message is rendered from."""

    delivery_id: int
    address: str
    attempts: int
    to_name: str
    context: dict = field(default_factory=dict)


@dataclass(frozen=True)
class InDoubt:
    """A delivery a previous run handed over without recording the outcome."""

    delivery_id: int
    message_id: str
    # When the earlier run claimed it, with its batch: before the handover by at most the batch's sending time.
    claimed_at: datetime | None = None


@dataclass
class Progress:
    """Counts of a campaign's deliveries by status."""

    total: int = 0
    queued: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped


class CampaignStore(Protocol):
    """Storage of campaigns, their recipients and their progress."""

    def load_campaign(self, campaign_id: int) -> CampaignSpec:
        """Return the campaign, or raise LookupError."""

    def start_run(self, campaign_id: int) -> None:
        """Mark the campaign running and, on its first run, queue its audience."""

    def in_doubt(self, campaign_id: int) -> list[InDoubt]:
        """Return deliveries left in ``sending`` by an earlier run."""

    def resolve(self, delivery_id: int, delivered: bool | None, claimed_at: datetime | None = None) -> None:
        """Settle an in-doubt delivery: sent, queued again, or sent unconfirmed (None).

        A delivery settled as sent gets ``claimed_at`` as its sending time, if given.
        """

    def next_batch(
        self,
        campaign_id: int,
        limit: int,
        now: datetime,
        partition: tuple[int, int] | None = None,
        newest_first: bool = False,
    ) -> list[Recipient]:
        """Return up to ``limit`` queued deliveries due at ``now``, of ``partition`` (k, n) if given.

        Oldest first, unless ``newest_first``.
        """

    def mark_sending_many(self, claims: list[tuple[int, str, dict | None]]) -> set[int]:
        """Commit a batch of (delivery id, message id, template fields) as handed over; return the ids this run won."""

    def release(self, delivery_id: int, reply: str, retry_at: datetime) -> None:
        """Queue a handed-over delivery again without counting the attempt: the provider took nothing."""

    def release_many(self, delivery_ids: list[int], reply: str, retry_at: datetime) -> None:
        """Queue claimed deliveries again, as ``release`` does, in one transaction."""

    def mark_skipped(self, delivery_id: int, reason: str) -> None:
        """Commit that a queued delivery will not be sent, and why."""

    def opted_out(self, channel: str, addresses: list[str]) -> set[str]:
        """Return which of ``addresses`` opted out of ``channel`` messages."""

    def record_opt_out(self, channel: str, address: str, reason: str, campaign_id: int) -> None:
        """Remember that ``address`` must not be sent ``channel`` messages again."""

    def mark_sent(self, delivery_id: int, reply: str, provider_id: str | None) -> None:
        """Record that the provider accepted the message; it is committed by the next write or ``flush``."""

    def flush(self) -> None:
        """Commit every outcome recorded but not yet written."""

    def close(self) -> None:
        """Commit every outcome recorded but not yet written, before the run ends."""

    def mark_deferred(self, delivery_id: int, reply: str, retry_at: datetime) -> None:
        """Commit a temporary failure of a claimed delivery; it is queued again for ``retry_at``."""

    def mark_failed(self, delivery_id: int, reply: str, claimed: bool = False) -> None:
        """Commit a permanent failure with the provider's reply, of a claimed delivery or a queued one."""

    def next_retry_at(self, campaign_id: int, partition: tuple[int, int] | None = None) -> datetime | None:
        """Return when the earliest deferred delivery (of ``partition``) is due, or None if none is queued."""

    def progress(self, campaign_id: int) -> Progress:
        """Return the campaign's counts."""

    def counters(self, campaign_id: int) -> Progress:
        """Return the campaign's counts as its counters keep them, cheaply; "sending" counts as queued."""

    def current_status(self, campaign_id: int) -> str:
        """Return the campaign's status as stored now (another process may change it)."""

    def note_problem(self, campaign_id: int, problem: str | None) -> None:
        """Show ``problem`` on the campaign's pages while it runs, or clear it with None."""

    def finish_run(self, campaign_id: int, status: str, error: str | None = None) -> None:
        """Record how the run ended: finished, paused or failed."""
