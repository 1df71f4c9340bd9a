"""The campaign unit table: the shipped file, the unit file text and the D-Bus properties."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pystemd.dbuslib import apply_signature

from messagehub.supervisor.units import (
    DBUS_SIGNATURES,
    CampaignUnitPaths,
    render_unit_file,
    transient_properties,
    unit_settings,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "systemd" / "messagehub-campaign@.service"
PATHS = CampaignUnitPaths(prefix="/srv/mh", state_dir="/srv/mh-state", user="mh")


def settings_of(text: str) -> list[tuple[str, str]]:
    """Parse unit file text into (key, value) lines, sections marked as ("[Section]", "")."""
    lines = []
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            lines.append((line, ""))
        elif line and not line.startswith("#"):
            key, value = line.split("=", 1)
            lines.append((key, value))
    return lines


def properties_dict(properties: list[tuple[bytes, object]]) -> dict[bytes, list[object]]:
    result: dict[bytes, list[object]] = {}
    for name, value in properties:
        result.setdefault(name, []).append(value)
    return result


def test_shipped_file_matches_table():
    assert SHIPPED.read_text() == render_unit_file(CampaignUnitPaths())


def test_module_prints_shipped_file():
    result = subprocess.run([sys.executable, "-m", "messagehub.supervisor.units"], capture_output=True, text=True, check=True)
    assert result.stdout == SHIPPED.read_text()


def test_render_uses_paths():
    lines = settings_of(render_unit_file(PATHS))
    assert ("ExecStart", "/srv/mh/venv/bin/python -m messagehub.engine %i") in lines
    assert ("User", "mh") in lines
    assert ("ReadWritePaths", "/srv/mh-state") in lines
    assert ("Environment", "MESSAGEHUB_INSTANCE_PATH=/srv/mh-state") in lines
    assert ("LoadCredential", "secret_key:/srv/mh-state/secret_key") in lines


def test_render_sections_in_order():
    lines = settings_of(render_unit_file(PATHS))
    sections = [key for key, _ in lines if key.startswith("[")]
    assert sections == ["[Unit]", "[Service]"]
    assert lines.index(("StartLimitBurst", "5")) < lines.index(("[Service]", ""))


def test_venv_override():
    paths = CampaignUnitPaths(prefix="/a", venv="/b/env")
    assert ("ExecStart", "/b/env/bin/python -m messagehub.engine %i") in settings_of(render_unit_file(paths))


def test_restart_policy():
    lines = settings_of(render_unit_file(PATHS))
    assert ("Restart", "on-failure") in lines
    assert ("RestartPreventExitStatus", "2 3") in lines
    assert ("Type", "notify") in lines
    assert ("KillSignal", "SIGTERM") in lines


def test_secret_not_in_environment():
    text = render_unit_file(PATHS)
    environment = [value for key, value in settings_of(text) if key == "Environment"]
    assert environment == ["MESSAGEHUB_INSTANCE_PATH=/srv/mh-state"]


def test_transient_covers_every_setting():
    table_lines = sum(len(settings) for _, settings in unit_settings(PATHS))
    assert len(transient_properties(PATHS, 7)) == table_lines


def test_transient_values():
    props = properties_dict(transient_properties(PATHS, 42))
    assert props[b"ExecStart"] == [
        [(b"/srv/mh/venv/bin/python", [b"/srv/mh/venv/bin/python", b"-m", b"messagehub.engine", b"42"], False)]
    ]
    assert props[b"Description"] == [b"MessageHub campaign 42"]
    assert props[b"LoadCredential"] == [[(b"secret_key", b"/srv/mh-state/secret_key")]]
    assert props[b"ProtectHome"] == [b"yes"]
    assert props[b"ProtectSystem"] == [b"strict"]
    assert props[b"NoNewPrivileges"] == [True]
    assert props[b"UMask"] == [0o077]
    assert props[b"KillSignal"] == [15]


def test_transient_durations_in_microseconds():
    props = properties_dict(transient_properties(PATHS, 1))
    assert props[b"WatchdogUSec"] == [60_000_000]
    assert props[b"RestartUSec"] == [5_000_000]
    assert props[b"TimeoutStopUSec"] == [90_000_000]
    assert props[b"StartLimitIntervalUSec"] == [600_000_000]
    assert props[b"StartLimitBurst"] == [5]


def test_transient_filters():
    props = properties_dict(transient_properties(PATHS, 1))
    assert props[b"SystemCallFilter"] == [(True, [b"@system-service"]), (False, [b"@privileged", b"@resources"])]
    assert props[b"RestrictAddressFamilies"] == [(True, [b"AF_UNIX", b"AF_INET", b"AF_INET6"])]
    assert props[b"RestartPreventExitStatus"] == [([2, 3], [])]
    assert props[b"CapabilityBoundingSet"] == [0]


def test_user_mode_drops_user():
    names = {name for name, _ in transient_properties(PATHS, 1, user_mode=True)}
    assert b"User" not in names
    assert b"Group" not in names
    assert b"ExecStart" in names


@pytest.mark.parametrize("user_mode", [False, True])
def test_transient_signatures_serialize(user_mode):
    """Does pystemd's own encoder accept every value with its signature?"""
    for name, value in transient_properties(PATHS, 3, user_mode=user_mode):
        assert apply_signature(DBUS_SIGNATURES[name], [value]), name
