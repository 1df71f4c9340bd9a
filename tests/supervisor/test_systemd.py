"""SystemdSupervisor against a fake of pystemd's bus, Manager and Unit objects."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from pystemd import dbusexc

from messagehub.supervisor.base import NotAllowed, SupervisorUnavailable, UnitNotFound
from messagehub.supervisor.systemd import UNSET_UINT64, SystemdSupervisor
from messagehub.supervisor.units import DBUS_SIGNATURES

UNIT = b"messagehub-campaign@42.service"


class FakeBus:
    def __init__(self, world: "FakeSystemd", user_mode: bool):
        self.world = world
        self.user_mode = user_mode

    def __enter__(self):
        if self.world.bus_error:
            raise self.world.bus_error
        self.world.opened.append(self.user_mode)
        return self

    def __exit__(self, *errors):
        self.world.closed += 1


class FakeManagerInterface:
    def __init__(self, world: "FakeSystemd"):
        self.world = world

    def _call(self, method: str, *args):
        self.world.calls.append((method, *args))
        error = self.world.errors.get(method)
        if error:
            raise error

    def GetUnitFileState(self, name):
        self._call("GetUnitFileState", name)
        return self.world.template_state

    def GetUnit(self, name):
        self._call("GetUnit", name)
        if name not in self.world.units:
            raise dbusexc.DBusNoSuchUnitError(-2, None, "Unit not loaded.")
        return b"/org/freedesktop/systemd1/unit/x"

    def StartUnit(self, name, mode):
        self._call("StartUnit", name, mode)

    def StopUnit(self, name, mode):
        self._call("StopUnit", name, mode)

    def RestartUnit(self, name, mode):
        self._call("RestartUnit", name, mode)

    def ResetFailedUnit(self, name):
        self._call("ResetFailedUnit", name)

    def StartTransientUnit(self, name, mode, properties):
        self._call("StartTransientUnit", name, mode, list(properties.items()))

    def ListUnitsByPatterns(self, states, patterns):
        self._call("ListUnitsByPatterns", states, patterns)
        return [(name, b"", b"loaded", props["ActiveState"], props["SubState"]) for name, props in self.world.units.items()]


class FakeSystemd:
    """The state a fake systemd manager holds: loaded units, errors to raise, calls seen."""

    def __init__(self):
        self.units: dict[bytes, dict] = {}
        self.template_state = b"static"
        self.errors: dict[str, Exception] = {}
        self.bus_error: Exception | None = None
        self.calls: list[tuple] = []
        self.opened: list[bool] = []
        self.closed = 0
        self.journal_entries: list[dict] = []
        self.matches: list[dict] = []

    def add_unit(self, name: bytes, **overrides) -> None:
        props = {
            "ActiveState": b"active", "SubState": b"running", "ActiveEnterTimestamp": 1_767_225_600_000_000,
            "MainPID": 1234, "NRestarts": 2, "ExecMainStatus": 0, "ExecMainExitTimestamp": 0,
            "Result": b"success", "MemoryCurrent": 50 * 1024 * 1024, "CPUUsageNSec": 1_500_000_000,
            "StatusText": b"sent 10 of 100",
        }
        props.update(overrides)
        self.units[name] = props

    def supervisor(self, user_mode: bool = False, euid: int = 1000) -> SystemdSupervisor:
        return SystemdSupervisor(
            user_mode=user_mode,
            open_bus=lambda mode: FakeBus(self, mode),
            manager_factory=lambda bus: SimpleNamespace(Manager=FakeManagerInterface(self)),
            unit_factory=self.unit,
            journal_reader=lambda: FakeReader(self),
            euid=lambda: euid,
        )

    def unit(self, name: bytes, bus: FakeBus) -> SimpleNamespace:
        props = self.units[name]
        return SimpleNamespace(Unit=SimpleNamespace(**props), Service=SimpleNamespace(**props))

    def methods(self) -> list[str]:
        return [call[0] for call in self.calls]


class FakeReader:
    def __init__(self, world: FakeSystemd):
        self.world = world
        self.position = len(world.journal_entries)

    def add_match(self, **match):
        self.world.matches.append(match)

    def seek_tail(self):
        self.position = len(self.world.journal_entries)

    def get_previous(self):
        if self.position == 0:
            return {}
        self.position -= 1
        return self.world.journal_entries[self.position]

    def close(self):
        pass


@pytest.fixture
def world() -> FakeSystemd:
    return FakeSystemd()


def test_launch_installed_template(world):
    world.supervisor().launch(42)

    assert ("StartUnit", UNIT, b"replace") in world.calls
    assert "StartTransientUnit" not in world.methods()
    assert world.opened == [False]
    assert world.closed == 1


def test_launch_transient_as_root(world):
    world.errors["GetUnitFileState"] = dbusexc.DBusFileNotFoundError(-2, None, "No such file")

    world.supervisor(euid=0).launch(42)

    call = next(call for call in world.calls if call[0] == "StartTransientUnit")
    properties = call[3]
    assert call[1:3] == (UNIT, b"replace")
    assert all(key == b"_custom" for key, _ in properties)
    names = [value[0] for _, value in properties]
    assert b"LoadCredential" in names
    assert names.count(b"SystemCallFilter") == 2
    assert all(value[1] == DBUS_SIGNATURES[value[0]] for _, value in properties)


def test_launch_transient_user_mode(world):
    world.errors["GetUnitFileState"] = dbusexc.DBusFileNotFoundError(-2, None, "No such file")

    world.supervisor(user_mode=True).launch(42)

    call = next(call for call in world.calls if call[0] == "StartTransientUnit")
    names = [value[0] for _, value in call[3]]
    assert world.opened == [True]
    assert b"User" not in names


def test_launch_without_template_not_allowed(world):
    world.errors["GetUnitFileState"] = dbusexc.DBusFileNotFoundError(-2, None, "No such file")

    with pytest.raises(NotAllowed, match="messagehub-campaign@42.service"):
        world.supervisor(euid=1000).launch(42)
    assert "StartTransientUnit" not in world.methods()


def test_launch_transient_running_left_alone(world):
    world.errors["GetUnitFileState"] = dbusexc.DBusFileNotFoundError(-2, None, "No such file")
    world.add_unit(UNIT)

    world.supervisor(euid=0).launch(42)

    assert "StartTransientUnit" not in world.methods()


def test_launch_transient_clears_ended_unit(world):
    world.errors["GetUnitFileState"] = dbusexc.DBusFileNotFoundError(-2, None, "No such file")
    world.add_unit(UNIT, ActiveState=b"failed", SubState=b"failed")

    world.supervisor(euid=0).launch(42)

    assert world.methods().index("ResetFailedUnit") < world.methods().index("StartTransientUnit")


def test_stop_and_restart(world):
    supervisor = world.supervisor()
    supervisor.stop(42)
    supervisor.restart(42)

    assert ("StopUnit", UNIT, b"replace") in world.calls
    assert ("RestartUnit", UNIT, b"replace") in world.calls


@pytest.mark.parametrize(
    "error",
    [
        dbusexc.DBusAccessDeniedError(-13, None, "Access denied"),
        dbusexc.DBusInteractiveAuthorizationRequiredError(-1, None, "Interactive authentication required."),
    ],
)
def test_refusal_becomes_not_allowed(world, error):
    world.errors["StartUnit"] = error

    with pytest.raises(NotAllowed, match="polkit rule") as raised:
        world.supervisor().launch(42)
    assert "messagehub-campaign@42.service" in str(raised.value)
    assert world.closed == 1


def test_no_such_unit_becomes_not_found(world):
    world.errors["StopUnit"] = dbusexc.DBusNoSuchUnitError(-2, None, "Unit not loaded.")

    with pytest.raises(UnitNotFound):
        world.supervisor().stop(42)


def test_no_bus_becomes_unavailable(world):
    world.bus_error = dbusexc.DBusFileNotFoundError(-2, None, "Could not open a bus to DBus")

    with pytest.raises(SupervisorUnavailable, match="system manager"):
        world.supervisor().state(42)


def test_state_maps_properties(world):
    world.add_unit(UNIT)

    state = world.supervisor().state(42)

    assert state.campaign_id == 42
    assert state.unit == UNIT.decode()
    assert state.active_state == "active"
    assert state.sub_state == "running"
    assert state.main_pid == 1234
    assert state.restarts == 2
    assert state.exit_status is None
    assert state.memory_bytes == 50 * 1024 * 1024
    assert state.cpu_seconds == pytest.approx(1.5)
    assert state.started_at == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert state.status_text == "sent 10 of 100"
    assert state.is_running


def test_state_of_exited_unit(world):
    world.add_unit(UNIT, ActiveState=b"failed", SubState=b"failed", MainPID=0, ExecMainStatus=3,
                   ExecMainExitTimestamp=1, Result=b"exit-code", MemoryCurrent=UNSET_UINT64,
                   CPUUsageNSec=UNSET_UINT64, ActiveEnterTimestamp=0)

    state = world.supervisor().state(42)

    assert state.main_pid is None
    assert state.exit_status == 3
    assert state.result == "exit-code"
    assert state.memory_bytes is None
    assert state.cpu_seconds is None
    assert state.started_at is None
    assert not state.is_running


def test_state_not_loaded_is_none(world):
    assert world.supervisor().state(42) is None


def test_states_lists_campaign_units(world):
    world.add_unit(b"messagehub-campaign@9.service")
    world.add_unit(b"messagehub-campaign@3.service", ActiveState=b"inactive", SubState=b"dead")

    states = world.supervisor().states()

    assert [state.campaign_id for state in states] == [3, 9]
    assert states[0].active_state == "inactive"
    assert ("ListUnitsByPatterns", [], [b"messagehub-campaign@*"]) in world.calls


def test_journal_tail_formatted(world):
    for second in range(5):
        world.journal_entries.append(
            {"__REALTIME_TIMESTAMP": datetime(2026, 12, 4, 20, 1, second), "MESSAGE": f"line {second}"}
        )

    lines = world.supervisor().journal(42, lines=2)

    assert lines == ["2026-12-04 20:01:03 line 3", "2026-12-04 20:01:04 line 4"]
    assert world.matches == [{"_SYSTEMD_UNIT": "messagehub-campaign@42.service"}]


def test_journal_user_mode_match(world):
    world.supervisor(user_mode=True).journal(42)

    assert world.matches == [{"_SYSTEMD_USER_UNIT": "messagehub-campaign@42.service"}]


def test_choose_auto_prefers_systemd(tmp_path):
    from messagehub.supervisor.choose import choose_supervisor

    supervisor = choose_supervisor({"INSTANCE_PATH": str(tmp_path), "STATE_DIR": "/srv/s"}, probe=lambda user: None)

    assert supervisor.name == "systemd"
    assert "system manager replied" in supervisor.reason
    assert supervisor.paths.state_dir == "/srv/s"


def test_choose_auto_falls_back(tmp_path):
    from messagehub.supervisor.choose import choose_supervisor

    supervisor = choose_supervisor({"INSTANCE_PATH": str(tmp_path)}, probe=lambda user: "no socket")

    assert supervisor.name == "process"
    assert supervisor.reason == "no systemd manager reachable (no socket)"


def test_choose_forced_and_invalid(tmp_path):
    from messagehub.supervisor.choose import choose_supervisor

    config = {"INSTANCE_PATH": str(tmp_path), "SUPERVISOR": "process"}
    supervisor = choose_supervisor(config, probe=lambda user: None)

    assert supervisor.name == "process"
    assert "forced" in supervisor.reason
    with pytest.raises(ValueError, match="invalid SUPERVISOR"):
        choose_supervisor({**config, "SUPERVISOR": "docker"})


def test_choose_caches_real_probe(tmp_path):
    from messagehub.supervisor.choose import choose_supervisor

    config = {"INSTANCE_PATH": str(tmp_path)}

    assert choose_supervisor(config) is choose_supervisor(config)
