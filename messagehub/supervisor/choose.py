"""Pick the supervisor from the configuration: systemd when a manager replies on the bus, else plain processes.

Configuration keys read here:
    SUPERVISOR         "auto" (default), "systemd" or "process"
    SYSTEMD_USER_MODE  talk to the user's systemd manager instead of the system one (default False)
    INSTALL_PREFIX     where MessageHub is installed, for transient units (default /opt/messagehub)
    INSTALL_VENV       its virtualenv (default {INSTALL_PREFIX}/venv)
    STATE_DIR          the campaign units' instance folder (default /var/lib/messagehub)
    RUN_USER           the user campaign units run as (default messagehub)
    PROCESS_STOP_TIMEOUT  seconds stop() waits after SIGTERM, plain processes only (default 10)
    INSTANCE_PATH      instance folder of the plain-process supervisor (set by load_config)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from messagehub.config import SUPERVISOR_CHOICES as CHOICES
from messagehub.supervisor.base import Supervisor
from messagehub.supervisor.process import ProcessSupervisor
from messagehub.supervisor.units import CampaignUnitPaths

SYSTEM_BUS_SOCKET = Path("/run/dbus/system_bus_socket")

# One decision per process and configuration: probing the bus on every
# request would cost a D-Bus round trip each time.
_cache: dict[tuple, Supervisor] = {}


def choose_supervisor(config: dict[str, Any], probe: Callable[[bool], str | None] | None = None) -> Supervisor:
    """Return the configured supervisor, with ``.name`` and ``.reason`` for the UI."""
    key = _cache_key(config)
    if probe is None and key in _cache:
        return _cache[key]

    supervisor = _build(config, probe or probe_systemd)
    if probe is None:
        _cache[key] = supervisor
    return supervisor


def _cache_key(config: dict[str, Any]) -> tuple:
    names = ("SUPERVISOR", "SYSTEMD_USER_MODE", "INSTALL_PREFIX", "INSTALL_VENV", "STATE_DIR", "RUN_USER",
             "PROCESS_STOP_TIMEOUT", "INSTANCE_PATH")
    return tuple(str(config.get(name)) for name in names)


def _build(config: dict[str, Any], probe: Callable[[bool], str | None]) -> Supervisor:
    choice = str(config.get("SUPERVISOR") or "auto").lower()
    if choice not in CHOICES:
        raise ValueError(f"invalid SUPERVISOR {choice!r}: use one of {', '.join(CHOICES)}")

    user_mode = bool(config.get("SYSTEMD_USER_MODE", False))
    if choice == "systemd":
        return _systemd(config, user_mode, "forced by SUPERVISOR = \"systemd\"")
    if choice == "process":
        return _process(config, "forced by SUPERVISOR = \"process\"")

    problem = probe(user_mode)
    if problem is None:
        manager = "user" if user_mode else "system"
        return _systemd(config, user_mode, f"a systemd {manager} manager replied on the bus")
    return _process(config, f"no systemd manager reachable ({problem})")


def _systemd(config: dict[str, Any], user_mode: bool, reason: str) -> Supervisor:
    from messagehub.supervisor.systemd import SystemdSupervisor

    paths = CampaignUnitPaths(
        prefix=config.get("INSTALL_PREFIX") or "/opt/messagehub",
        venv=config.get("INSTALL_VENV") or "",
        state_dir=config.get("STATE_DIR") or "/var/lib/messagehub",
        user=config.get("RUN_USER") or "messagehub",
    )
    supervisor = SystemdSupervisor(user_mode=user_mode, paths=paths)
    supervisor.reason = reason
    return supervisor


def _process(config: dict[str, Any], reason: str) -> Supervisor:
    supervisor = ProcessSupervisor(
        config["INSTANCE_PATH"], stop_timeout=float(config.get("PROCESS_STOP_TIMEOUT", 10.0))
    )
    supervisor.reason = reason
    return supervisor


def probe_systemd(user_mode: bool) -> str | None:
    """Ask systemd for its Version property; return None if it replied, else the reason it did not."""
    if not user_mode and not SYSTEM_BUS_SOCKET.exists():
        return f"{SYSTEM_BUS_SOCKET} does not exist"
    if user_mode and not os.environ.get("DBUS_SESSION_BUS_ADDRESS") and not os.environ.get("XDG_RUNTIME_DIR"):
        return "no user bus: neither DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR is set"

    try:
        from pystemd.dbuslib import DBus
        from pystemd.systemd1 import Manager
    except ImportError as e:
        return f"pystemd is not installed: {e}"

    try:
        with DBus(user_mode=user_mode) as bus:
            Manager(bus=bus, _autoload=True).Manager.Version
    except Exception as e:  # any D-Bus failure means "not usable here"; the reason is shown in the UI
        return f"systemd did not reply: {e}"

    return None
