"""Kill the engine with SIGKILL while it sends at full speed, resume it, and count what every recipient got.

One campaign sends over the engine's SMTP connections into Postfix's
smtp-sink, which appends every completed transaction to a dump file with its
RCPT TO address (smtp-sink -D). A transaction whose connection closed before
the final dot is not dumped, as a real server would not deliver it. Each
time the sink has counted another share of the audience, the engine's whole
process group (main process and workers) gets SIGKILL, and the engine starts
again, as systemd's Restart= would start it. The last run goes to the end.

Then the dump and the campaign's delivery rows must agree, so four counts
must be 0:

- duplicates: recipients who got more than one message.
- lost: rows recorded as sent without doubt whose message never arrived.
- not recorded: messages that arrived for a row not recorded as sent.
- unsent: rows that did not end as sent (queued, sending or failed).

A message handed over in the instant of a kill is
"unconfirmed": the next run records it as sent and never sends it again, so
it arrived once or, when the kill came before its final dot, not at all. The
note gives how many of those arrived.

    .venv/bin/python bench/crash_check.py --recipients 30000 --kills 3
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from smtp_throughput import SINK_POLL_SECONDS, SmtpSink, prepare_campaign

# Seconds a run may take before the check gives up on it.
RUN_TIMEOUT_SECONDS = 600.0

# Seconds to wait for the sink's counter to stop moving after the last run.
SETTLE_SECONDS = 2.0


@dataclass(frozen=True)
class CrashRun:
    """The counts of one crash check."""

    recipients: int
    kills: int
    received: int
    duplicates: int
    lost: int
    not_recorded: int
    unsent: int
    unconfirmed: int
    unconfirmed_received: int
    seconds: float

    @property
    def faults(self) -> int:
        """Return the recipients counted in any of the four faults."""
        return self.duplicates + self.lost + self.not_recorded + self.unsent


def run_crash_check(directory: Path, recipients: int, kills: int) -> CrashRun:
    """Send one campaign of ``recipients``, killing the engine ``kills`` times on the way, and compare."""
    with tempfile.TemporaryDirectory(prefix="messagehub-sink-dump-") as dump_directory:
        if os.geteuid() == 0:
            # smtp-sink drops to "nobody" when started by root, and writes the dump as that user.
            os.chmod(dump_directory, 0o777)
        return _check(directory, Path(dump_directory) / "messages", recipients, kills)


def _check(directory: Path, dump: Path, recipients: int, kills: int) -> CrashRun:
    with SmtpSink(directory, dump=dump) as sink:
        instance = prepare_campaign(directory / "crash", recipients, sink.port)
        environment = {**os.environ, "MESSAGEHUB_INSTANCE_PATH": str(instance.path)}
        log_path = instance.path / "engine.log"
        started = time.perf_counter()

        with log_path.open("ab") as log:
            for kill in range(1, kills + 1):
                process = _start_engine(instance.campaign_id, environment, log)
                _wait_for_count(sink, process, recipients * kill // (kills + 1), log_path)
                _kill_group(process)

            process = _start_engine(instance.campaign_id, environment, log)
            status = process.wait(RUN_TIMEOUT_SECONDS)
        seconds = time.perf_counter() - started
        if status != 0:
            raise RuntimeError(f"the last engine run exited with status {status}: {_tail(log_path)}")

        _wait_until_still(sink)

    return _compare(instance.path / "messagehub.db", instance.campaign_id, dump, recipients, kills, seconds)


def _start_engine(campaign_id: int, environment: dict[str, str], log) -> subprocess.Popen:
    # A session of its own, so that one killpg reaches the main process and every worker.
    return subprocess.Popen(
        [sys.executable, "-m", "messagehub.engine", str(campaign_id)],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for_count(sink: SmtpSink, process: subprocess.Popen, count: int, log_path: Path) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while sink.messages() < count:
        if process.poll() is not None:
            raise RuntimeError(f"the engine exited with status {process.returncode} before {count} messages: {_tail(log_path)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the sink did not count {count} messages within {RUN_TIMEOUT_SECONDS:.0f} s")
        time.sleep(SINK_POLL_SECONDS)


def _kill_group(process: subprocess.Popen) -> None:
    """Send SIGKILL to the engine's process group and wait until none of its processes is left."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)

    raise TimeoutError(f"processes of group {process.pid} still exist 10 s after SIGKILL")


def _wait_until_still(sink: SmtpSink) -> None:
    """Wait until the sink's counter stops moving, since it counts just after it replies."""
    count = sink.messages()
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.2)
        latest = sink.messages()
        if latest == count:
            return
        count = latest


def _compare(database: Path, campaign_id: int, dump: Path, recipients: int, kills: int, seconds: float) -> CrashRun:
    """Count the faults between the dump of the sink and the campaign's delivery rows."""
    from messagehub.providers.smtp import IN_DOUBT_REPLY

    received = _received(dump)
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT address, status, provider_reply FROM deliveries WHERE campaign_id = ?", (campaign_id,)
        ).fetchall()

    status_of = {address: status for address, status, _ in rows}
    in_doubt = {
        address
        for address, status, reply in rows
        if status == "sent" and (reply.startswith("unconfirmed") or reply == IN_DOUBT_REPLY)
    }
    sent = {address for address, status, _ in rows if status == "sent"}

    return CrashRun(
        recipients=recipients,
        kills=kills,
        received=sum(received.values()),
        duplicates=sum(1 for count in received.values() if count > 1),
        lost=len(sent - in_doubt - received.keys()),
        not_recorded=sum(1 for address in received if status_of.get(address) != "sent"),
        unsent=sum(1 for _, status, _ in rows if status != "sent"),
        unconfirmed=len(in_doubt),
        unconfirmed_received=len(in_doubt & received.keys()),
        seconds=seconds,
    )


def _received(dump: Path) -> Counter[str]:
    """Count the messages of each RCPT TO address in smtp-sink's dump file."""
    received: Counter[str] = Counter()
    with dump.open("rb") as lines:
        for line in lines:
            if line.startswith(b"X-Rcpt-Args: <"):
                received[line[len(b"X-Rcpt-Args: <") :].split(b">", 1)[0].decode()] += 1
    return received


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


def describe(run: CrashRun) -> str:
    """Return the run's counts in one line."""
    return (
        f"{run.kills} SIGKILLs, {run.recipients} recipients, {run.received} messages received: "
        f"{run.duplicates} duplicates, {run.lost} lost, {run.not_recorded} not recorded, {run.unsent} unsent; "
        f"{run.unconfirmed} unconfirmed, of which {run.unconfirmed_received} arrived; {run.seconds:.1f} s"
    )


def main() -> int:
    """Run the check once and print what it found; exit 1 on any fault."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--recipients", type=int, default=30_000, help="recipients of the campaign (default 30000)")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs while it sends (default 3)")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="messagehub-crash-") as directory:
        run = run_crash_check(Path(directory), options.recipients, options.kills)
    print(describe(run))
    return 1 if run.faults else 0


if __name__ == "__main__":
    sys.exit(main())
