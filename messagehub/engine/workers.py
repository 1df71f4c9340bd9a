"""One campaign over several SMTP connections in worker processes, watched by the main process.

Python runs one thread at a time per process, so a campaign that should
fill a fast relay needs processes, not threads: one per CPU at most, each
driving its share of the connections in rounds (``SmtpConnections``). The
main process begins the run (queues the audience, settles what a killed run
left in flight), then forks the workers. Worker k of n sends the deliveries
whose id modulo n is k, then takes the others' from the newest end, so the
rest send a lost worker's share. Should two workers reach for one delivery,
its conditional claim gives it to one of them. The main process reports
progress and pings the watchdog while every worker shows signs of life,
forwards SIGTERM, and sets the final status once all workers have ended.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Callable

from messagehub.engine import status as campaign_status
from messagehub.engine.runner import CampaignRunner, RunOutcome, log_outcome
from messagehub.engine.store import Progress

log = logging.getLogger("messagehub.processor")

# Seconds between two looks of the main process at its workers.
WATCH_INTERVAL = 0.2

# Seconds between two progress reports of the main process. Each reads the
# campaign's counter columns, not its deliveries, so a large audience costs
# nothing more.
PROGRESS_INTERVAL = 1.0

# A worker beats at least once a second, even while it waits (the runner's
# HEARTBEAT_SLICE). One silent for longer is taken as hung: the main process
# stops pinging the watchdog, and systemd kills the unit.
WORKER_SILENCE = 1.5

# Linux prctl option: the signal a process receives when its parent dies.
_PR_SET_PDEATHSIG = 1


class WorkerLost(Exception):
    """A worker process ended with an error or a signal; what it had claimed waits for a restart."""


def run_with_workers(
    runner: CampaignRunner,
    campaign_id: int,
    config: dict,
    shares: list[int],
    stop: threading.Event,
    build_runner: Callable,
    on_progress: Callable[[Progress], None] | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> RunOutcome:
    """Run the campaign over one worker process per item of ``shares``, and return how it ended.

    Each item is the number of SMTP connections of that worker. ``runner``
    begins the run in this process.
    ``build_runner(campaign_id, config, stop, on_progress, heartbeat, partition, connections)``
    makes the runner of each worker.
    """
    count = len(shares)
    started = runner.begin(campaign_id)
    runner.sender.close()
    if isinstance(started, RunOutcome):
        return started

    store = runner.store
    context = multiprocessing.get_context("fork")
    beats = context.Array("d", [float("-inf")] * count, lock=False)
    workers = [
        context.Process(
            target=_work, args=(campaign_id, config, share, shares, beats, build_runner, os.getpid()),
            name=f"campaign-{campaign_id}-worker-{share}",
        )
        for share in range(count)
    ]
    # A SIGTERM that reaches a worker between the fork and its own handler
    # would kill it silently, so the signal stays blocked over the forks and
    # each worker unblocks it once its handler is set.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        for worker in workers:
            worker.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    log.info(
        "campaign %s sends over %d connections in %d processes, worker pids %s",
        campaign_id, sum(shares), count, ", ".join(str(worker.pid) for worker in workers),
        extra={"campaign_id": campaign_id},
    )

    _watch(workers, beats, stop, store, campaign_id, on_progress, heartbeat)
    outcome = _final_outcome(store, campaign_id, workers, stop)
    log_outcome(campaign_id, outcome)
    return outcome


def _watch(workers, beats, stop, store, campaign_id, on_progress, heartbeat) -> None:
    """Report progress and ping the watchdog until every worker has ended; pass a stop request on.

    The watchdog is pinged only while every live worker has beaten within
    WORKER_SILENCE, so one hung worker stops the pings and systemd kills the unit.
    """
    forwarded = False
    reported = float("-inf")
    lost: set[str] = set()
    while any(worker.is_alive() for worker in workers):
        _report_lost_workers(workers, store, campaign_id, lost)
        if stop.is_set() and not forwarded:
            for worker in workers:
                if worker.is_alive():
                    os.kill(worker.pid, signal.SIGTERM)
            forwarded = True

        alive = [share for share, worker in enumerate(workers) if worker.is_alive()]
        now = time.monotonic()
        if heartbeat is not None and all(now - beats[share] < WORKER_SILENCE for share in alive):
            heartbeat()
        if on_progress is not None and now - reported >= PROGRESS_INTERVAL:
            on_progress(store.counters(campaign_id))
            reported = now

        if alive:
            workers[alive[0]].join(WATCH_INTERVAL)


def _report_lost_workers(workers, store, campaign_id: int, reported: set[str]) -> None:
    """Log and show on the campaign's pages each worker that ended with an error or a signal, once."""
    for worker in workers:
        if worker.exitcode not in (None, 0) and worker.name not in reported:
            reported.add(worker.name)
            # The others send what is left, its share included. The campaign
            # then fails, so that a restart settles the batch it had claimed.
            log.warning(
                "worker %s (pid %s) of campaign %s ended with %s; the other workers take over its share, "
                "and the messages it had claimed are settled when the campaign restarts or is resumed",
                worker.name, worker.pid, campaign_id, _describe_exit(worker.exitcode),
                extra={"campaign_id": campaign_id},
            )
            store.note_problem(
                campaign_id,
                f"Worker {worker.name} ended with {_describe_exit(worker.exitcode)}. The other workers take "
                "over its share; the messages it had claimed are settled when the campaign restarts or is resumed.",
            )


def _describe_exit(exitcode: int) -> str:
    """Return "signal SIGKILL" for a negative multiprocessing exit code, else "exit status N"."""
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit status {exitcode}"


def _final_outcome(store, campaign_id: int, workers, stop: threading.Event) -> RunOutcome:
    """Set and return the campaign's status once all workers ended."""
    progress = store.progress(campaign_id)
    status = store.current_status(campaign_id)
    failed_workers = [worker.name for worker in workers if worker.exitcode != 0]

    if status != campaign_status.RUNNING:
        # A worker paused or failed the campaign (error rate, provider down,
        # an exception), or the web app paused it: keep that status.
        return RunOutcome(status, progress)

    if failed_workers:
        error = (
            f"worker {', '.join(failed_workers)} ended unexpectedly; the campaign stopped, and a restart "
            "(automatic under systemd) or Resume continues it"
        )
        store.finish_run(campaign_id, campaign_status.FAILED, error)
        raise WorkerLost(error)

    if stop.is_set() and progress.queued:
        store.finish_run(campaign_id, campaign_status.PAUSED)
        log.info("paused campaign %s: stop requested", campaign_id, extra={"campaign_id": campaign_id})
        return RunOutcome(campaign_status.PAUSED, progress)

    store.finish_run(campaign_id, campaign_status.FINISHED)
    return RunOutcome(campaign_status.FINISHED, store.progress(campaign_id))


def _work(
    campaign_id: int, config: dict, share: int, shares: list[int], beats, build_runner: Callable, parent: int
) -> None:
    """Send share ``share`` of the campaign over ``shares[share]`` connections in this forked process.

    Exits 1 on an error.
    """
    die_with_parent(parent)
    stop = threading.Event()

    def request_stop(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

    def beat() -> None:
        beats[share] = time.monotonic()

    runner = build_runner(campaign_id, config, stop, None, beat, (share, len(shares)), shares[share])
    try:
        runner.run_share(campaign_id)
    except Exception:
        # run_share logged the traceback and failed the campaign with the reason.
        os._exit(1)


def die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent ``parent`` dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died between the fork and the prctl call.
    if os.getppid() != parent:
        os._exit(1)
