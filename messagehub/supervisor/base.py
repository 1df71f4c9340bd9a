"""The contract every supervisor keeps, and the names of campaign units."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

UNIT_PREFIX = "messagehub-campaign@"
UNIT_SUFFIX = ".service"

# systemd's ActiveState values, used by both supervisors.
ACTIVE = "active"
ACTIVATING = "activating"
DEACTIVATING = "deactivating"
INACTIVE = "inactive"
FAILED = "failed"
RELOADING = "reloading"


def unit_name(campaign_id: int) -> str:
    """Return the unit name of a campaign, e.g. ``messagehub-campaign@42.service``."""
    return f"{UNIT_PREFIX}{int(campaign_id)}{UNIT_SUFFIX}"


def campaign_id_of(unit: str) -> int | None:
    """Return the campaign id in a unit name, or None if it is not a campaign unit."""
    if not (unit.startswith(UNIT_PREFIX) and unit.endswith(UNIT_SUFFIX)):
        return None
    instance = unit[len(UNIT_PREFIX) : -len(UNIT_SUFFIX)]
    return int(instance) if instance.isdigit() else None


@dataclass(frozen=True)
class UnitState:
    """State of one campaign's process as a supervisor reports it, in systemd's terms.

    ``active_state`` and ``sub_state`` carry systemd's ActiveState and
    SubState (the plain-process supervisor maps its view onto them).
    ``result`` is systemd's Result ("success", "exit-code", "signal",
    "watchdog", ...); ``exit_status`` is ExecMainStatus.
    """

    campaign_id: int
    unit: str
    active_state: str
    sub_state: str
    main_pid: int | None = None
    restarts: int = 0
    exit_status: int | None = None
    result: str | None = None
    memory_bytes: int | None = None
    cpu_seconds: float | None = None
    started_at: datetime | None = None
    status_text: str = ""

    @property
    def ending(self) -> str:
        """Return how the main process ended, in words: "killed by signal 9 (SIGKILL)" or "exit-code, exit status 2"."""
        result = self.result or self.sub_state
        if self.exit_status is None:
            return result
        if result == "signal":
            # For a process killed by a signal, systemd's ExecMainStatus is the signal's number.
            try:
                name = signal.Signals(self.exit_status).name
            except ValueError:
                name = "unknown"
            return f"killed by signal {self.exit_status} ({name})"
        return f"{result}, exit status {self.exit_status}"

    @property
    def is_running(self) -> bool:
        """Tell whether the campaign's process is up or about to be (restarting counts)."""
        return self.active_state in (ACTIVE, ACTIVATING, RELOADING, DEACTIVATING) or self.sub_state == "auto-restart"


class SupervisorError(Exception):
    """A supervisor operation failed; the message is fit to show a user."""


class NotAllowed(SupervisorError):
    """The web app's user may not do this to the unit (polkit or D-Bus refused)."""


class UnitNotFound(SupervisorError):
    """No unit or process is known for the campaign."""


class SupervisorUnavailable(SupervisorError):
    """The supervisor cannot be reached (no systemd manager on the bus)."""


class Supervisor(Protocol):
    """Starts, stops and watches campaign processes."""

    name: str  # "systemd" or "process", shown in the UI

    def launch(self, campaign_id: int) -> None:
        """Start the campaign's process; a process already running is left alone."""

    def stop(self, campaign_id: int) -> None:
        """Ask the campaign's process to stop gracefully (SIGTERM)."""

    def restart(self, campaign_id: int) -> None:
        """Stop the campaign's process if it runs, then start it again."""

    def state(self, campaign_id: int) -> UnitState | None:
        """Return the state of the campaign's process, or None if none is known."""

    def states(self) -> list[UnitState]:
        """Return the state of every campaign unit the supervisor can see."""

    def journal(self, campaign_id: int, lines: int = 50) -> list[str]:
        """Return the last ``lines`` log lines of the campaign's process, oldest first."""
