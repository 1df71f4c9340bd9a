"""Running one campaign in a process of its own: config, signals, logging, exit status."""

from __future__ import annotations

import hashlib
import logging
import signal
import sys
import threading
from typing import Callable

from messagehub.config import load_config
from messagehub.database import create_db_engine
from messagehub.delivery_settings import SenderNotConfigured, open_sender
from messagehub.engine import status as campaign_status
from messagehub.engine.runner import CampaignRunner, EngineSettings, RunOutcome
from messagehub.engine.sqlstore import SqlCampaignStore
from messagehub.engine.store import Progress

log = logging.getLogger("messagehub.processor")

# Exit statuses. An unexpected error exits 1, so a supervisor restarts the
# run. A campaign that failed for good (a template error, say) exits 3, which
# a supervisor must not restart: the same run would fail the same way.
EXIT_OK = 0
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
    )


def build_runner(
    campaign_id: int,
    config: dict,
    stop: threading.Event,
    on_progress: Callable[[Progress], None] | None = None,
) -> CampaignRunner:
    """Wire store, sender and settings for one campaign."""
    engine = create_db_engine(config["SQLALCHEMY_DATABASE_URI"])
    store = SqlCampaignStore(engine)
    spec = store.load_campaign(campaign_id)
    sender = open_sender(spec.delivery_method, engine, config, campaign_id)
    return CampaignRunner(store, sender, engine_settings(config), stop=stop, on_progress=on_progress)


def install_stop_handlers(stop: threading.Event) -> None:
    """Make SIGTERM and SIGINT finish the message in flight, then stop the run."""

    def request_stop(signum, frame):
        log.info("received %s, stopping after the message in flight", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def configure_logging(level: str) -> None:
    """Log to stderr, one line per event, with the campaign id when there is one."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CampaignFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


class _CampaignFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        campaign_id = getattr(record, "campaign_id", None)
        return f"{line} [campaign={campaign_id}]" if campaign_id is not None else line


def run_campaign(
    campaign_id: int, config: dict, on_progress: Callable[[Progress], None] | None = None
) -> RunOutcome:
    """Run one campaign to its end in this process, stopping cleanly on SIGTERM."""
    stop = threading.Event()
    install_stop_handlers(stop)
    runner = build_runner(campaign_id, config, stop, on_progress)
    return runner.run(campaign_id)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m messagehub.engine CAMPAIGN_ID``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m messagehub.engine CAMPAIGN_ID", file=sys.stderr)
        return EXIT_USAGE

    config = load_config()
    configure_logging(str(config.get("LOG_LEVEL", "INFO")))
    try:
        outcome = run_campaign(int(argv[0]), config)
    except (LookupError, campaign_status.StatusError, SenderNotConfigured) as e:
        log.error("cannot run campaign %s: %s", argv[0], e, extra={"campaign_id": int(argv[0])})
        return EXIT_USAGE

    return EXIT_CAMPAIGN_FAILED if outcome.status == campaign_status.FAILED else EXIT_OK
