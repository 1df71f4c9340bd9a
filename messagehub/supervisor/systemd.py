"""Campaign units under systemd: every D-Bus call MessageHub makes goes through this module."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from typing import Any

from messagehub.supervisor.base import (
    UNIT_PREFIX,
    NotAllowed,
    SupervisorError,
    SupervisorUnavailable,
    UnitNotFound,
    UnitState,
    campaign_id_of,
    unit_name,
)
from messagehub.supervisor.units import DBUS_SIGNATURES, TEMPLATE_NAME, CampaignUnitPaths, transient_properties

log = logging.getLogger("messagehub.supervisor")

JOB_MODE = b"replace"

# systemd reports "no value" for MemoryCurrent and CPUUsageNSec as the maximum uint64.
UNSET_UINT64 = (1 << 64) - 1

# D-Bus error class names (pystemd.dbusexc) grouped by what they mean to MessageHub.
_REFUSED = {"DBusAccessDeniedError", "DBusInteractiveAuthorizationRequiredError", "DBusAuthFailedError"}
_MISSING = {"DBusNoSuchUnitError"}
_UNREACHABLE = {
    "DBusServiceUnknownError", "DBusNameHasNoOwnerError", "DBusNoReplyError", "DBusNoServerError",
    "DBusDisconnectedError", "DBusConnectionRefusedError", "DBusTimeoutError", "DBusTimedOutError",
}


def as_bytes(value: str | bytes) -> bytes:
    """Convert a name for D-Bus; pystemd takes and returns bytes."""
    return value if isinstance(value, bytes) else value.encode()


def as_text(value: Any) -> str:
    """Convert a D-Bus string value back to str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _open_pystemd_bus(user_mode: bool) -> Any:
    from pystemd.dbuslib import DBus

    return DBus(user_mode=user_mode)


def _pystemd_manager(bus: Any) -> Any:
    from pystemd.systemd1 import Manager

    return Manager(bus=bus, _autoload=True)


def _pystemd_unit(name: bytes, bus: Any) -> Any:
    from pystemd.systemd1 import Unit

    return Unit(name, bus=bus, _autoload=True)


def _journal_reader() -> Any:
    from systemd import journal

    return journal.Reader()


class SystemdSupervisor:
    """Runs each campaign as ``messagehub-campaign@<id>.service`` under a systemd manager."""

    name = "systemd"

    def __init__(
        self,
        user_mode: bool = False,
        paths: CampaignUnitPaths | None = None,
        open_bus: Callable[[bool], Any] = _open_pystemd_bus,
        manager_factory: Callable[[Any], Any] = _pystemd_manager,
        unit_factory: Callable[[bytes, Any], Any] = _pystemd_unit,
        journal_reader: Callable[[], Any] = _journal_reader,
        euid: Callable[[], int] = os.geteuid,
    ) -> None:
        self.user_mode = user_mode
        self.paths = paths or CampaignUnitPaths()
        self.reason = ""
        self._open_bus = open_bus
        self._manager_factory = manager_factory
        self._unit_factory = unit_factory
        self._journal_reader = journal_reader
        self._euid = euid

    def launch(self, campaign_id: int) -> None:
        """Start the campaign's unit by name, or as a transient unit when no template is installed."""
        unit = unit_name(campaign_id)
        with self._manager(f"starting campaign {campaign_id}", unit) as manager:
            if self._template_installed(manager):
                manager.Manager.StartUnit(as_bytes(unit), JOB_MODE)
                log.info("started campaign %s (unit %s)", campaign_id, unit)
                return

            self._check_transient_allowed(unit)
            if self._is_loaded_and_running(manager, unit):
                return

            # A transient unit of the same name that ended is still loaded and
            # must be cleared, or StartTransientUnit fails with UnitExists.
            self._reset_if_loaded(manager, unit)
            properties = transient_properties(self.paths, campaign_id, user_mode=self.user_mode)
            manager.Manager.StartTransientUnit(as_bytes(unit), JOB_MODE, _with_signatures(properties))
            log.info("started campaign %s as a transient unit (unit %s)", campaign_id, unit)

    def stop(self, campaign_id: int) -> None:
        """Ask systemd to stop the campaign's unit, which sends the engine SIGTERM."""
        unit = unit_name(campaign_id)
        with self._manager(f"stopping campaign {campaign_id}", unit) as manager:
            manager.Manager.StopUnit(as_bytes(unit), JOB_MODE)
        log.info("stopped campaign %s (unit %s)", campaign_id, unit)

    def restart(self, campaign_id: int) -> None:
        """Restart the campaign's unit, starting it if it is not loaded."""
        unit = unit_name(campaign_id)
        try:
            with self._manager(f"restarting campaign {campaign_id}", unit) as manager:
                manager.Manager.RestartUnit(as_bytes(unit), JOB_MODE)
        except UnitNotFound:
            self.launch(campaign_id)
            return

        log.info("restarted campaign %s (unit %s)", campaign_id, unit)

    def state(self, campaign_id: int) -> UnitState | None:
        """Read the unit's ActiveState, SubState, MainPID and the rest; None if it is not loaded."""
        unit = unit_name(campaign_id)
        with self._bus(f"reading the state of campaign {campaign_id}", unit) as bus:
            manager = self._manager_factory(bus)
            if not self._loaded(manager, unit):
                return None
            return self._read_state(bus, campaign_id, unit)

    def states(self) -> list[UnitState]:
        """Read the state of every loaded campaign unit."""
        with self._bus("listing campaign units", UNIT_PREFIX + "*") as bus:
            manager = self._manager_factory(bus)
            rows = manager.Manager.ListUnitsByPatterns([], [as_bytes(UNIT_PREFIX + "*")])
            states = []
            for row in rows:
                unit = as_text(row[0])
                campaign_id = campaign_id_of(unit)
                if campaign_id is not None:
                    states.append(self._read_state(bus, campaign_id, unit))

        return sorted(states, key=lambda state: state.campaign_id)

    def journal(self, campaign_id: int, lines: int = 50) -> list[str]:
        """Return the unit's last ``lines`` journal lines, oldest first, as "date time message"."""
        unit = unit_name(campaign_id)
        reader = self._journal_reader()
        try:
            field = "_SYSTEMD_USER_UNIT" if self.user_mode else "_SYSTEMD_UNIT"
            reader.add_match(**{field: unit})
            reader.seek_tail()
            entries = []
            while len(entries) < lines:
                entry = reader.get_previous()
                if not entry:
                    break
                entries.append(entry)
        finally:
            reader.close()

        return [_journal_line(entry) for entry in reversed(entries)]

    # Steps shared by the operations above.

    @contextmanager
    def _bus(self, action: str, unit: str) -> Iterator[Any]:
        """Open the bus for one operation and turn D-Bus errors into MessageHub's exceptions."""
        with ExitStack() as stack:
            try:
                bus = stack.enter_context(self._open_bus(self.user_mode))
            except Exception as e:
                log.error("error %s (unit %s): cannot connect to the bus: %s", action, unit, e)
                message = f"{self._manager_label()} is not reachable, so campaigns cannot be controlled."
                raise SupervisorUnavailable(message) from e

            try:
                yield bus
            except SupervisorError:
                raise
            except Exception as e:
                translated = translate_error(e, action, unit, self._manager_label())
                if translated is None:
                    raise
                log.error("error %s (unit %s): %s", action, unit, e)
                raise translated from e

    @contextmanager
    def _manager(self, action: str, unit: str) -> Iterator[Any]:
        with self._bus(action, unit) as bus:
            yield self._manager_factory(bus)

    def _manager_label(self) -> str:
        return "the systemd user manager" if self.user_mode else "the systemd system manager"

    def _template_installed(self, manager: Any) -> bool:
        try:
            state = as_text(manager.Manager.GetUnitFileState(as_bytes(TEMPLATE_NAME)))
        except Exception as e:
            if _error_class(e) in ("DBusFileNotFoundError", "DBusNoSuchUnitError"):
                return False
            raise

        return state not in ("masked", "masked-runtime", "bad")

    def _check_transient_allowed(self, unit: str) -> None:
        # On systemd 252 polkit cannot scope StartTransientUnit to unit names,
        # so a web user that is not root only gets the installed template.
        if self.user_mode or self._euid() == 0:
            return
        raise NotAllowed(
            f"{TEMPLATE_NAME} is not installed, and the web app's user may not create {unit} itself: "
            "install the unit file and the polkit rule (see the deployment docs)."
        )

    def _loaded(self, manager: Any, unit: str) -> bool:
        try:
            manager.Manager.GetUnit(as_bytes(unit))
        except Exception as e:
            if _error_class(e) in _MISSING:
                return False
            raise

        return True

    def _is_loaded_and_running(self, manager: Any, unit: str) -> bool:
        if not self._loaded(manager, unit):
            return False
        rows = manager.Manager.ListUnitsByPatterns([], [as_bytes(unit)])
        return any(as_text(row[3]) in ("active", "activating", "reloading", "deactivating") for row in rows)

    def _reset_if_loaded(self, manager: Any, unit: str) -> None:
        if self._loaded(manager, unit):
            manager.Manager.ResetFailedUnit(as_bytes(unit))

    def _read_state(self, bus: Any, campaign_id: int, unit: str) -> UnitState:
        """Read one loaded unit's properties into a UnitState."""
        proxy = self._unit_factory(as_bytes(unit), bus)
        main_pid = int(proxy.Service.MainPID)
        exit_status = int(proxy.Service.ExecMainStatus)
        entered = int(proxy.Unit.ActiveEnterTimestamp)
        return UnitState(
            campaign_id=campaign_id,
            unit=unit,
            active_state=as_text(proxy.Unit.ActiveState),
            sub_state=as_text(proxy.Unit.SubState),
            main_pid=main_pid or None,
            restarts=int(proxy.Service.NRestarts),
            exit_status=exit_status if int(proxy.Service.ExecMainExitTimestamp) else None,
            result=as_text(proxy.Service.Result),
            memory_bytes=_optional_uint64(proxy.Service.MemoryCurrent),
            cpu_seconds=_nanoseconds_to_seconds(proxy.Service.CPUUsageNSec),
            started_at=datetime.fromtimestamp(entered / 1_000_000, timezone.utc) if entered else None,
            status_text=as_text(proxy.Service.StatusText),
        )


def translate_error(error: Exception, action: str, unit: str, manager_label: str) -> SupervisorError | None:
    """Turn a pystemd D-Bus error into a MessageHub exception with a plain message, or None."""
    name = _error_class(error)
    text = str(error)
    if name in _REFUSED or "Interactive authentication required" in text:
        return NotAllowed(
            f"The web app's user may not control {unit} ({action}): install the polkit rule, see the deployment docs."
        )
    if name in _MISSING:
        return UnitNotFound(f"{unit} is not loaded, so there is no campaign process to act on.")
    if name in _UNREACHABLE:
        return SupervisorUnavailable(f"{manager_label} timed out or did not reply while {action}; try again.")
    if name.startswith("DBus"):
        return SupervisorError(f"systemd rejected {action} ({unit}): {getattr(error, 'err_message', '') or text}")

    return None


def _error_class(error: Exception) -> str:
    # pystemd raises one class per D-Bus error name and keeps the name itself
    # only on its base class, so the class name is what identifies the error.
    return type(error).__name__


def _with_signatures(properties: list[tuple[bytes, Any]]) -> Any:
    """Wrap properties so pystemd uses our signatures and keeps repeated names.

    pystemd's StartTransientUnit reads ``properties.items()`` and looks each
    name up in its own signature table; its ``_custom`` entry takes a
    (name, signature, value) triple instead.
    """
    return _PropertyList((b"_custom", (name, DBUS_SIGNATURES[name], value)) for name, value in properties)


class _PropertyList(list):
    def items(self) -> list:
        return list(self)


def _optional_uint64(value: Any) -> int | None:
    value = int(value)
    return None if value == UNSET_UINT64 else value


def _nanoseconds_to_seconds(value: Any) -> float | None:
    nanoseconds = _optional_uint64(value)
    return None if nanoseconds is None else nanoseconds / 1e9


def _journal_line(entry: dict) -> str:
    timestamp = entry.get("__REALTIME_TIMESTAMP")
    when = timestamp.strftime("%Y-%m-%d %H:%M:%S") if isinstance(timestamp, datetime) else "????-??-?? ??:??:??"
    message = entry.get("MESSAGE", "")
    return f"{when} {as_text(message)}"
