"""Campaign runs inside the web process ("Send now"), one thread per campaign."""

from __future__ import annotations

import logging
import threading

from messagehub.engine.process import build_runner

log = logging.getLogger("messagehub.web")

# Runs started by this process. Other gunicorn workers have their own; a run
# is stopped across workers through the campaign's status in the database.
_runs: dict[int, tuple[threading.Thread, threading.Event]] = {}
_lock = threading.Lock()


class AlreadyRunning(Exception):
    """The campaign already runs in this process."""


def start(campaign_id: int, config: dict) -> None:
    """Start sending the campaign in a thread of this process."""
    with _lock:
        current = _runs.get(campaign_id)
        if current is not None and current[0].is_alive():
            raise AlreadyRunning(f"Campaign {campaign_id} is already sending.")

        stop = threading.Event()
        runner = build_runner(campaign_id, config, stop)
        # Marked running (and its audience queued) before the response goes
        # out, so the page that follows already streams a running campaign.
        runner.store.start_run(campaign_id)
        thread = threading.Thread(
            target=_run, args=(runner, campaign_id), name=f"campaign-{campaign_id}", daemon=True
        )
        _runs[campaign_id] = (thread, stop)
        thread.start()


def stop(campaign_id: int) -> bool:
    """Ask this process's run of the campaign to stop after the message in flight."""
    with _lock:
        current = _runs.get(campaign_id)
    if current is None or not current[0].is_alive():
        return False

    current[1].set()
    return True


def is_running(campaign_id: int) -> bool:
    """Tell whether this process is sending the campaign now."""
    with _lock:
        current = _runs.get(campaign_id)
    return current is not None and current[0].is_alive()


def _run(runner, campaign_id: int) -> None:
    try:
        runner.run(campaign_id)
    except Exception:
        # The runner logged the traceback and marked the campaign failed. A
        # thread cannot pass the error to a caller, so this line only closes it.
        log.warning("foreground run of campaign %s ended with an error", campaign_id, extra={"campaign_id": campaign_id})
