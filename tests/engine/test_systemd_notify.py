"""sd_notify from a campaign process: readiness, status text, watchdog pings, and none when hung."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from messagehub.delivery_settings import save_smtp_settings
from messagehub.engine.store import Progress
from messagehub.engine.systemd_notify import Notifier, notify_address, status_text, watchdog_interval
from messagehub.engine.workers import WORKER_SILENCE
from messagehub.extensions import db
from messagehub.providers.smtp import SmtpSettings
from tests import factories
from tests.smtpserver import SilentServer


@dataclass
class Datagram:
    """One notification as the service manager would receive it."""

    at: float
    assignments: list[str]


class NotifyListener:
    """The receiving end of $NOTIFY_SOCKET, as systemd binds it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(address)
        self.received: list[Datagram] = []

    def collect(self, seconds: float) -> list[Datagram]:
        """Receive datagrams for ``seconds``; return all received so far."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.socket.settimeout(remaining)
            try:
                data = self.socket.recv(4096)
            except TimeoutError:
                break
            self.received.append(Datagram(time.monotonic(), data.decode().split("\n")))
        return self.received

    def wait_for(self, assignment: str, timeout: float = 20.0) -> Datagram:
        """Receive until a datagram carries ``assignment``; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for datagram in self.received:
                if assignment in datagram.assignments:
                    return datagram
            self.collect(0.05)
        pytest.fail(f"no {assignment} within {timeout} s; received {self.assignments()}")

    def collect_until_exit(self, process: subprocess.Popen, timeout: float) -> None:
        """Receive while ``process`` runs, so each datagram's time is when it was sent."""
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            self.collect(0.05)
        self.collect(0.1)

    def assignments(self) -> list[str]:
        return [line for datagram in self.received for line in datagram.assignments]

    def times_of(self, assignment: str) -> list[float]:
        return [d.at for d in self.received if assignment in d.assignments]

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    """Bind a notification socket at a short path (socket paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="mh-notify-") as directory:
        listener = NotifyListener(str(Path(directory) / "notify"))
        yield listener
        listener.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_address_of_path():
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"


def test_address_of_abstract_socket():
    assert notify_address("@/org/freedesktop/systemd1/notify/123") == "\0/org/freedesktop/systemd1/notify/123"


def test_address_unset_or_unsupported():
    assert notify_address(None) is None
    assert notify_address("") is None
    assert notify_address("vsock:2:1234") is None


def test_watchdog_interval_from_usec():
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}, pid=7) == 60.0


def test_watchdog_interval_for_this_pid():
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, pid=7) == 2.0


def test_watchdog_interval_other_pid():
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "8"}, pid=7) is None


def test_watchdog_interval_unset_or_invalid():
    assert watchdog_interval({}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid=7) is None


def test_status_text():
    progress = Progress(total=9930, queued=6727, sent=1200, failed=3)

    assert status_text(progress) == "sent 1200 of 9930, 3 failed"


def test_notifier_without_socket_is_noop():
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "1000000"})

    assert notifier.enabled is False
    assert notifier.send("READY=1") is False
    assert notifier.ping_interval is None
    notifier.ready()
    notifier.heartbeat()
    notifier.stopping()


def test_notifier_ready_once(listener):
    with closing(Notifier.from_environment({"NOTIFY_SOCKET": listener.address})) as notifier:
        notifier.ready()
        notifier.ready()
    listener.collect(0.2)

    assert listener.assignments() == ["READY=1"]


def test_notifier_abstract_socket():
    name = f"messagehub-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifyListener("\0" + name)
    try:
        with closing(Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})) as notifier:
            notifier.stopping()
        listener.collect(0.2)
    finally:
        listener.close()

    assert listener.assignments() == ["STOPPING=1"]


def test_notifier_status_one_line(listener):
    with closing(Notifier(listener.address)) as notifier:
        notifier.status("paused:\nprovider unavailable")
    listener.collect(0.2)

    assert listener.assignments() == ["STATUS=paused: provider unavailable"]


def test_progress_status_rate_limited(listener):
    clock = FakeClock()
    with closing(Notifier(listener.address, clock=clock)) as notifier:
        notifier.progress(Progress(total=10, sent=1))
        clock.now += 0.2
        notifier.progress(Progress(total=10, sent=2))
        clock.now += 0.3
        notifier.progress(Progress(total=10, sent=3, failed=1))
    listener.collect(0.2)

    assert listener.assignments() == ["STATUS=sent 1 of 10, 0 failed", "STATUS=sent 3 of 10, 1 failed"]


def test_heartbeat_pings_at_half_timeout(listener):
    clock = FakeClock()
    with closing(Notifier(listener.address, watchdog_timeout=10.0, clock=clock)) as notifier:
        for _ in range(25):
            notifier.heartbeat()
            clock.now += 1.0
    listener.collect(0.2)

    # Heartbeats at 0, 1, ..., 24 s: a ping at 0 s and every 5 s after it.
    assert listener.assignments() == ["WATCHDOG=1"] * 5


def test_heartbeat_without_watchdog(listener):
    with closing(Notifier(listener.address, watchdog_timeout=None)) as notifier:
        notifier.heartbeat()
    listener.collect(0.2)

    assert listener.assignments() == []


def test_send_error_does_not_raise(tmp_path):
    with closing(Notifier(str(tmp_path / "nobody-listens"))) as notifier:
        first = notifier.send("READY=1")
        second = notifier.send("READY=1")

    assert first is False
    assert second is False


# The campaign process itself, as systemd would run it.

WATCHDOG_TIMEOUT = 3.0


def engine_environment(instance_path: Path, notify_socket: str) -> dict[str, str]:
    env = {
        **os.environ,
        "MESSAGEHUB_INSTANCE_PATH": str(instance_path),
        "NOTIFY_SOCKET": notify_socket,
        "WATCHDOG_USEC": str(int(WATCHDOG_TIMEOUT * 1_000_000)),
    }
    env.pop("WATCHDOG_PID", None)
    env.pop("JOURNAL_STREAM", None)
    return env


def start_engine(instance_path: Path, campaign_id: int, notify_socket: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "messagehub.engine", str(campaign_id)],
        env=engine_environment(instance_path, notify_socket),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def write_instance_config(app, instance_path: Path) -> None:
    keys = ("SQLALCHEMY_DATABASE_URI", "RETRY_BASE_SECONDS", "RETRY_MAX_SECONDS")
    lines = [f"{key} = {app.config[key]!r}" for key in keys]
    (instance_path / "config.py").write_text("\n".join(lines) + "\n")


def use_silent_server(app, port: int) -> None:
    """Point SMTP at a server that never greets, with a timeout far longer than the test looks."""
    with app.app_context():
        settings = SmtpSettings(host="127.0.0.1", port=port, security="none", timeout=60.0)
        save_smtp_settings(db.session, app.config["SECRET_KEY"], settings, keep_password=False)
        db.session.commit()


def contacts(count: int) -> list[dict]:
    return [{"email": f"person{i}@example.com", "first_name": f"Person{i}"} for i in range(count)]


@pytest.fixture
def slow_retry_app(instance_path):
    """The app with retries slow enough that the run waits a few seconds for deferred deliveries."""
    from tests.conftest import make_app

    app = make_app(instance_path, RETRY_BASE_SECONDS=1.5, RETRY_MAX_SECONDS=3.0)
    yield app
    with app.app_context():
        db.engine.dispose()


def stop_process(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.kill()
    output, _ = process.communicate(timeout=10)
    return output.decode()


def test_engine_pings_while_waiting(slow_retry_app, smtp_server, instance_path, listener):
    app = slow_retry_app
    list_id = factories.make_list(app, contacts(5))
    smtp_server.defer("person2@example.com", times=2)
    factories.use_smtp_server(app, smtp_server.port)
    campaign_id = factories.make_campaign(app, list_id)
    write_instance_config(app, instance_path)

    process = start_engine(instance_path, campaign_id, listener.address)
    try:
        listener.collect_until_exit(process, timeout=30)
    finally:
        output = stop_process(process)

    assert process.returncode == 0, output
    assert "READY=1" in listener.assignments()
    assert "STATUS=sent 0 of 5, 0 failed" in listener.assignments()
    assert "STATUS=finished: sent 5 of 5, 0 failed" in listener.assignments()
    assert listener.assignments()[-1] == "STOPPING=1"
    pings = listener.times_of("WATCHDOG=1")
    gaps = [later - earlier for earlier, later in zip(pings, pings[1:])]
    # Two waits of about 1.5 s and 3 s: pings every half timeout, never a full timeout apart.
    assert len(pings) >= 3
    assert min(gaps) >= WATCHDOG_TIMEOUT / 2 - 0.05
    assert max(gaps) < WATCHDOG_TIMEOUT


def test_engine_no_pings_when_hung(app, instance_path, listener):
    list_id = factories.make_list(app, contacts(3))
    campaign_id = factories.make_campaign(app, list_id)
    write_instance_config(app, instance_path)

    with SilentServer() as server:
        use_silent_server(app, server.port)
        process = start_engine(instance_path, campaign_id, listener.address)
        try:
            ready = listener.wait_for("READY=1")
            listener.collect(WATCHDOG_TIMEOUT + 1.0)
        finally:
            output = stop_process(process)

    pings = listener.times_of("WATCHDOG=1")
    late_pings = [at for at in pings if at > ready.at + WORKER_SILENCE + 0.5]
    # The send loops pinged on their way to the first message, then the
    # senders blocked waiting for a greeting; the main process stops pinging
    # once a worker is silent for WORKER_SILENCE: systemd would kill the unit.
    assert len(pings) >= 1, output
    assert late_pings == [], output


def test_engine_stopping_on_sigterm(app, instance_path, listener):
    list_id = factories.make_list(app, contacts(3))
    campaign_id = factories.make_campaign(app, list_id)
    write_instance_config(app, instance_path)

    with SilentServer() as server:
        use_silent_server(app, server.port)
        process = start_engine(instance_path, campaign_id, listener.address)
        try:
            listener.wait_for("READY=1")
            process.send_signal(signal.SIGTERM)
            stopping = listener.wait_for("STOPPING=1", timeout=5.0)
        finally:
            output = stop_process(process)

    assert stopping.assignments == ["STOPPING=1"], output
    assert "stopping after the message in flight" in output
