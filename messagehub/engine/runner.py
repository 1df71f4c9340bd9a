"""The send loop: one campaign, one sender, and a conditional claim per recipient before handover."""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from messagehub.engine import status as campaign_status
from messagehub.engine.store import CampaignSpec, CampaignStore, Claimed, Progress, Recipient
from messagehub.messages.mime import build_message, make_message_id
from messagehub.messages.templating import CampaignTemplates, MissingFields, TemplateSyntaxProblem
from messagehub.models import utcnow
from messagehub.providers.base import (
    ConnectionLost,
    OutgoingMessage,
    PermanentFailure,
    ProviderUnavailable,
    Sender,
    TemporaryFailure,
)

log = logging.getLogger("messagehub.processor")

# Seconds between two reads of the campaign's stored status during a batch.
STATUS_CHECK_INTERVAL = 1.0

# Waits, in seconds, before retrying a provider that is unreachable as a whole.
# After the last one the campaign pauses with the error, and an operator resumes it.
UNAVAILABLE_WAITS = (2.0, 5.0, 15.0)

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

    def clamped(self) -> EngineSettings:
        """Return a copy with every knob inside its sane range."""
        return EngineSettings(
            message_id_domain=self.message_id_domain,
            install_token=self.install_token,
            batch_size=min(max(int(self.batch_size), 1), 10_000),
            max_attempts=min(max(int(self.max_attempts), 1), 100),
            retry_base_seconds=max(float(self.retry_base_seconds), 0.0),
            retry_max_seconds=max(float(self.retry_max_seconds), float(self.retry_base_seconds), 0.0),
        )


@dataclass
class RunOutcome:
    """Outcome of a run: final status, counts and the error, if any."""

    status: str
    progress: Progress
    error: str | None = None


@dataclass
class _Attempt:
    """Whether the current message got past its point of no return."""

    handed_over: bool = False


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
    sender: Sender
    settings: EngineSettings
    stop: threading.Event = field(default_factory=threading.Event)
    on_progress: Callable[[Progress], None] | None = None
    heartbeat: Callable[[], None] | None = None
    now: Callable[[], datetime] = utcnow

    def __post_init__(self) -> None:
        self.settings = self.settings.clamped()

    def run(self, campaign_id: int) -> RunOutcome:
        """Send every queued recipient of the campaign, resuming where a previous run stopped."""
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

        try:
            outcome = self._send_all(spec, templates, progress)
        except Exception as e:
            # Logged with the traceback for the operator; the campaign keeps a
            # one-line reason the web app can show.
            log.exception("error running campaign %s", campaign_id, extra=extra)
            self.store.finish_run(campaign_id, campaign_status.FAILED, f"{type(e).__name__}: {e}")
            raise
        finally:
            self.sender.close()

        log.info(
            "%s campaign %s: %d sent, %d failed, %d skipped, %d queued",
            outcome.status, campaign_id, outcome.progress.sent, outcome.progress.failed,
            outcome.progress.skipped, outcome.progress.queued, extra=extra,
        )
        return outcome

    def _settle_in_doubt(self, campaign_id: int) -> None:
        """Resolve deliveries a killed run left between handover and outcome."""
        for item in self.store.in_doubt(campaign_id):
            self._beat()
            delivered = self.sender.was_delivered(item.message_id)
            self.store.resolve(item.delivery_id, delivered)
            log.warning(
                "settled delivery %s of campaign %s left in flight by the previous run: %s",
                item.delivery_id, campaign_id,
                {True: "delivered", False: "queued again", None: "unconfirmed, not sent again"}[delivered],
                extra={"campaign_id": campaign_id},
            )

    def _send_all(self, spec: CampaignSpec, templates: CampaignTemplates, progress: Progress) -> RunOutcome:
        unavailable_count = 0
        while True:
            self._beat()
            if self.stop.is_set():
                return self._pause(spec.id, "stop requested")
            if self.store.current_status(spec.id) != campaign_status.RUNNING:
                # Paused from the web app or another process: leave the status as it is.
                return RunOutcome(self.store.current_status(spec.id), self.store.progress(spec.id))

            batch = self.store.next_batch(spec.id, self.settings.batch_size, self.now())
            if not batch:
                if not self._wait_for_retries(spec.id):
                    break
                continue

            try:
                self._send_batch(spec, templates, batch, progress)
                unavailable_count = 0
            except ProviderUnavailable as e:
                if unavailable_count == len(UNAVAILABLE_WAITS):
                    return self._pause(spec.id, "provider unavailable", error=f"Provider unavailable: {e.reply}")
                wait = UNAVAILABLE_WAITS[unavailable_count]
                unavailable_count += 1
                log.warning(
                    "provider unavailable for campaign %s, retrying in %.0f s: %s",
                    spec.id, wait, e.reply, extra={"campaign_id": spec.id},
                )
                self._wait(wait)

        self.store.finish_run(spec.id, campaign_status.FINISHED)
        return RunOutcome(campaign_status.FINISHED, self.store.progress(spec.id))

    def _wait_for_retries(self, campaign_id: int) -> bool:
        """Sleep until the next deferred delivery is due; False when nothing is left to send."""
        retry_at = self.store.next_retry_at(campaign_id)
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
        checked_at = time.monotonic()
        for recipient in batch:
            if self.stop.is_set():
                return
            # A pause from the web app may come from another process: look at
            # the stored status once a second, not only between batches.
            if time.monotonic() - checked_at >= STATUS_CHECK_INTERVAL:
                checked_at = time.monotonic()
                if self.store.current_status(spec.id) != campaign_status.RUNNING:
                    return
            outcome = self._deliver(spec, templates, recipient)
            self._beat()
            if outcome:
                progress.queued = max(progress.queued - 1, 0)
                setattr(progress, outcome, getattr(progress, outcome) + 1)
                self._report(progress)

    def _deliver(self, spec: CampaignSpec, templates: CampaignTemplates, recipient: Recipient) -> str | None:
        """Send one message; return the final status it reached, or None if it stays queued."""
        try:
            message = self._compose(spec, templates, recipient)
        except (MissingFields, ValueError) as e:
            self.store.mark_failed(recipient.delivery_id, f"not sent: {e}")
            return "failed"

        attempt = _Attempt()

        def hand_over() -> None:
            self.store.mark_sending(recipient.delivery_id, message.message_id)
            attempt.handed_over = True

        try:
            result = self.sender.send(message, hand_over)
        except Claimed:
            log.info(
                "skipped delivery %s of campaign %s: another process sent it",
                recipient.delivery_id, spec.id, extra={"campaign_id": spec.id},
            )
            return None
        except PermanentFailure as e:
            self.store.mark_failed(recipient.delivery_id, e.reply, attempt.handed_over)
            log.info(
                "failed delivery %s of campaign %s: %s",
                recipient.delivery_id, spec.id, e.reply, extra={"campaign_id": spec.id},
            )
            return "failed"
        except (TemporaryFailure, ConnectionLost) as e:
            return self._defer(spec.id, recipient, e, attempt.handed_over)

        self.store.mark_sent(recipient.delivery_id, result.reply, result.provider_id)
        return "sent"

    def _compose(self, spec: CampaignSpec, templates: CampaignTemplates, recipient: Recipient) -> OutgoingMessage:
        content = templates.render(recipient.context)
        domain = self.settings.message_id_domain or spec.from_email.rpartition("@")[2] or "localhost"
        message_id = make_message_id(spec.id, recipient.delivery_id, domain, self.settings.install_token)
        return build_message(
            subject=content.subject,
            text=content.text,
            html=content.html,
            from_name=spec.from_name,
            from_email=spec.from_email,
            reply_to=spec.reply_to,
            to_name=recipient.to_name,
            to_email=recipient.address,
            message_id=message_id,
        )

    def _defer(self, campaign_id: int, recipient: Recipient, error: Exception, handed_over: bool) -> str | None:
        """Queue a temporary failure again with backoff, or fail it after the last attempt."""
        attempts = recipient.attempts + 1
        if attempts >= self.settings.max_attempts:
            self.store.mark_failed(
                recipient.delivery_id, f"{error.reply} (gave up after {attempts} attempts)", handed_over
            )
            return "failed"

        if isinstance(error, ConnectionLost):
            # The connection broke, not the recipient: try again at once on a new one.
            delay = 0.0
        else:
            delay = self._backoff(attempts, error.retry_after)
        self.store.mark_deferred(recipient.delivery_id, error.reply, self.now() + timedelta(seconds=delay), handed_over)
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
