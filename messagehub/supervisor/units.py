"""The one table of campaign unit settings, rendered as a unit file or as D-Bus properties.

Regenerate the shipped template after changing the table:
``python -m messagehub.supervisor.units > systemd/messagehub-campaign@.service``
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

TEMPLATE_NAME = "messagehub-campaign@.service"

HEADER = f"""\
# {TEMPLATE_NAME}: one background campaign per instance (%i = campaign id).
# Generated from messagehub/supervisor/units.py; do not edit by hand. Regenerate with
#   python -m messagehub.supervisor.units > systemd/{TEMPLATE_NAME}
"""


@dataclass(frozen=True)
class CampaignUnitPaths:
    """Install paths of MessageHub and the user that runs its campaigns."""

    prefix: str = "/opt/messagehub"
    venv: str = field(default="")  # empty means {prefix}/venv
    state_dir: str = "/var/lib/messagehub"
    user: str = "messagehub"

    def __post_init__(self) -> None:
        if not self.venv:
            object.__setattr__(self, "venv", f"{self.prefix}/venv")


Section = tuple[str, list[tuple[str, str]]]


def unit_settings(paths: CampaignUnitPaths) -> list[Section]:
    """Return the campaign unit's settings, section by section, in unit file order."""
    return [
        ("Unit", _unit_section()),
        ("Service", _process_settings(paths) + _restart_settings() + _stop_settings() + _sandbox_settings(paths)),
    ]


def _unit_section() -> list[tuple[str, str]]:
    # Five failed starts in ten minutes leave the unit failed instead of
    # retrying forever against, say, an SMTP server that is down.
    return [
        ("Description", "MessageHub campaign %i"),
        ("StartLimitIntervalSec", "600s"),
        ("StartLimitBurst", "5"),
    ]


def _process_settings(paths: CampaignUnitPaths) -> list[tuple[str, str]]:
    # NOTE: Type=notify and WatchdogSec= expect the engine to send READY=1,
    # STATUS= and WATCHDOG=1 (sd_notify). Until it does, a start times out and fails.
    return [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", f"{paths.venv}/bin/python -m messagehub.engine %i"),
        ("User", paths.user),
        ("Group", paths.user),
        ("WorkingDirectory", paths.state_dir),
        ("Environment", f"MESSAGEHUB_INSTANCE_PATH={paths.state_dir}"),
        # The engine reads $CREDENTIALS_DIRECTORY/secret_key, so the key that
        # decrypts provider secrets is never in the environment or on the command line.
        ("LoadCredential", f"secret_key:{paths.state_dir}/secret_key"),
        ("SyslogIdentifier", "messagehub-campaign"),
        ("UMask", "0077"),
    ]


def _restart_settings() -> list[tuple[str, str]]:
    # Exit status 2 (unknown campaign, bad usage) and 3 (campaign failed for
    # good) would fail the same way again, so they are not restarted.
    return [
        ("WatchdogSec", "60s"),
        ("Restart", "on-failure"),
        ("RestartSec", "5s"),
        ("RestartPreventExitStatus", "2 3"),
    ]


def _stop_settings() -> list[tuple[str, str]]:
    # KillMode=mixed sends SIGTERM to the engine only, so it can finish the
    # message in flight and pause the campaign; whatever is left in the
    # cgroup after TimeoutStopSec gets SIGKILL with it.
    return [
        ("KillSignal", "SIGTERM"),
        ("KillMode", "mixed"),
        ("TimeoutStopSec", "90s"),
    ]


def _sandbox_settings(paths: CampaignUnitPaths) -> list[tuple[str, str]]:
    # No IPAddressDeny= and no PrivateNetwork=: campaigns reach SMTP servers
    # and provider APIs anywhere, including the local network.
    return [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", paths.state_dir),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("PrivateUsers", "yes"),
        ("ProtectHome", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("RemoveIPC", "yes"),
        ("LockPersonality", "yes"),
        # CPython 3.11 ran the engine up to its SQLite queries under this unit
        # (systemd 252). ctypes or cffi callbacks would need W+X memory and fail.
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallFilter", "~@privileged @resources"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("DevicePolicy", "closed"),
    ]


def render_unit_file(paths: CampaignUnitPaths | None = None) -> str:
    """Render the template unit file text from the settings table."""
    paths = paths or CampaignUnitPaths()
    blocks = [HEADER]
    for section, settings in unit_settings(paths):
        lines = [f"[{section}]"] + [f"{key}={value}" for key, value in settings]
        blocks.append("\n".join(lines) + "\n")

    return "\n".join(blocks)


# D-Bus signature of every property a transient campaign unit sets. pystemd's
# own table (0.15.3) lacks several of them, LoadCredential among them.
DBUS_SIGNATURES: dict[bytes, bytes] = {
    b"Description": b"s",
    b"StartLimitIntervalUSec": b"t",
    b"StartLimitBurst": b"u",
    b"Type": b"s",
    b"NotifyAccess": b"s",
    b"ExecStart": b"a(sasb)",
    b"User": b"s",
    b"Group": b"s",
    b"WorkingDirectory": b"s",
    b"Environment": b"as",
    b"LoadCredential": b"a(ss)",
    b"SyslogIdentifier": b"s",
    b"UMask": b"u",
    b"WatchdogUSec": b"t",
    b"Restart": b"s",
    b"RestartUSec": b"t",
    b"RestartPreventExitStatus": b"(aiai)",
    b"KillSignal": b"i",
    b"KillMode": b"s",
    b"TimeoutStopUSec": b"t",
    b"ProtectSystem": b"s",
    b"ProtectHome": b"s",
    b"ProtectProc": b"s",
    b"ProcSubset": b"s",
    b"ReadWritePaths": b"as",
    b"RestrictNamespaces": b"t",
    b"SystemCallArchitectures": b"as",
    b"SystemCallFilter": b"(bas)",
    b"CapabilityBoundingSet": b"t",
    b"AmbientCapabilities": b"t",
    b"RestrictAddressFamilies": b"(bas)",
    b"DevicePolicy": b"s",
}

_BOOLEAN_SETTINGS = {
    "NoNewPrivileges", "PrivateTmp", "PrivateDevices", "PrivateUsers", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
    "ProtectHostname", "RestrictRealtime", "RestrictSUIDSGID", "RemoveIPC", "LockPersonality",
    "MemoryDenyWriteExecute",
}
_STRING_SETTINGS = {
    "Type", "NotifyAccess", "User", "Group", "WorkingDirectory", "SyslogIdentifier", "Restart",
    "KillMode", "ProtectSystem", "ProtectHome", "ProtectProc", "ProcSubset", "DevicePolicy",
}
# Unit file settings whose D-Bus property carries microseconds under another name.
_DURATION_PROPERTIES = {
    "StartLimitIntervalSec": "StartLimitIntervalUSec",
    "WatchdogSec": "WatchdogUSec",
    "RestartSec": "RestartUSec",
    "TimeoutStopSec": "TimeoutStopUSec",
}
# Settings only the system manager accepts; a user manager runs units as its own user.
SYSTEM_ONLY_SETTINGS = {"User", "Group", "PrivateUsers"}

for _name in _BOOLEAN_SETTINGS:
    DBUS_SIGNATURES[_name.encode()] = b"b"


def transient_properties(
    paths: CampaignUnitPaths, campaign_id: int, user_mode: bool = False
) -> list[tuple[bytes, Any]]:
    """Convert the table into (D-Bus property, value) pairs for StartTransientUnit.

    A property may appear twice (SystemCallFilter): systemd applies each
    entry like a line of a unit file. ``%i`` is replaced by the campaign id,
    since systemd does not expand specifiers in transient properties.
    """
    properties = []
    for _section, settings in unit_settings(paths):
        for key, value in settings:
            if user_mode and key in SYSTEM_ONLY_SETTINGS:
                continue
            value = value.replace("%i", str(int(campaign_id)))
            properties.append(_dbus_property(key, value))

    return properties


def _dbus_property(key: str, value: str) -> tuple[bytes, Any]:
    """Convert one unit file line into a D-Bus property name and a value of its signature."""
    if key in _BOOLEAN_SETTINGS:
        return key.encode(), value == "yes"
    if key in _STRING_SETTINGS or key == "Description":
        return key.encode(), value.encode()
    if key in _DURATION_PROPERTIES:
        return _DURATION_PROPERTIES[key].encode(), _seconds(value) * 1_000_000

    converter = _CONVERTERS[key]
    return key.encode(), converter(value)


def _seconds(value: str) -> int:
    if not value.endswith("s") or not value[:-1].isdigit():
        raise ValueError(f"unsupported duration in the unit table: {value!r} (write whole seconds, e.g. 90s)")
    return int(value[:-1])


def _exec_start(value: str) -> list[tuple[bytes, list[bytes], bool]]:
    argv = [part.encode() for part in value.split()]
    return [(argv[0], argv, False)]


def _credential(value: str) -> list[tuple[bytes, bytes]]:
    name, path = value.split(":", 1)
    return [(name.encode(), path.encode())]


def _filter(value: str) -> tuple[bool, list[bytes]]:
    # A leading "~" turns an allow list into a deny list, as in unit files.
    deny = value.startswith("~")
    names = value.lstrip("~").split()
    return (not deny, [name.encode() for name in names])


def _no_namespaces(value: str) -> int:
    # RestrictNamespaces=yes allows no namespace type: an empty flag set.
    if value != "yes":
        raise ValueError(f"unsupported RestrictNamespaces= in the unit table: {value!r}")
    return 0


def _no_capabilities(value: str) -> int:
    # systemd sends a capability set as a 64-bit mask; an empty setting is mask 0.
    if value:
        raise ValueError(f"unsupported capability list in the unit table: {value!r}")
    return 0


_CONVERTERS = {
    "StartLimitBurst": int,
    "ExecStart": _exec_start,
    "Environment": lambda value: [value.encode()],
    "LoadCredential": _credential,
    "UMask": lambda value: int(value, 8),
    "RestartPreventExitStatus": lambda value: ([int(status) for status in value.split()], []),
    "KillSignal": lambda value: {"SIGTERM": 15, "SIGINT": 2}[value],
    "ReadWritePaths": lambda value: [value.encode()],
    "RestrictNamespaces": _no_namespaces,
    "SystemCallArchitectures": lambda value: [value.encode()],
    "SystemCallFilter": _filter,
    "CapabilityBoundingSet": _no_capabilities,
    "AmbientCapabilities": _no_capabilities,
    "RestrictAddressFamilies": _filter,
}


def main() -> None:
    """Print the template unit file for the default install paths."""
    sys.stdout.write(render_unit_file(CampaignUnitPaths()))


if __name__ == "__main__":
    main()
