"""The send loop: one campaign, one sender, a conditional claim per batch, and a journal entry before each handover."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import partial
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from messagehub.engine import status as campaign_status
from messagehub.engine.handover import HandoverJournal, JournalState, read_journals, remove_journals
from messagehub.engine.rate import SharedRate
from messagehub.engine.store import CampaignSpec, CampaignStore, InDoubt, Progress, Recipient
from messagehub.messages.mime import build_from_content, make_message_id, message_id_domain
from messagehub.messages.templating import CampaignTemplates, MissingFields, TemplateSyntaxProblem
from messagehub.models import Channel, utcnow
from messagehub.providers.base import (
    BatchSender,
    ConnectionLost,
    EmailContent,
    Outgoing,
    OutgoingSms,
    PermanentFailure,
    ProviderUnavailable,
    SendError,
    Sender,
    SendResult,
    TemporaryFailure,
    Throttled,
)

log = logging.getLogger("messagehub.processor")

# Seconds between two reads of the campaign's stored status during a batch.
STATUS_CHECK_INTERVAL = 1.0

# Waits, in seconds, before retrying a provider that is unreachable as a whole.
# After the last one the campaign pauses with the error, and an operator resumes it.
UNAVAILABLE_WAITS = (2.0, 5.0, 15.0)

# A per-message sender's batches grow toward this many seconds of sending, up
# to MAX_BATCH_SIZE recipients, because each batch costs a query, a claim and
# a journal reset. At thousands of messages a second, batches of 100 took
# about a fifth more CPU per message than batches of 500 to 1,000, and made
# the workers wait for SQLite's write lock (bench/smtp_throughput.py).
BATCH_SECONDS = 0.25
MAX_BATCH_SIZE = 1_000

# Maximum gap, in seconds, between two ``heartbeat`` calls while the loop waits.
HEARTBEAT_SLICE = 1.0


@dataclass(frozen=True)
class EngineSettings:
    """Knobs of the send loop, clamped to safe values by ``clamped``."""

    message_id_domain: str
    install_token: str
    batch_size: int = 100
    max_attempts: int = 5
    retry_base_seconds: float = 60.0
    retry_max_seconds: float = 3600.0
    # Pause the campaign when more than this share of the last
    # ``error_rate_window`` recipients failed for good (1.0 never pauses).
    error_rate_limit: float = 0.25
    error_rate_window: int = 200

    def clamped(self) -> EngineSettings:
        """Return a copy with every knob inside its sane range."""
        return EngineSettings(
            message_id_domain=self.message_id_domain,
            install_token=self.install_token,
            batch_size=min(max(int(self.batch_size), 1), 10_000),
            max_attempts=min(max(int(self.max_attempts), 1), 100),
            retry_base_seconds=max(float(self.retry_base_seconds), 0.0),
            retry_max_seconds=max(float(self.retry_max_seconds), float(self.retry_base_seconds), 0.0),
            error_rate_limit=min(max(float(self.error_rate_limit), 0.0), 1.0),
            error_rate_window=min(max(int(self.error_rate_window), 10), 100_000),
        )


@dataclass
class RunOutcome:
    """Outcome of a run: final status, counts and the error, if any."""

    status: str
    progress: Progress
    error: str | None = None


def log_outcome(campaign_id: int, outcome: RunOutcome) -> None:
    """Log how a run ended, with the campaign's counts."""
    log.info(
        "%s campaign %s: %d sent, %d failed, %d skipped, %d queued",
        outcome.status, campaign_id, outcome.progress.sent, outcome.progress.failed,
        outcome.progress.skipped, outcome.progress.queued, extra={"campaign_id": campaign_id},
    )


class ErrorRateExceeded(Exception):
    """Too many recipients failed recently; the campaign pauses with this reason."""


@dataclass
class _ErrorWindow:
    """The final outcomes of the last recipients, to notice a failing campaign early."""

    limit: float
    size: int
    outcomes: deque = field(default_factory=deque)
    replies: deque = field(default_factory=deque)
    # Failures in ``outcomes``, counted as they come and go, so that check,
    # which runs after every message, need not sum the window.
    failures: int = 0

    def add(self, failed: bool, reply: str = "") -> None:
        self.outcomes.append(failed)
        self.replies.append(reply if failed else "")
        self.failures += failed
        if len(self.outcomes) > self.size:
            self.failures -= self.outcomes.popleft()
            self.replies.popleft()

    def check(self) -> None:
        """Raise ErrorRateExceeded when the window is full and its failure share is over the limit."""
        if self.limit >= 1.0 or len(self.outcomes) < self.size:
            return
        failures = self.failures
        if failures / len(self.outcomes) <= self.limit:
            return

        message = (
            f"Paused: {failures} of the last {len(self.outcomes)} recipients failed, "
            f"over the limit of {self.limit:.0%}."
        )
        for reply, count in Counter(reply for reply in self.replies if reply).most_common(1):
            message += f" Most frequent reply ({count} times): {reply[:300]}"
        raise ErrorRateExceeded(message)


@dataclass
class CampaignRunner:
    """Sends one campaign through one sender, recording every outcome in the store.

    ``stop`` ends the run after the message in flight; the campaign is then
    paused and can be resumed. ``on_progress`` is called after every message.
    ``heartbeat`` is called after every message and at least once a second
    while the loop waits, so a watchdog can tell the loop is alive. A sender
    stuck in a call stops the heartbeats.
    """

    store: CampaignStore
    sender: Sender | BatchSender
    settings: EngineSettings
    stop: threading.Event = field(default_factory=threading.Event)
    on_progress: Callable[[Progress], None] | None = None
    heartbeat: Callable[[], None] | None = None
    now: Callable[[], datetime] = utcnow
    # The provider account's shared rate; None sends as fast as the sender goes.
    rate: SharedRate | None = None
    # (k, n): send the deliveries whose id modulo n is k, beside n - 1 other
    # runners, then help with theirs. None sends them all.
    partition: tuple[int, int] | None = None
    # Where per-message senders keep their handover journals (engine/handover.py).
    journal_dir: Path | None = None

    def __post_init__(self) -> None:
        self.settings = self.settings.clamped()
        self._errors = _ErrorWindow(self.settings.error_rate_limit, self.settings.error_rate_window)
        self._journal: HandoverJournal | None = None
        # Deliveries the server accepted whose acceptance is not journalled
        # yet: they go with the next handover (HandoverJournal.handing_over).
        self._held_acceptances: list[int] = []
        # The claimed deliveries of the current batch not handed over and without an outcome yet.
        self._unsent: set[int] = set()
        self._status_checked_at = 0.0
        if self.rate is not None:
            self.rate.sleep = self._wait

    def run(self, campaign_id: int) -> RunOutcome:
        """Send every queued recipient of the campaign, resuming where a previous run stopped."""
        started = self.begin(campaign_id)
        if isinstance(started, RunOutcome):
            self.sender.close()
            return started

        spec, templates, progress = started
        return self._run_loop(spec, templates, progress, finish=True)

    def begin(self, campaign_id: int) -> tuple[CampaignSpec, CampaignTemplates, Progress] | RunOutcome:
        """Mark the campaign running, settle what a killed run left in flight, and report the counts.

        Returns the failed outcome instead when a template does not compile.
        """
        spec = self.store.load_campaign(campaign_id)
        extra = {"campaign_id": campaign_id}

        try:
            templates = CampaignTemplates.compile(spec.subject, spec.text_body, spec.html_body)
        except TemplateSyntaxProblem as e:
            log.error("error compiling templates of campaign %s: %s", campaign_id, e, extra=extra)
            self.store.start_run(campaign_id)
            self.store.finish_run(campaign_id, campaign_status.FAILED, f"Template error: {e}")
            return RunOutcome(campaign_status.FAILED, self.store.progress(campaign_id), str(e))

        self.store.start_run(campaign_id)
        self._settle_in_doubt(campaign_id)
        progress = self.store.progress(campaign_id)
        log.info(
            "started campaign %s: %d recipients, %d already done",
            campaign_id, progress.total, progress.done, extra=extra,
        )
        self._report(progress)
        return spec, templates, progress

    def run_share(self, campaign_id: int) -> RunOutcome:
        """Send this runner's ``partition`` of a campaign that another process began.

        The final status is left to that process: when the partition has
        nothing left to send, the outcome's status stays "running".
        """
        spec = self.store.load_campaign(campaign_id)
        templates = CampaignTemplates.compile(spec.subject, spec.text_body, spec.html_body)
        return self._run_loop(spec, templates, self.store.progress(campaign_id), finish=False)

    def _run_loop(self, spec: CampaignSpec, templates: CampaignTemplates, progress: Progress, finish: bool) -> RunOutcome:
        extra = {"campaign_id": spec.id}
        try:
            outcome = self._send_all(spec, templates, progress, finish)
        except Exception as e:
            # Logged with the traceback for the operator; the campaign keeps a
            # one-line reason the web app can show.
            log.exception("error running campaign %s", spec.id, extra=extra)
            self.store.finish_run(spec.id, campaign_status.FAILED, f"{type(e).__name__}: {e}")
            raise
        finally:
            self.store.close()
            # Reached only once the outcomes are committed: a journal whose
            # entries never reached the database stays for the next run.
            self._close_journal()
            self.sender.close()

        log_outcome(spec.id, outcome)
        return outcome

    def _settle_in_doubt(self, campaign_id: int) -> None:
        """Resolve deliveries a killed run left between claim and outcome, and log how many went which way."""
        journals = read_journals(self.journal_dir, campaign_id) if self.journal_dir else None
        settled: Counter[str] = Counter()
        for item in self.store.in_doubt(campaign_id):
            self._beat()
            settled[self._settle(item, journals)] += 1

        if journals is not None:
            remove_journals(journals)
        if settled:
            log.warning(
                "settled %d deliveries of campaign %s left in flight by the previous run: %s",
                sum(settled.values()), campaign_id,
                ", ".join(f"{count} {how}" for how, count in sorted(settled.items())),
                extra={"campaign_id": campaign_id},
            )

    def _settle(self, item: InDoubt, journals: JournalState | None) -> str:
        """Resolve one in-doubt delivery; return how, in words for the log."""
        if journals is not None and journals.never_written(item.delivery_id):
            self.store.release(item.delivery_id, "claimed by the previous run, not handed over; queued again", self.now())
            return "never handed over, queued again"

        if journals is not None and item.delivery_id in journals.accepted:
            delivered: bool | None = True
        else:
            delivered = self.sender.was_delivered(item.message_id)
        self.store.resolve(item.delivery_id, delivered, item.claimed_at)
        return {True: "delivered", False: "queued again", None: "unconfirmed, not sent again"}[delivered]

    def _send_all(
        self, spec: CampaignSpec, templates: CampaignTemplates, progress: Progress, finish: bool = True
    ) -> RunOutcome:
        unavailable_count = 0
        # An API that takes many recipients per request gets full requests.
        smallest = max(self.settings.batch_size, int(getattr(self.sender, "batch_limit", 1)))
        size = smallest
        while True:
            self._beat()
            if self.stop.is_set():
                return self._pause(spec.id, "stop requested")
            if self.store.current_status(spec.id) != campaign_status.RUNNING:
                # Paused from the web app or another process: leave the status as it is.
                return RunOutcome(self.store.current_status(spec.id), self.store.progress(spec.id))

            batch = self._next_batch(spec.id, size)
            if not batch:
                if not self._wait_for_retries(spec.id):
                    break
                continue

            try:
                if hasattr(self.sender, "send_batch"):
                    self._send_requests(spec, templates, batch, progress)
                else:
                    started = time.monotonic()
                    self._send_batch(spec, templates, batch, progress)
                    size = grown_batch_size(smallest, len(batch), time.monotonic() - started)
                if unavailable_count:
                    log.info("provider available again for campaign %s", spec.id, extra={"campaign_id": spec.id})
                    self.store.note_problem(spec.id, None)
                unavailable_count = 0
            except ErrorRateExceeded as e:
                return self._pause(spec.id, "error rate exceeded", error=str(e))
            except ProviderUnavailable as e:
                if unavailable_count == len(UNAVAILABLE_WAITS):
                    return self._pause(spec.id, "provider unavailable", error=f"Provider unavailable: {e.reply}")
                wait = UNAVAILABLE_WAITS[unavailable_count]
                unavailable_count += 1
                log.warning(
                    "provider unavailable for campaign %s, retrying in %.0f s: %s",
                    spec.id, wait, e.reply, extra={"campaign_id": spec.id},
                )
                self.store.note_problem(
                    spec.id,
                    f"Provider unavailable, retry {unavailable_count} of {len(UNAVAILABLE_WAITS)} "
                    f"in {wait:g} s: {e.reply}",
                )
                self._wait(wait)

        if not finish:
            return RunOutcome(campaign_status.RUNNING, self.store.progress(spec.id))
        self.store.finish_run(spec.id, campaign_status.FINISHED)
        return RunOutcome(campaign_status.FINISHED, self.store.progress(spec.id))

    def _next_batch(self, campaign_id: int, size: int) -> list[Recipient]:
        """Return the next due deliveries of this runner's partition, or once it has none, of the others'.

        The others' are taken from the newest end, away from where their own
        runners take them, so a lost worker's share is sent by the rest and
        the last batches of a run are shared out.
        """
        batch = self.store.next_batch(campaign_id, size, self.now(), self.partition)
        if batch or self.partition is None:
            return batch

        return self.store.next_batch(campaign_id, size, self.now(), None, newest_first=True)

    def _wait_for_retries(self, campaign_id: int) -> bool:
        """Sleep until the next deferred delivery is due; False when nothing is left to send."""
        retry_at = self.store.next_retry_at(campaign_id, self.partition)
        if retry_at is None:
            return False

        delay = (retry_at - self.now()).total_seconds()
        if delay > 0:
            log.info(
                "waiting %.1f s for deferred deliveries of campaign %s",
                delay, campaign_id, extra={"campaign_id": campaign_id},
            )
            self._wait(delay)

        return True

    def _send_batch(
        self, spec: CampaignSpec, templates: CampaignTemplates, batch: list[Recipient], progress: Progress
    ) -> None:
        """Claim a batch in one transaction, send its messages, then commit their outcomes together."""
        composed = self._compose_all(spec, templates, batch, progress)
        claimed = self._claim(spec.id, composed)

        self._unsent = {recipient.delivery_id for recipient, _ in claimed}
        self._status_checked_at = time.monotonic()
        connections = getattr(self.sender, "connections", None)
        try:
            if connections:
                self._send_in_rounds(spec, claimed, connections, progress)
            else:
                self._send_one_by_one(spec, claimed, progress)
        finally:
            # A stop, a pause, an unavailable provider or too many failures
            # leave the rest of the batch unsent: it goes back to the queue.
            unsent = [recipient.delivery_id for recipient, _ in claimed if recipient.delivery_id in self._unsent]
            self._release_unsent(unsent)
            self._journal_held_acceptances()
            self.store.flush()
            self._journal.clear()

    def _send_one_by_one(
        self, spec: CampaignSpec, claimed: list[tuple[Recipient, Outgoing]], progress: Progress
    ) -> None:
        """Send claimed messages in order, each to be written out behind the previous one's final dot."""
        for index, (recipient, message) in enumerate(claimed):
            if not self._may_go_on(spec.id):
                break
            following = claimed[index + 1][1] if index + 1 < len(claimed) else None
            handover = partial(self._hand_over, recipient.delivery_id)
            outcome, reply = self._outcome(spec, recipient, partial(self.sender.send, message, handover, following))
            self._beat()
            self._count(progress, outcome, reply)
            self._errors.check()

    def _send_in_rounds(
        self, spec: CampaignSpec, claimed: list[tuple[Recipient, Outgoing]], connections: list, progress: Progress
    ) -> None:
        """Send claimed messages over several connections, a round at a time: one message on each, then the replies.

        Message i goes over connection i mod n, so each connection can write
        its next message's envelope (i + n) behind the current one's dot.
        """
        count = len(connections)
        for start in range(0, len(claimed), count):
            if not self._may_go_on(spec.id):
                break
            current = claimed[start : start + count]
            following = claimed[start + count : start + 2 * count]
            self._send_round(spec, current, following, connections, progress)
            self._beat()
            self._errors.check()

    def _send_round(
        self,
        spec: CampaignSpec,
        current: list[tuple[Recipient, Outgoing]],
        following: list[tuple[Recipient, Outgoing]],
        connections: list,
        progress: Progress,
    ) -> None:
        """Start each message on its connection, then read the replies of those in flight, even after an error."""
        in_flight = []
        try:
            for position, (recipient, message) in enumerate(current):
                connection = connections[position]
                after = following[position][1] if position < len(following) else None
                handover = partial(self._hand_over, recipient.delivery_id)
                outcome = self._outcome(spec, recipient, partial(connection.start, message, handover, after))
                if outcome is None:
                    in_flight.append((connection, recipient, message))
                else:
                    self._count(progress, *outcome)
        finally:
            # Messages that left are settled before an error of a later start
            # (an unavailable server) goes up and ends the batch.
            for connection, recipient, message in in_flight:
                self._count(progress, *self._outcome(spec, recipient, partial(connection.finish, message)))

    def _may_go_on(self, campaign_id: int) -> bool:
        """Return False once a stop is requested, or once the stored status is no longer "running"."""
        if self.stop.is_set():
            return False

        # A pause from the web app may come from another process: look at the
        # stored status once a second, not only between batches.
        if time.monotonic() - self._status_checked_at < STATUS_CHECK_INTERVAL:
            return True
        self._status_checked_at = time.monotonic()
        return self.store.current_status(campaign_id) == campaign_status.RUNNING

    def _release_unsent(self, delivery_ids: list[int]) -> None:
        """Queue claimed deliveries that this run will not send again, without counting an attempt."""
        self.store.release_many(delivery_ids, "queued again: the run stopped before sending it", self.now())

    def _claim(self, campaign_id: int, composed: list[tuple[Recipient, Outgoing]]) -> list[tuple[Recipient, Outgoing]]:
        """Claim the composed messages in one transaction, journalled first; return those this run won."""
        if self._journal is None:
            if self.journal_dir is None:
                raise RuntimeError("a per-message sender needs journal_dir for its handover journal")
            self._journal = HandoverJournal(self.journal_dir, campaign_id)
        if not composed:
            return []

        # Journalled before the commit: a run killed in between leaves rows
        # still queued, while rows in "sending" are always in a journal here.
        self._journal.claiming([recipient.delivery_id for recipient, _ in composed])
        won = self.store.mark_sending_many([(r.delivery_id, m.message_id, r.context) for r, m in composed])
        if len(won) < len(composed):
            # Expected where two workers reach the same rows near the end of a run.
            # NOTE: the lost rows stay journalled as claimed until the batch ends.
            # A restart after a kill in that time reads them as never handed over
            # and queues them again, which is wrong only if the winner runs on
            # another host, whose journal it cannot read. Not tested across hosts.
            log.debug(
                "left %d deliveries of campaign %s to another process that claimed them first",
                len(composed) - len(won), campaign_id, extra={"campaign_id": campaign_id},
            )
        return [(recipient, message) for recipient, message in composed if recipient.delivery_id in won]

    def _close_journal(self) -> None:
        journal, self._journal = self._journal, None
        if journal is not None:
            journal.close()

    def _count(self, progress: Progress, outcome: str | None, reply: str = "") -> None:
        """Add a recipient's final status to the progress and the error window, and report it."""
        if not outcome:
            return
        progress.queued = max(progress.queued - 1, 0)
        setattr(progress, outcome, getattr(progress, outcome) + 1)
        if outcome in ("sent", "failed"):
            self._errors.add(outcome == "failed", reply)
        self._report(progress)

    def _outcome(
        self, spec: CampaignSpec, recipient: Recipient, send: Callable[[], SendResult | None]
    ) -> tuple[str | None, str] | None:
        """Run one step of sending a claimed message and record its outcome.

        Returns the final status it reached (None if it stays queued) and the
        reply, or None while the server's reply is still to be read.
        """
        try:
            result = send()
        except PermanentFailure as e:
            outcome = self._fail(spec, recipient, e), e.reply
        except (TemporaryFailure, ConnectionLost) as e:
            outcome = self._defer(spec.id, recipient, e), e.reply
        else:
            if result is None:
                return None
            outcome = self._sent(recipient, result)

        self._unsent.discard(recipient.delivery_id)
        return outcome

    def _sent(self, recipient: Recipient, result: SendResult) -> tuple[str, str]:
        """Record a message the server took, or may have taken; an acceptance is journalled with the next handover."""
        reply = result.reply
        if result.confirmed:
            self._held_acceptances.append(recipient.delivery_id)
        else:
            # Marked as the API senders' and the settled rows are, so one
            # search for "unconfirmed" finds every message that may be missing.
            reply = f"unconfirmed: {reply}"
        self.store.mark_sent(recipient.delivery_id, reply, result.provider_id)
        return "sent", reply

    def _hand_over(self, delivery_id: int) -> None:
        """Journal the handover of a delivery, with the acceptances held since the last write."""
        self._journal.handing_over(delivery_id, accepted=self._held_acceptances)
        self._held_acceptances = []
        # From here on the message may reach the server: never queue it again.
        self._unsent.discard(delivery_id)

    def _journal_held_acceptances(self) -> None:
        """Journal the acceptances that no handover took along, before the outcomes are committed."""
        if self._held_acceptances:
            self._journal.accepted(self._held_acceptances)
            self._held_acceptances = []

    def _send_requests(
        self, spec: CampaignSpec, templates: CampaignTemplates, batch: list[Recipient], progress: Progress
    ) -> None:
        """Send a batch through an API sender, as many recipients per request as it takes."""
        batch = self._drop_opted_out(spec, batch, progress)
        size = max(int(getattr(self.sender, "batch_limit", 1)), 1)
        self._status_checked_at = time.monotonic()
        for start in range(0, len(batch), size):
            if not self._may_go_on(spec.id):
                return
            self._send_request(spec, templates, batch[start : start + size], progress)
            self._beat()
            self._errors.check()

    def _drop_opted_out(self, spec: CampaignSpec, batch: list[Recipient], progress: Progress) -> list[Recipient]:
        """Skip recipients who opted out after the campaign was queued (in another campaign, say)."""
        opted_out = self.store.opted_out(spec.channel, [recipient.address for recipient in batch])
        for recipient in batch:
            if recipient.address in opted_out:
                self.store.mark_skipped(recipient.delivery_id, "opted out")
                self._count(progress, "skipped")
        return [recipient for recipient in batch if recipient.address not in opted_out]

    def _send_request(
        self, spec: CampaignSpec, templates: CampaignTemplates, recipients: list[Recipient], progress: Progress
    ) -> None:
        """Compose, claim, pace and send one request's recipients, then record each outcome."""
        composed = self._compose_all(spec, templates, recipients, progress)
        won = self.store.mark_sending_many([(r.delivery_id, m.message_id, r.context) for r, m in composed])
        composed = [(r, m) for r, m in composed if r.delivery_id in won]
        if not composed:
            return

        if self.rate is not None:
            self.rate.acquire(len(composed))
        try:
            outcomes = self.sender.send_batch([message for _, message in composed])
        except Throttled as e:
            self._throttled(spec.id, [r for r, _ in composed], e)
            return
        except (ConnectionLost, ProviderUnavailable) as e:
            # Nothing reached the provider: queue the batch again as it was.
            for recipient, _ in composed:
                self.store.release(recipient.delivery_id, e.reply, self.now())
            raise ProviderUnavailable(e.reply) from e
        except TemporaryFailure as e:
            outcomes = [e] * len(composed)

        for (recipient, _), outcome in zip(composed, outcomes, strict=True):
            status = self._record(spec, recipient, outcome)
            self._count(progress, status, getattr(outcome, "reply", ""))

    def _record(self, spec: CampaignSpec, recipient: Recipient, outcome: SendResult | SendError) -> str | None:
        """Commit one handed-over message's outcome; return its final status, or None if queued again."""
        if isinstance(outcome, SendResult):
            reply = outcome.reply if outcome.confirmed else f"unconfirmed: {outcome.reply}"
            self.store.mark_sent(recipient.delivery_id, reply, outcome.provider_id)
            return "sent"
        if isinstance(outcome, PermanentFailure):
            return self._fail(spec, recipient, outcome)
        if isinstance(outcome, Throttled):
            self._throttled(spec.id, [recipient], outcome)
            return None
        if isinstance(outcome, TemporaryFailure) and outcome.retry_after == 0:
            # Refused with a request another recipient spoiled: due again at once.
            self.store.release(recipient.delivery_id, outcome.reply, self.now())
            return None
        return self._defer(spec.id, recipient, outcome)

    def _throttled(self, campaign_id: int, recipients: list[Recipient], error: Throttled) -> None:
        """Queue throttled recipients again, free of charge, and hold the whole account back."""
        wait = error.retry_after if error.retry_after is not None else 1.0
        if self.rate is not None:
            self.rate.hold(wait)
        retry_at = self.now() + timedelta(seconds=wait)
        for recipient in recipients:
            self.store.release(recipient.delivery_id, error.reply, retry_at)
        log.info(
            "provider throttled campaign %s, %d messages wait %.1f s: %s",
            campaign_id, len(recipients), wait, error.reply, extra={"campaign_id": campaign_id},
        )

    def _fail(self, spec: CampaignSpec, recipient: Recipient, error: PermanentFailure) -> str:
        """Commit a claimed message's permanent failure, and remember an opt-out so no campaign sends there again."""
        self.store.mark_failed(recipient.delivery_id, error.reply, claimed=True)
        if getattr(error, "opted_out", False):
            self.store.record_opt_out(spec.channel, recipient.address, error.reply, spec.id)
        log.info(
            "failed delivery %s of campaign %s: %s",
            recipient.delivery_id, spec.id, error.reply, extra={"campaign_id": spec.id},
        )
        return "failed"

    def _compose_all(
        self, spec: CampaignSpec, templates: CampaignTemplates, recipients: list[Recipient], progress: Progress
    ) -> list[tuple[Recipient, Outgoing]]:
        """Render each recipient's message; one that cannot be rendered fails alone, before any claim."""
        composed: list[tuple[Recipient, Outgoing]] = []
        for recipient in recipients:
            try:
                composed.append((recipient, self._compose(spec, templates, recipient)))
            except (MissingFields, ValueError) as e:
                self.store.mark_failed(recipient.delivery_id, f"not sent: {e}")
                self._count(progress, "failed", f"not sent: {e}")
        return composed

    def _compose(self, spec: CampaignSpec, templates: CampaignTemplates, recipient: Recipient) -> Outgoing:
        content = templates.render(recipient.context)
        domain = message_id_domain(self.settings.message_id_domain, spec.from_email)
        message_id = make_message_id(spec.id, recipient.delivery_id, domain, self.settings.install_token)
        if spec.channel == Channel.SMS.value:
            return OutgoingSms(
                recipient=recipient.address, sender=spec.sms_sender, body=content.text, message_id=message_id
            )

        parts = EmailContent(
            subject=content.subject,
            text=content.text,
            html=content.html,
            from_name=spec.from_name,
            from_email=spec.from_email,
            reply_to=spec.reply_to,
            to_name=recipient.to_name,
            to_email=recipient.address,
        )
        return build_from_content(parts, message_id)

    def _defer(self, campaign_id: int, recipient: Recipient, error: Exception) -> str | None:
        """Queue a claimed message's temporary failure again with backoff, or fail it after the last attempt."""
        attempts = recipient.attempts + 1
        if attempts >= self.settings.max_attempts:
            self.store.mark_failed(
                recipient.delivery_id, f"{error.reply} (gave up after {attempts} attempts)", claimed=True
            )
            return "failed"

        if isinstance(error, ConnectionLost):
            # The connection broke, not the recipient: try again at once on a new one.
            delay = 0.0
        else:
            delay = self._backoff(attempts, error.retry_after)
        self.store.mark_deferred(recipient.delivery_id, error.reply, self.now() + timedelta(seconds=delay))
        log.info(
            "deferred delivery %s of campaign %s for %.0f s (attempt %d): %s",
            recipient.delivery_id, campaign_id, delay, attempts, error.reply, extra={"campaign_id": campaign_id},
        )
        return None

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        """Return the delay before the next attempt: exponential with jitter, at least Retry-After."""
        exponential = self.settings.retry_base_seconds * 2 ** (attempts - 1)
        delay = min(exponential, self.settings.retry_max_seconds) * random.uniform(0.8, 1.2)
        return max(delay, retry_after or 0.0)

    def _pause(self, campaign_id: int, reason: str, error: str | None = None) -> RunOutcome:
        """Pause the campaign; ``error`` is kept on it for the web app to show."""
        self.store.finish_run(campaign_id, campaign_status.PAUSED, error)
        log.info("paused campaign %s: %s", campaign_id, error or reason, extra={"campaign_id": campaign_id})
        return RunOutcome(campaign_status.PAUSED, self.store.progress(campaign_id), error)

    def _wait(self, seconds: float) -> None:
        """Wait ``seconds`` or until stop is requested, calling ``heartbeat`` at least once a second."""
        if self.heartbeat is None:
            self.stop.wait(seconds)
            return

        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._beat()
            self.stop.wait(min(remaining, HEARTBEAT_SLICE))

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat()

    def _report(self, progress: Progress) -> None:
        if self.on_progress is not None:
            self.on_progress(progress)


def grown_batch_size(smallest: int, sent: int, seconds: float) -> int:
    """Return the size of the next batch: ``BATCH_SECONDS`` at the rate of the last one, within its bounds."""
    rate = sent / max(seconds, 0.001)
    return min(max(smallest, int(rate * BATCH_SECONDS)), max(smallest, MAX_BATCH_SIZE))
