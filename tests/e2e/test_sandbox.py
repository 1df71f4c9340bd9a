"""Checks of the throw-away systemd container that the campaign-unit tests boot."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import require_sandbox
from tests.e2e.sandbox import ContainerCommandError, SandboxError, SystemdContainer
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]

# Prints the errno name of a TCP connect to 192.0.2.1 and the seconds it took. The
# address is in TEST-NET-1, a block reserved for documentation.
CONNECT_SCRIPT = """
import errno, socket, time
start = time.monotonic()
try:
    socket.create_connection(("192.0.2.1", 9), timeout=5).close()
    outcome = "connected"
except OSError as error:
    outcome = errno.errorcode.get(error.errno, "timeout")
print(outcome, time.monotonic() - start)
"""






def project_binds(*extra: Path) -> list[Path]:
    """List the checkout, the virtualenv running the tests (if any) and the `extra` directories."""
    binds = [REPO]
    if sys.prefix != sys.base_prefix:
        binds.append(Path(sys.prefix))

    return binds + list(extra)


def host_mounts() -> set[str]:
    """Return the lines of the host's mount table, as seen by this process."""
    return set(Path("/proc/self/mountinfo").read_text().splitlines())


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """Create a host directory, bound into the container, for files the container writes."""
    path = Path(tempfile.mkdtemp(prefix="messagehub-e2e-"))
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def container(scratch: Path) -> Iterator[SystemdContainer]:
    """Boot one container for the module's checks of a running system."""
    require_sandbox()
    with SystemdContainer(project_binds(scratch), lifetime=120) as booted:
        print(f"\ncontainer {booted.name} booted in {booted.boot_seconds:.2f} s")
        yield booted

    print(f"\ncontainer {booted.name} shut down in {booted.shutdown_seconds:.2f} s")


def test_boot_state_running(container: SystemdContainer) -> None:
    state = container.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    virtualization = container.run(["systemd-detect-virt", "--container"]).stdout.strip()
    init = container.run(["cat", "/proc/1/comm"]).stdout.strip()

    assert state in {"running", "degraded"}
    assert virtualization == "systemd-nspawn"
    assert init == "systemd"


def test_campaign_unit_journal(container: SystemdContainer) -> None:
    unit = "messagehub-campaign@7.service"
    line = f"campaign 7 sent 3 messages, run {secrets.token_hex(4)}"

    result = container.run(["systemd-run", f"--unit={unit}", "--wait", "--quiet", "--", "/bin/echo", line])
    journal = wait_for(lambda: container.journal(unit), lambda text: line in text)
    properties = container.unit_properties(unit, "Result", "ActiveState")

    assert result.returncode == 0
    assert line in journal.splitlines()
    assert properties["Result"] == "success"
    assert properties["ActiveState"] == "inactive"


def test_unit_restart_after_sigkill(container: SystemdContainer) -> None:
    unit = "messagehub-campaign@8.service"
    names = ("ActiveState", "MainPID", "NRestarts")

    def restarted(properties: dict[str, str]) -> bool:
        return properties["NRestarts"] == "1" and properties["ActiveState"] == "active"

    container.run([
        "systemd-run", f"--unit={unit}", "--property=Restart=on-failure", "--property=RestartSec=100ms",
        "--", "/bin/sleep", "600",
    ])
    try:
        before = wait_for(lambda: container.unit_properties(unit, *names), lambda p: p["MainPID"] != "0")
        container.run(["systemctl", "kill", "--signal=SIGKILL", unit])
        after = wait_for(lambda: container.unit_properties(unit, *names), restarted)
    finally:
        container.run(["systemctl", "stop", unit], check=False)

    assert before["NRestarts"] == "0"
    assert before["ActiveState"] == "active"
    assert after["NRestarts"] == "1"
    assert after["ActiveState"] == "active"
    assert after["MainPID"] not in {"0", before["MainPID"]}


def test_network_loopback_only(container: SystemdContainer) -> None:
    links = container.run(["ip", "-o", "link", "show"]).stdout.splitlines()
    link_names = [line.split(":")[1].strip() for line in links]
    routes = container.run(["ip", "route", "show", "table", "all"]).stdout.splitlines()
    route_devices = {line.split(" dev ")[1].split()[0] for line in routes}
    main_routes = container.run(["ip", "-4", "route", "show"]).stdout

    connect = container.run(["/usr/bin/python3", "-c", CONNECT_SCRIPT]).stdout.split()
    outcome, seconds = connect[0], float(connect[1])

    assert link_names == ["lo"]
    assert route_devices == {"lo"}
    assert main_routes == ""
    assert outcome == "ENETUNREACH"
    assert seconds < 1.0


def test_run_as_user(container: SystemdContainer) -> None:
    user = container.run(["id", "-un"], user="nobody").stdout.strip()
    root = container.run(["id", "-un"]).stdout.strip()

    assert user == "nobody"
    assert root == "root"


def test_run_failure_raises(container: SystemdContainer) -> None:
    with pytest.raises(ContainerCommandError) as raised:
        container.run(["sh", "-c", "echo unit file missing >&2; exit 3"])

    assert raised.value.returncode == 3
    assert "unit file missing" in str(raised.value)


def test_venv_python_inside(container: SystemdContainer) -> None:
    command = [sys.executable, "-c", "import sys, messagehub; print(sys.prefix)"]

    as_root = container.run(command).stdout.strip()
    as_nobody = container.run(command, user="nobody").stdout.strip()

    assert as_root == sys.prefix
    assert as_nobody == sys.prefix


def test_write_file_into_bind(container: SystemdContainer, scratch: Path) -> None:
    path = scratch / "results" / "campaign-7.txt"

    container.write_file(str(path), "sent=3\n")

    assert path.read_text() == "sent=3\n"


def test_write_file_stays_inside(container: SystemdContainer) -> None:
    path = f"/etc/messagehub-e2e-{secrets.token_hex(4)}/unit.conf"

    container.write_file(path, "[Service]\n", mode=0o600)
    details = container.run(["stat", "--format=%a %U", path]).stdout.strip()
    content = container.run(["cat", path]).stdout

    assert details == "600 root"
    assert content == "[Service]\n"
    assert not Path(path).exists()


def test_write_file_relative_path(container: SystemdContainer) -> None:
    with pytest.raises(ValueError):
        container.write_file("etc/unit.conf", "")


def test_available_missing_tool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    require_sandbox()
    monkeypatch.setenv("PATH", str(tmp_path))

    status = SystemdContainer.available()

    assert not status
    assert "systemd-nspawn" in status.reason


def test_boot_failure_raises() -> None:
    require_sandbox()
    container = SystemdContainer(name="not a machine name!")

    with pytest.raises(SandboxError) as raised:
        with container:
            pass

    assert "Invalid machine name" in str(raised.value)
    assert container.scratch_dir is None


def test_shutdown_leaves_host_clean() -> None:
    require_sandbox()
    token = secrets.token_hex(8)
    results = Path(tempfile.mkdtemp(prefix="messagehub-e2e-"))
    results_file = results / "before-boot.txt"
    results_file.write_text(token)
    with tempfile.NamedTemporaryFile("w", prefix="messagehub-e2e-marker-", dir="/tmp", delete=False) as marker:
        marker.write(token)

    try:
        mounts_before = host_mounts()
        with SystemdContainer([results], lifetime=60) as container:
            scratch_dir = container.scratch_dir
            assert scratch_dir is not None
            marker_seen = container.run(["test", "-e", marker.name], check=False).returncode == 0
            # nspawn keeps this directory while the container runs. It must land in
            # the namespace's own /run, not in the host's.
            propagate_on_host = Path("/run/systemd/nspawn/propagate", container.name).exists()
            container.run(["systemd-run", "--unit=messagehub-campaign@9.service", "--", "/bin/sleep", "600"])
            mounts_during = host_mounts()
        mounts_after = host_mounts()
        print(f"\ncontainer {container.name}: boot {container.boot_seconds:.2f} s, shutdown {container.shutdown_seconds:.2f} s")

        assert not marker_seen
        assert not propagate_on_host
        assert Path(marker.name).read_text() == token
        assert results_file.read_text() == token
        assert [line for line in mounts_during if str(scratch_dir) in line] == []
        # NOTE: a mount that another process on the host adds meanwhile also fails this check.
        assert sorted(mounts_after - mounts_before) == []
        assert container.remaining_processes() == []
        assert not scratch_dir.exists()
    finally:
        os.unlink(marker.name)
        shutil.rmtree(results)


def test_lifetime_limit_ends_container() -> None:
    require_sandbox()
    lifetime = 8.0
    started = time.monotonic()

    with SystemdContainer(lifetime=lifetime) as container:
        remaining = wait_for(container.remaining_processes, lambda pids: not pids, timeout=lifetime + 15)
        ended_after = time.monotonic() - started

    assert remaining == []
    assert ended_after >= lifetime
    assert container.scratch_dir is None
