"""The sd_notify protocol in plain Python: readiness, status text and watchdog pings.

systemd passes a datagram socket in ``$NOTIFY_SOCKET`` to a ``Type=notify``
service; each datagram is newline-separated ``KEY=value`` assignments
(sd_notify(3)). Outside systemd the variable is unset and every call here
does nothing, so the engine runs the same in a terminal.

Watchdog pings come only from ``heartbeat()``, which the send loop calls
after each message and, while it waits, at least once a second. A sender
blocked forever in a socket call stops the heartbeats, so the pings stop and
systemd kills the unit after ``WatchdogSec``. A free-running thread would keep
pinging for a hung process and defeat the watchdog.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Callable

from messagehub.engine.store import Progress

log = logging.getLogger("messagehub.processor")

# systemd shows the STATUS= text in `systemctl status`; a few updates a
# second are plenty and keep a fast campaign from flooding the manager.
STATUS_INTERVAL = 0.5


def notify_address(value: str | None) -> str | None:
    """Return the socket address for a ``$NOTIFY_SOCKET`` value, or None when unusable."""
    if not value:
        return None
    if value.startswith("@"):
        # A leading '@' names a socket in the abstract namespace.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value

    # Newer systemd versions also pass vsock: addresses (to virtual machines); campaign units never get one.
    log.warning("ignored NOTIFY_SOCKET %r: only file and abstract socket addresses are supported", value)
    return None


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Return the watchdog timeout in seconds from ``$WATCHDOG_USEC``, or None when off or meant for another process."""
    environ = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid

    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(pid):
        return None

    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None

    return usec / 1_000_000 if usec > 0 else None


def status_text(progress: Progress) -> str:
    """Return the one-line STATUS= text for a campaign's progress."""
    return f"sent {progress.sent} of {progress.total}, {progress.failed} failed"


class Notifier:
    """Sends sd_notify messages to the service manager; a no-op without a socket.

    Not thread-safe: the send loop's thread (and signal handlers, which run
    in the main thread) are its only callers.
    """

    def __init__(
        self,
        address: str | None,
        watchdog_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.watchdog_timeout = watchdog_timeout if address else None
        self.clock = clock
        self._socket: socket.socket | None = None
        self._last_ping: float | None = None
        self._last_status: float | None = None
        self._send_failed = False
        self._ready = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Build a notifier from ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``."""
        environ = os.environ if environ is None else environ
        return cls(notify_address(environ.get("NOTIFY_SOCKET")), watchdog_interval(environ))

    @property
    def enabled(self) -> bool:
        """Whether a service manager is listening."""
        return self.address is not None

    @property
    def ping_interval(self) -> float | None:
        """Seconds between watchdog pings: half the timeout, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_timeout / 2 if self.watchdog_timeout else None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram; return whether it was sent."""
        if self.address is None:
            return False

        try:
            self._connection().sendto("\n".join(assignments).encode(), self.address)
        except OSError as e:
            self._log_send_error(e)
            return False

        return True

    def ready(self) -> None:
        """Tell systemd that start-up is over; later calls do nothing."""
        if not self._ready:
            self._ready = self.send("READY=1")

    def status(self, text: str) -> None:
        """Set the STATUS= text shown by ``systemctl status``."""
        # STATUS is one line by protocol; a newline would start a new assignment.
        self.send("STATUS=" + " ".join(text.splitlines()))
        self._last_status = self.clock()

    def progress(self, progress: Progress) -> None:
        """Report progress as STATUS= text, at most once every ``STATUS_INTERVAL`` seconds."""
        now = self.clock()
        if self._last_status is not None and now - self._last_status < STATUS_INTERVAL:
            return
        self.status(status_text(progress))

    def stopping(self) -> None:
        """Tell systemd that the service is shutting down."""
        self.send("STOPPING=1")

    def heartbeat(self) -> None:
        """Record progress of the send loop, pinging the watchdog once per ``ping_interval``."""
        interval = self.ping_interval
        if interval is None:
            return

        now = self.clock()
        if self._last_ping is not None and now - self._last_ping < interval:
            return
        if self.send("WATCHDOG=1"):
            self._last_ping = now

    def close(self) -> None:
        """Close the socket; a later send opens a new one."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _connection(self) -> socket.socket:
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        return self._socket

    def _log_send_error(self, error: OSError) -> None:
        # The manager going away must not stop a campaign, and a log line per
        # message would bury everything else: warn once, then stay quiet.
        if not self._send_failed:
            log.warning("error sending notification to systemd at %r: %s", self.address, error)
        self._send_failed = True
