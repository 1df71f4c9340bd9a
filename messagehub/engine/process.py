"""Running one campaign in a process of its own: config, signals, logging, exit status."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from messagehub.config import ConfigError, load_config
from messagehub.database import create_db_engine
from messagehub.delivery_settings import SenderNotConfigured, account_rate, open_sender
from messagehub.engine import status as campaign_status
from messagehub.engine.journal import campaign_log_handler
from messagehub.engine.runner import CampaignRunner, EngineSettings, RunOutcome
from messagehub.engine.sqlstore import SqlCampaignStore
from messagehub.engine.store import Progress
from messagehub.engine.systemd_notify import Notifier, status_text
from messagehub.engine.workers import WorkerLost, run_with_workers
from messagehub.providers.smtp import SmtpSender
from messagehub.providers.smtp_connections import SmtpConnections
from messagehub.providers import quiet_sdk_loggers

log = logging.getLogger("messagehub.processor")

# SYSLOG_IDENTIFIER of the engine's journal entries (`journalctl -t messagehub-campaign`).
SYSLOG_IDENTIFIER = "messagehub-campaign"

# Exit statuses. An unexpected error exits 1, so a supervisor restarts the
# run. A campaign that failed for good (a template error, say) exits 3, which
# a supervisor must not restart: the same run would fail the same way.
EXIT_OK = 0
# The status of an unexpected error, which systemd restarts.
EXIT_RESTART = 1
EXIT_USAGE = 2
EXIT_CAMPAIGN_FAILED = 3


def engine_settings(config: dict) -> EngineSettings:
    """Build the send loop's settings from the deployment configuration."""
    # Different installs sending to the same person must never produce the
    # same Message-ID, so part of it derives from this install's secret.
    token = hashlib.sha256(("message-id:" + config["SECRET_KEY"]).encode()).hexdigest()[:12]
    return EngineSettings(
        message_id_domain=config.get("MESSAGE_ID_DOMAIN") or "",
        install_token=token,
        batch_size=config["BATCH_SIZE"],
        max_attempts=config["MAX_ATTEMPTS"],
        retry_base_seconds=config["RETRY_BASE_SECONDS"],
        retry_max_seconds=config["RETRY_MAX_SECONDS"],
        error_rate_limit=config["ERROR_RATE_LIMIT"],
        error_rate_window=config["ERROR_RATE_WINDOW"],
    )


def build_runner(
    campaign_id: int,
    config: dict,
    stop: threading.Event,
    on_progress: Callable[[Progress], None] | None = None,
    heartbeat: Callable[[], None] | None = None,
    partition: tuple[int, int] | None = None,
    connections: int = 1,
) -> CampaignRunner:
    """Wire store, sender and settings for one campaign, or for its ``partition`` (k, n).

    ``connections`` above 1 gives an SMTP campaign that many connections in this process.
    """
    engine = create_db_engine(config["SQLALCHEMY_DATABASE_URI"])
    store = SqlCampaignStore(engine)
    spec = store.load_campaign(campaign_id)
    sender = open_sender(spec.delivery_method, engine, config, campaign_id, spec.provider_account_id, connections)
    return CampaignRunner(
        store,
        sender,
        engine_settings(config),
        stop=stop,
        on_progress=on_progress,
        heartbeat=_with_liveness(store, campaign_id, heartbeat),
        rate=account_rate(engine, spec.provider_account_id),
        partition=partition,
        journal_dir=Path(config["HANDOVER_DIR"]),
    )


# Seconds between two liveness marks in the database; the web app treats a
# running campaign whose mark is six times older as interrupted.
LIVENESS_INTERVAL = 5.0

# Relays limit connections per client, and beyond a few per core they only
# wait on one another.
MAX_SMTP_CONNECTIONS = 16


def _with_liveness(
    store: SqlCampaignStore, campaign_id: int, heartbeat: Callable[[], None] | None
) -> Callable[[], None]:
    """Wrap ``heartbeat`` so that it also marks the campaign alive, at most every few seconds."""
    last = [time.monotonic()]

    def beat() -> None:
        if time.monotonic() - last[0] >= LIVENESS_INTERVAL:
            store.touch(campaign_id)
            last[0] = time.monotonic()
        if heartbeat is not None:
            heartbeat()

    return beat


def install_stop_handlers(stop: threading.Event, notifier: Notifier | None = None) -> None:
    """Make SIGTERM and SIGINT finish the message in flight, then stop the run."""

    def request_stop(signum, frame):
        log.info("received %s, stopping after the message in flight", signal.Signals(signum).name)
        stop.set()
        if notifier is not None:
            notifier.stopping()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def configure_logging(level: str, campaign_id: int | None = None) -> None:
    """Log to the journal when stderr is connected to it, else to stderr, tagging every record with the campaign."""
    root = logging.getLogger()
    root.addHandler(campaign_log_handler(campaign_id, SYSLOG_IDENTIFIER))
    root.setLevel(level)
    quiet_sdk_loggers()


def notifying_progress(
    notifier: Notifier, on_progress: Callable[[Progress], None] | None = None
) -> Callable[[Progress], None]:
    """Return an ``on_progress`` callback that reports readiness and progress to systemd, then calls ``on_progress``."""

    def report(progress: Progress) -> None:
        # The runner reports progress for the first time after start_run and
        # the settlement of in-doubt deliveries: that is when start-up is over.
        notifier.ready()
        notifier.progress(progress)
        if on_progress is not None:
            on_progress(progress)

    return report


def run_campaign(
    campaign_id: int,
    config: dict,
    on_progress: Callable[[Progress], None] | None = None,
    notifier: Notifier | None = None,
) -> RunOutcome:
    """Run one campaign to its end in this process, stopping cleanly on SIGTERM.

    With ``notifier`` the run reports to systemd when it is ready and how far
    it got, and pings the watchdog while the send loop advances.
    """
    stop = threading.Event()
    install_stop_handlers(stop, notifier)
    heartbeat = None
    if notifier is not None:
        on_progress = notifying_progress(notifier, on_progress)
        heartbeat = notifier.heartbeat

    runner = build_runner(campaign_id, config, stop, on_progress, heartbeat)
    connections = connection_count(runner, config, campaign_id)
    shares = process_shares(connections, usable_cpus())
    if len(shares) > 1:
        return run_with_workers(runner, campaign_id, config, shares, stop, build_runner, on_progress, heartbeat)
    if connections > 1:
        # The sender has not connected yet, so swapping it costs no connection.
        runner.sender = SmtpConnections(runner.sender.settings, connections)
    return runner.run(campaign_id)


def usable_cpus() -> int:
    """Return how many CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def process_shares(connections: int, cpus: int) -> list[int]:
    """Spread ``connections`` over at most one process per CPU; return the connections of each process.

    A process drives its connections in rounds, so more processes than CPUs
    would only take turns on them.
    """
    processes = max(min(connections, cpus), 1)
    share, extra = divmod(connections, processes)
    return [share + 1 if index < extra else share for index in range(processes)]


def connection_count(runner: CampaignRunner, config: dict, campaign_id: int) -> int:
    """Return how many SMTP connections the campaign's run uses.

    Only SMTP campaigns use several: API providers are held to their
    account's rate, which one process keeps up with.
    """
    if not isinstance(runner.sender, SmtpSender):
        return 1

    configured = int(config.get("SMTP_CONNECTIONS", 1))
    count = min(max(configured, 1), MAX_SMTP_CONNECTIONS)
    if count != configured:
        log.warning(
            "SMTP_CONNECTIONS is %s, outside 1 to %s: campaign %s uses %s instead",
            configured, MAX_SMTP_CONNECTIONS, campaign_id, count, extra={"campaign_id": campaign_id},
        )
    return count


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m messagehub.engine CAMPAIGN_ID``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m messagehub.engine CAMPAIGN_ID", file=sys.stderr)
        return EXIT_USAGE

    campaign_id = int(argv[0])
    try:
        config = load_config()
    except ConfigError as e:
        # Logging is configured from the settings, so this goes to stderr (the journal under systemd).
        print(f"cannot run campaign {campaign_id}: invalid configuration: {e}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(str(config.get("LOG_LEVEL", "INFO")).upper(), campaign_id)
    notifier = Notifier.from_environment()
    try:
        outcome = run_campaign(campaign_id, config, notifier=notifier)
    except SenderNotConfigured as e:
        log.error("cannot run campaign %s: %s", campaign_id, e, extra={"campaign_id": campaign_id})
        pause_unsendable(config, campaign_id, str(e))
        report_end(notifier, f"cannot run: {e}")
        return EXIT_USAGE
    except WorkerLost as e:
        # Not a bug of this process, so no traceback: the restart sends the lost share.
        log.error("failed campaign %s: %s", campaign_id, e, extra={"campaign_id": campaign_id})
        report_end(notifier, f"failed: {e}")
        return EXIT_RESTART
    except (LookupError, campaign_status.StatusError) as e:
        log.error("cannot run campaign %s: %s", campaign_id, e, extra={"campaign_id": campaign_id})
        report_end(notifier, f"cannot run: {e}")
        return EXIT_USAGE

    report_end(notifier, f"{outcome.status}: {status_text(outcome.progress)}")
    return EXIT_CAMPAIGN_FAILED if outcome.status == campaign_status.FAILED else EXIT_OK


def pause_unsendable(config: dict, campaign_id: int, reason: str) -> None:
    """Pause a campaign marked running whose sender cannot be opened, keeping the reason for the web app."""
    store = SqlCampaignStore(create_db_engine(config["SQLALCHEMY_DATABASE_URI"]))
    if store.current_status(campaign_id) == campaign_status.RUNNING:
        store.finish_run(campaign_id, campaign_status.PAUSED, f"Cannot send: {reason}")


def report_end(notifier: Notifier, text: str) -> None:
    """Leave a final STATUS= text for `systemctl status` and tell systemd the process is stopping."""
    notifier.status(text)
    notifier.stopping()
    notifier.close()
