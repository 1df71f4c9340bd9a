"""Measure launch latency: from the web app's launch request to the campaign process's READY=1 and first message.

Each run launches a fresh draft campaign in the background through the real
launch form (``POST /campaigns/<id>/launch``, CSRF token included) of the web
app, served by werkzeug on 127.0.0.1 with the plain-process supervisor. Three
moments are taken on one monotonic clock, counted from the request's start:

  response       the web app's response arrived (303 to the monitor page)
  READY=1        the engine reported readiness over the notify socket
  first message  the first message of the campaign reached the SMTP server

Without systemd nobody listens for sd_notify messages, so this script plays
systemd's part: it binds a Unix datagram socket and passes its path to the web
server as ``$NOTIFY_SOCKET``, which the supervisor hands on to every engine it
starts. The engine sends READY=1 on its first progress report, after it has
marked the run started and settled deliveries left in doubt, so the time to
READY=1 is what ``Type=notify`` makes systemd wait for. The socket reads the
sender's pid from SCM_CREDENTIALS, as systemd does, so a message is only
counted for the engine of the campaign just launched.

Before each launch the script loads the campaign page and, as the page does
on load in a browser, its audience check panel (``GET /campaigns/<id>/check``),
untimed. A passing check is stored with the campaign, and the launch skips
the check while the campaign and its contacts are unchanged. ``--cold``
leaves the panel out, as a script posting the form directly would, so the
launch checks every recipient itself.

The SMTP server is tests.smtpserver.SmtpTestServer (aiosmtpd) in this process,
because it wakes a waiting thread as each message arrives. Each run stops the
campaign once its first message is in.

    .venv/bin/python bench/launch_latency.py --recipients 10000 --runs 5
    .venv/bin/python bench/launch_latency.py --recipients 10000 --runs 5 --cold
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from instances import (
    create_instance,
    database_session,
    form_token,
    insert_contacts,
    insert_campaigns,
    login,
    post_launch,
    stop_campaign,
    stop_campaigns,
    use_smtp_server,
    WebServer,
)
from smtp_throughput import REPO

sys.path.insert(0, str(REPO))

from tests.smtpserver import SmtpTestServer  # noqa: E402 - importable once the checkout is on the path

# struct ucred of SCM_CREDENTIALS (unix(7)): pid, uid and gid, 32 bits each.
UCRED = struct.Struct("iII")

# Seconds to wait for READY=1 and for the first message of one launch.
EVENT_TIMEOUT = 60.0


@dataclass(frozen=True)
class LaunchTimes:
    """Seconds from the start of the launch request to each moment of one launch."""

    response: float
    ready: float
    first_message: float


@dataclass(frozen=True)
class Notification:
    """One datagram on the notify socket: when it arrived, who sent it, and its assignments."""

    arrived_at: float
    pid: int
    assignments: tuple[str, ...]


class NotifySocket:
    """A Unix datagram socket in systemd's role: it receives sd_notify messages and notes the sender's pid.

    A thread drains the socket for as long as it is open, because the
    engines send with a blocking ``sendto``, which stalls while the receive
    queue is full.
    """

    def __init__(self, path: Path):
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._arrived = threading.Condition()
        self._notifications: list[Notification] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-socket", daemon=True)

    def __enter__(self) -> NotifySocket:
        self._socket.bind(str(self.path))
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._socket.settimeout(0.2)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closing.set()
        self._thread.join(timeout=5)
        self._socket.close()

    def _receive(self) -> None:
        while not self._closing.is_set():
            try:
                data, ancillary, _, _ = self._socket.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
            except TimeoutError:
                continue

            arrived_at = time.monotonic()
            notification = Notification(arrived_at, sender_pid(ancillary), tuple(data.decode(errors="replace").splitlines()))
            with self._arrived:
                self._notifications.append(notification)
                self._arrived.notify_all()

    def wait_for(self, pid: int, assignment: str, timeout: float) -> float:
        """Return the arrival time of the first message from ``pid`` that contains ``assignment``, waiting for it."""

        def arrival() -> float | None:
            for notification in self._notifications:
                if notification.pid == pid and assignment in notification.assignments:
                    return notification.arrived_at
            return None

        with self._arrived:
            if not self._arrived.wait_for(lambda: arrival() is not None, timeout):
                raise TimeoutError(f"no {assignment} from pid {pid} on {self.path} within {timeout:.0f} s")
            return arrival()


def sender_pid(ancillary: list[tuple[int, int, bytes]]) -> int:
    """Return the sender's pid from the SCM_CREDENTIALS item of a received datagram, or 0 if there is none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return UCRED.unpack(data[: UCRED.size])[0]

    return 0


def measure_launches(directory: Path, recipients: int, runs: int, cold: bool = False) -> list[LaunchTimes]:
    """Launch ``runs`` campaigns of ``recipients`` one after the other and time each launch.

    With ``cold`` the audience check panel is not loaded before the launch.
    """
    with SmtpTestServer() as smtp, NotifySocket(directory / "notify.sock") as notify:
        instance_path = create_instance(directory, {"SUPERVISOR": "process"})
        with database_session(instance_path) as session:
            list_id = insert_contacts(session, recipients)
            campaign_ids = insert_campaigns(session, list_id, runs)
            use_smtp_server(session, smtp.port)

        with WebServer(instance_path, {"NOTIFY_SOCKET": str(notify.path)}) as server:
            try:
                http = login(server.url)
                return [time_launch(http, server, notify, smtp, campaign_id, cold) for campaign_id in campaign_ids]
            finally:
                stop_campaigns(instance_path)


def time_launch(
    http, server: WebServer, notify: NotifySocket, smtp: SmtpTestServer, campaign_id: int, cold: bool = False
) -> LaunchTimes:
    """Open the campaign page, launch the campaign, wait for READY=1 and its first message, then stop it."""
    from messagehub.supervisor.process import ProcessSupervisor

    token = form_token(http, f"{server.url}/campaigns/{campaign_id}")
    if not cold:
        load_check_panel(http, server, campaign_id)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first_message = next_arrival(pool, smtp)

        started = time.monotonic()
        post_launch(http, server.url, campaign_id, token)
        responded = time.monotonic()

        supervisor = ProcessSupervisor(server.instance_path)
        ready = notify.wait_for(engine_pid(supervisor, campaign_id), "READY=1", EVENT_TIMEOUT)
        arrived = first_message.result(EVENT_TIMEOUT)

    stop_campaign(supervisor, campaign_id)
    return LaunchTimes(responded - started, ready - started, arrived - started)


def load_check_panel(http, server: WebServer, campaign_id: int) -> None:
    """Request the campaign page's audience check panel as htmx does on load, and raise unless it passes."""
    response = http.get(
        f"{server.url}/campaigns/{campaign_id}/check", headers={"HX-Request": "true"}, timeout=EVENT_TIMEOUT * 10
    )
    response.raise_for_status()
    if 'class="flash error"' in response.text:
        raise RuntimeError(f"the audience check of campaign {campaign_id} failed: {response.text[:500]}")


def engine_pid(supervisor, campaign_id: int) -> int:
    """Return the pid of the campaign's engine, or raise with its log when it no longer runs."""
    state = supervisor.state(campaign_id)
    if state is None or state.main_pid is None:
        log = "\n".join(supervisor.journal(campaign_id, 20))
        raise RuntimeError(f"the engine of campaign {campaign_id} is not running after its launch: {log}")

    return state.main_pid


def next_arrival(pool: ThreadPoolExecutor, smtp: SmtpTestServer) -> Future:
    """Start waiting for the SMTP server's next message; the future returns its arrival time."""
    expected = len(smtp.messages) + 1

    def wait() -> float:
        smtp.wait_for_messages(expected, EVENT_TIMEOUT)
        return time.monotonic()

    return pool.submit(wait)


def parse_arguments() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=10_000, help="recipients of each campaign (default 10000)")
    parser.add_argument("--runs", type=int, default=5, help="launches, one campaign each (default 5)")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="launch without loading the page's audience check first, so that the launch checks every recipient itself",
    )
    return parser.parse_args()


def main() -> None:
    """Time the launches and print each one and the medians."""
    options = parse_arguments()
    with tempfile.TemporaryDirectory(prefix="messagehub-bench-") as directory:
        launches = measure_launches(Path(directory), options.recipients, options.runs, options.cold)

    for times in launches:
        print(
            f"response {times.response * 1000:6.0f} ms   READY=1 {times.ready * 1000:6.0f} ms   "
            f"first message {times.first_message * 1000:6.0f} ms"
        )
    for name in ("response", "ready", "first_message"):
        print(f"median {name}: {statistics.median(getattr(t, name) for t in launches) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
