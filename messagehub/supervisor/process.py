"""Campaigns as plain detached processes, for machines without a systemd manager.

How a launch works, and why:

    web worker ──Popen──> launcher (new session) ──fork──> watcher ──Popen──> engine
                             │ exits once the record is written     │ waits, records the exit status

The web worker waits only for the short-lived launcher, so it reaps it at
once and never keeps a zombie, whichever gunicorn worker launched. The
watcher outlives the launcher, is adopted by PID 1 (or a subreaper), and is
the engine's parent: it alone can collect the engine's exit status, which it
writes into the run record. Every worker reads state from that record and
/proc, never from a process handle.

There is no automatic restart: a campaign whose process died is shown as
interrupted, and the user resumes it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from messagehub.supervisor.base import (
    ACTIVE,
    FAILED,
    INACTIVE,
    UnitNotFound,
    UnitState,
    unit_name,
)

log = logging.getLogger("messagehub.supervisor")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# Result shown when a process is gone without a recorded exit status (killed
# with its watcher, or the machine rebooted).
RESULT_INTERRUPTED = "interrupted"


def read_proc_stat(pid: int) -> list[str] | None:
    """Return the fields of /proc/<pid>/stat from field 3 (state) on, or None if pid is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None

    # The command name (field 2) may contain spaces and parentheses, so split after the last ")".
    return raw[raw.rindex(")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """Return a live process's start time in clock ticks since boot (stat field 22), or None."""
    fields = read_proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


class ProcessSupervisor:
    """Runs each campaign as a detached ``python -m messagehub.engine <id>`` process."""

    name = "process"

    def __init__(self, instance_path: Path | str, stop_timeout: float = 10.0, launch_timeout: float = 10.0) -> None:
        self.instance_path = Path(instance_path)
        self.run_dir = self.instance_path / "run"
        self.log_dir = self.instance_path / "logs"
        self.stop_timeout = stop_timeout
        self.launch_timeout = launch_timeout
        self.reason = ""

    def launch(self, campaign_id: int) -> None:
        """Start the campaign's process unless it already runs."""
        campaign_id = int(campaign_id)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)

        # The lock makes check-then-start atomic across gunicorn workers.
        with self._lock(campaign_id):
            if self._alive_pid(self._read_record(campaign_id)) is not None:
                return
            self._start_launcher(campaign_id)

        log.info("started campaign %s as a plain process (unit %s)", campaign_id, unit_name(campaign_id))

    def stop(self, campaign_id: int) -> None:
        """Send SIGTERM to the campaign's process group and wait up to ``stop_timeout`` for it to exit."""
        record = self._read_record(campaign_id)
        pid = self._alive_pid(record)
        if pid is None:
            raise UnitNotFound(f"No process is running for campaign {campaign_id}.")

        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline:
            if process_start_time(pid) != record["start_time"]:
                log.info("stopped campaign %s (pid %s)", campaign_id, pid)
                return
            time.sleep(0.05)

        # No SIGKILL: the engine may be mid-message, and killing it would leave
        # that recipient in doubt. The process keeps its SIGTERM and ends later.
        log.warning("campaign %s (pid %s) still running %s s after SIGTERM", campaign_id, pid, self.stop_timeout)

    def restart(self, campaign_id: int) -> None:
        """Stop the campaign's process if it runs, then start it again."""
        if self._alive_pid(self._read_record(campaign_id)) is not None:
            self.stop(campaign_id)
        self.launch(campaign_id)

    def state(self, campaign_id: int) -> UnitState | None:
        """Return the process state from its run record and /proc, or None if it never ran here."""
        record = self._read_record(campaign_id)
        if record is None:
            return None
        return self._state_of(campaign_id, record)

    def states(self) -> list[UnitState]:
        """Return the state of every campaign that has a run record."""
        states = []
        for path in sorted(self.run_dir.glob("campaign-*.json")):
            campaign_id = path.stem.removeprefix("campaign-")
            if not campaign_id.isdigit():
                continue
            record = self._read_record(int(campaign_id))
            if record is not None:
                states.append(self._state_of(int(campaign_id), record))

        return sorted(states, key=lambda state: state.campaign_id)

    def journal(self, campaign_id: int, lines: int = 50) -> list[str]:
        """Return the last ``lines`` lines of the campaign's log file, oldest first."""
        path = self.log_path(campaign_id)
        if not path.exists():
            return []
        with path.open(encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in deque(f, maxlen=lines)]

    def log_path(self, campaign_id: int) -> Path:
        """Return the log file that receives the campaign process's stdout and stderr."""
        return self.log_dir / f"campaign-{int(campaign_id)}.log"

    def record_path(self, campaign_id: int) -> Path:
        """Return the run record of the campaign's process (pid, start time, exit status)."""
        return self.run_dir / f"campaign-{int(campaign_id)}.json"

    # Steps shared by the operations above.

    @contextmanager
    def _lock(self, campaign_id: int) -> Iterator[None]:
        with open(self.run_dir / f"campaign-{campaign_id}.lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield

    def _start_launcher(self, campaign_id: int) -> None:
        """Run the launcher and wait until it has written the run record."""
        restarts = self._count_restarts(campaign_id)
        command = [sys.executable, "-m", "messagehub.supervisor.process", str(campaign_id), str(restarts)]
        env = {**os.environ, "MESSAGEHUB_INSTANCE_PATH": str(self.instance_path)}
        launcher = subprocess.run(
            command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            start_new_session=True, timeout=self.launch_timeout,
        )
        if launcher.returncode != 0:
            raise RuntimeError(f"launching campaign {campaign_id} failed: {launcher.stderr.strip()}")

    def _count_restarts(self, campaign_id: int) -> int:
        record = self._read_record(campaign_id)
        return 0 if record is None else int(record.get("restarts", 0)) + 1

    def _read_record(self, campaign_id: int) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_path(campaign_id).read_text())
        except FileNotFoundError:
            return None

    def _alive_pid(self, record: dict[str, Any] | None) -> int | None:
        """Return the recorded pid if that very process still runs; a reused pid does not count."""
        if record is None or record.get("exit_status") is not None:
            return None
        pid = int(record["pid"])
        return pid if process_start_time(pid) == record["start_time"] else None

    def _state_of(self, campaign_id: int, record: dict[str, Any]) -> UnitState:
        pid = self._alive_pid(record)
        started_at = datetime.fromisoformat(record["started_at"])
        common = {
            "campaign_id": campaign_id,
            "unit": unit_name(campaign_id),
            "restarts": int(record.get("restarts", 0)),
            "started_at": started_at,
        }
        if pid is not None:
            return UnitState(
                active_state=ACTIVE, sub_state="running", main_pid=pid,
                memory_bytes=_resident_bytes(pid), cpu_seconds=_cpu_seconds(pid), **common,
            )

        exit_status = record.get("exit_status")
        if exit_status == 0:
            return UnitState(active_state=INACTIVE, sub_state="dead", exit_status=0, result="success", **common)
        if exit_status is None:
            return UnitState(active_state=FAILED, sub_state="failed", result=RESULT_INTERRUPTED, **common)
        if exit_status < 0:
            return UnitState(active_state=FAILED, sub_state="failed", exit_status=-exit_status, result="signal", **common)

        return UnitState(active_state=FAILED, sub_state="failed", exit_status=exit_status, result="exit-code", **common)


def _resident_bytes(pid: int) -> int | None:
    fields = read_proc_stat(pid)
    return None if fields is None else int(fields[21]) * PAGE_SIZE


def _cpu_seconds(pid: int) -> float | None:
    fields = read_proc_stat(pid)
    # utime and stime are stat fields 14 and 15, in clock ticks.
    return None if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a run record atomically, so readers never see half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record))
    os.replace(temporary, path)


def run_launcher(campaign_id: int, restarts: int) -> int:
    """Fork the watcher, wait until it has recorded the engine's pid, then exit."""
    instance_path = Path(os.environ["MESSAGEHUB_INSTANCE_PATH"])
    supervisor = ProcessSupervisor(instance_path)
    ready_read, ready_write = os.pipe()

    if os.fork() == 0:
        os.close(ready_read)
        status = 1
        try:
            _detach_stdio(supervisor.log_path(campaign_id))
            status = _watch(supervisor, campaign_id, restarts, ready_write)
        finally:
            os._exit(status)

    os.close(ready_write)
    with os.fdopen(ready_read) as ready:
        return 0 if ready.read() == "ok" else 1


def _detach_stdio(log_path: Path) -> None:
    """Point the watcher's stdio away from the launcher's pipes, or the web worker would wait on them."""
    null = os.open(os.devnull, os.O_RDONLY)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null)
    os.close(log_fd)


def _watch(supervisor: ProcessSupervisor, campaign_id: int, restarts: int, ready_fd: int) -> int:
    """Start the engine, record it, tell the launcher, then wait and record its exit status."""
    path = supervisor.record_path(campaign_id)
    with supervisor.log_path(campaign_id).open("ab") as log_file:
        # The engine gets a session of its own, so stop() can signal its whole
        # process group without hitting this watcher.
        engine = subprocess.Popen(
            [sys.executable, "-m", "messagehub.engine", str(campaign_id)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True,
        )
    record = {
        "pid": engine.pid,
        "start_time": process_start_time(engine.pid),
        "started_at": datetime.now(timezone.utc).isoformat(),
        "restarts": restarts,
        "exit_status": None,
    }
    write_record(path, record)
    os.write(ready_fd, b"ok")
    os.close(ready_fd)

    # Negative return codes mean "killed by that signal", as subprocess reports them.
    record["exit_status"] = engine.wait()
    write_record(path, record)
    return 0


if __name__ == "__main__":
    sys.exit(run_launcher(int(sys.argv[1]), int(sys.argv[2])))
