"""Background campaigns as messagehub-campaign@<id>.service units under a real systemd.

One container per module: `make install` puts MessageHub in it, its web unit
runs as the messagehub user and starts campaign units over D-Bus (so the
polkit rule decides), and tests/smtpserver.py records every message. Each test
creates its own campaigns with their own sender address, so the messages of
one test never count for another.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from messagehub.config import default_config
from tests.e2e.conftest import LIST_SIZE, REPO, Deployment, install, status_line, unit_name
from tests.waiting import wait_for

# A "mid-run" stop or kill waits until this many messages went out, so the
# run has both sent and unsent recipients when it happens.
MID_RUN_SENT = 300
RUN_TIMEOUT = 90.0
DENIED = ("Interactive authentication required", "Access denied")
MAX_EXPOSURE = 2.0


@dataclass
class RunObservations:
    """What the first launched campaign showed while it ran and after it finished."""

    campaign_id: int
    sender: str
    launch: dict
    user: str = ""
    progress_status: str = ""
    jobs_row_state: str = ""
    final: dict[str, str] = field(default_factory=dict)
    database: dict = field(default_factory=dict)


def sent_so_far(deployment: Deployment, campaign_id: int) -> int:
    """Return N of the unit's status text "sent N of M", or 0 before the first message."""
    match = re.search(r"sent (\d+) of", deployment.unit(campaign_id)["StatusText"])
    return int(match.group(1)) if match else 0


def wait_mid_run(deployment: Deployment, campaign_id: int) -> int:
    """Wait until the campaign sent MID_RUN_SENT messages, and return how many it had sent."""
    sent = wait_for(lambda: sent_so_far(deployment, campaign_id), lambda count: count >= MID_RUN_SENT, timeout=30, interval=0.05)
    assert sent >= MID_RUN_SENT, f"campaign {campaign_id} sent only {sent} messages{deployment.diagnostics(campaign_id)}"
    return sent


def wait_finished(deployment: Deployment, campaign_id: int, timeout: float = RUN_TIMEOUT) -> dict:
    """Wait until the campaign's unit ended with the campaign no longer running, and return its database row."""

    def settled() -> dict:
        return {"unit": deployment.unit(campaign_id), "campaign": deployment.app("campaign", str(campaign_id))}

    def done(state: dict) -> bool:
        return state["unit"]["ActiveState"] in ("inactive", "failed") and state["campaign"]["status"] != "running"

    return wait_for(settled, done, timeout, interval=0.5)


def check_each_recipient_once(deployment: Deployment, campaign_id: int, sender: str, in_flight: int = 0) -> None:
    """Assert that every list member received exactly one message from `sender`, and no other address got any.

    After a kill, up to ``in_flight`` messages may be missing: one per SMTP
    connection, written up to its final dot but not yet acknowledged, which
    the relay may drop when the connection resets. Such a recipient must be
    marked "unconfirmed", never silently missing.
    """
    counts = deployment.received(sender)
    expected = {address.casefold() for address in deployment.addresses}
    missing = expected - counts.keys()
    duplicates = {address: count for address, count in counts.items() if count > 1}
    strangers = counts.keys() - expected
    context = deployment.diagnostics(campaign_id)
    if in_flight:
        unconfirmed = {address.casefold() for address in deployment.app("unconfirmed", str(campaign_id))}
        assert missing <= unconfirmed, f"recipients got nothing and are not marked unconfirmed: {sorted(missing - unconfirmed)[:5]}{context}"
        assert len(missing) <= in_flight, f"{len(missing)} lost with {in_flight} connections in flight{context}"
        missing = set()
    assert not missing, f"{len(missing)} recipients got nothing, e.g. {sorted(missing)[:5]}{context}"
    assert not duplicates, f"{len(duplicates)} recipients got duplicates, e.g. {list(duplicates.items())[:5]}{context}"
    assert not strangers, f"messages to addresses outside the list: {sorted(strangers)[:5]}{context}"


def jobs_row_state(deployment: Deployment, campaign_id: int) -> str:
    """Return the data-active-state of the campaign's row on the Background Jobs page, or "" without a row."""
    page = deployment.web("get", "/jobs/")["body"]
    match = re.search(rf'data-campaign="{campaign_id}"\s+data-active-state="([^"]*)"', page)
    return match.group(1) if match else ""


def watch_run(deployment: Deployment, campaign_id: int, observations: RunObservations) -> None:
    """Record the unit's user, its progress status line and its jobs page row while it sends."""
    pid = wait_for(lambda: deployment.unit(campaign_id)["MainPID"], lambda value: value not in ("", "0"), timeout=20, interval=0.05)
    observations.user = deployment.run("ps", "-o", "user=", "-p", pid, check=False).stdout.strip()

    def in_progress() -> str:
        return deployment.run("systemctl", "status", "--no-pager", "--lines=0", unit_name(campaign_id), check=False).stdout

    def mid_progress(text: str) -> bool:
        match = status_line(text)
        return match is not None and 0 < int(match.group(1)) < int(match.group(2))

    observations.progress_status = wait_for(in_progress, mid_progress, timeout=20, interval=0.1)
    observations.jobs_row_state = jobs_row_state(deployment, campaign_id)


@pytest.fixture(scope="module")
def first_run(deployment: Deployment) -> RunObservations:
    """Launch one campaign from the web app, watch it while it runs, and wait for its end."""
    sender = "launch@example.com"
    campaign_id = deployment.create_campaign(sender, "E2E launch")
    observations = RunObservations(campaign_id, sender, deployment.launch(campaign_id))

    watch_run(deployment, campaign_id, observations)
    observations.database = wait_finished(deployment, campaign_id)["campaign"]
    observations.final = deployment.unit(campaign_id)
    return observations


def test_launch_redirects_to_monitor(first_run: RunObservations) -> None:
    assert first_run.launch["status"] == 303
    assert first_run.launch["location"].endswith(f"/jobs/{first_run.campaign_id}")


def test_launch_runs_as_messagehub(first_run: RunObservations, deployment: Deployment) -> None:
    assert first_run.user == "messagehub", deployment.diagnostics(first_run.campaign_id)


def test_launch_shows_active_row(first_run: RunObservations) -> None:
    assert first_run.jobs_row_state == "active"


def test_launch_sends_each_once(first_run: RunObservations, deployment: Deployment) -> None:
    context = deployment.diagnostics(first_run.campaign_id)
    assert first_run.database["status"] == "finished", f"{first_run.database}{context}"
    assert first_run.final["Result"] == "success", f"{first_run.final}{context}"
    assert first_run.final["NRestarts"] == "0", f"{first_run.final}{context}"
    check_each_recipient_once(deployment, first_run.campaign_id, first_run.sender)


def test_status_shows_progress(first_run: RunObservations) -> None:
    match = status_line(first_run.progress_status)
    assert match is not None, first_run.progress_status
    assert int(match.group(2)) == LIST_SIZE, first_run.progress_status


def test_journal_field_finds_lines(first_run: RunObservations, deployment: Deployment) -> None:
    campaign_id = first_run.campaign_id
    result = deployment.run("journalctl", "--no-pager", "--output=cat", f"MESSAGEHUB_CAMPAIGN={campaign_id}")
    assert f"started campaign {campaign_id}" in result.stdout, result.stdout[-2000:]
    assert f"finished campaign {campaign_id}" in result.stdout, result.stdout[-2000:]


def test_monitor_shows_journal(first_run: RunObservations, deployment: Deployment) -> None:
    page = deployment.web("get", f"/jobs/{first_run.campaign_id}")["body"]
    match = re.search(r'<pre id="journal"[^>]*>(.*?)</pre>', page, re.DOTALL)
    assert match is not None, page[-3000:]
    assert f"finished campaign {first_run.campaign_id}" in html.unescape(match.group(1)), match.group(1)[-2000:]


def test_sigkill_restarts_and_resumes(deployment: Deployment) -> None:
    sender = "killed@example.com"
    campaign_id = deployment.create_campaign(sender, "E2E SIGKILL")
    deployment.launch(campaign_id)
    sent_before_kill = wait_mid_run(deployment, campaign_id)

    deployment.run("systemctl", "kill", "--signal=SIGKILL", unit_name(campaign_id))
    restarts = wait_for(lambda: int(deployment.unit(campaign_id)["NRestarts"]), lambda count: count >= 1, timeout=30)
    state = wait_finished(deployment, campaign_id)

    context = deployment.diagnostics(campaign_id)
    print(f"\ncampaign {campaign_id}: killed after {sent_before_kill} of {LIST_SIZE}, restarts {restarts}")
    assert sent_before_kill < LIST_SIZE, f"the kill came after the run ended{context}"
    assert restarts >= 1, f"systemd did not restart the unit: {deployment.unit(campaign_id)}{context}"
    assert state["campaign"]["status"] == "finished", f"{state}{context}"
    # systemd kills the whole unit: the main process, which sends nothing, and
    # its workers, which may leave one message in flight on each connection.
    check_each_recipient_once(deployment, campaign_id, sender, in_flight=default_config(REPO)["SMTP_CONNECTIONS"])


def test_stop_pauses_then_resume(deployment: Deployment) -> None:
    sender = "stopped@example.com"
    campaign_id = deployment.create_campaign(sender, "E2E stop")
    deployment.launch(campaign_id)
    wait_mid_run(deployment, campaign_id)

    deployment.run("systemctl", "stop", unit_name(campaign_id), timeout=120)
    paused = wait_finished(deployment, campaign_id, timeout=30)
    received_while_paused = sum(deployment.received(sender).values())
    campaign_page = deployment.web("get", f"/campaigns/{campaign_id}")["body"]

    resume = deployment.web("post", "--page", f"/jobs/{campaign_id}", f"/jobs/{campaign_id}/resume")
    wait_for(lambda: deployment.unit(campaign_id)["ActiveState"], lambda value: value != "inactive", timeout=15, interval=0.05)
    finished = wait_finished(deployment, campaign_id)

    context = deployment.diagnostics(campaign_id)
    assert paused["campaign"]["status"] == "paused", f"{paused}{context}"
    assert paused["unit"]["Result"] == "success", f"{paused}{context}"
    assert received_while_paused < LIST_SIZE, f"stop came after the run ended{context}"
    assert re.search(r"\bpaused\b", campaign_page, re.IGNORECASE), "campaign page does not say paused"
    assert resume["status"] == 303, f"{resume['status']} {resume['flashes']}"
    assert finished["campaign"]["status"] == "finished", f"{finished}{context}"
    check_each_recipient_once(deployment, campaign_id, sender)


def polkit_attempt(deployment: Deployment, *command: str) -> tuple[int, str]:
    """Run a command as the messagehub user without asking for a password, and return its status and stderr."""
    result = deployment.run(*command, user="messagehub", check=False)
    return result.returncode, result.stderr.strip()


FORBIDDEN_COMMANDS = [
    ("systemctl", "--no-ask-password", "stop", "dbus.service"),
    ("systemctl", "--no-ask-password", "restart", "systemd-journald.service"),
    ("systemctl", "--no-ask-password", "start", "getty@tty9.service"),
    ("systemctl", "--no-ask-password", "stop", "messagehub-web.service"),
    ("systemctl", "--no-ask-password", "start", "messagehub-campaign@1x.service"),
    ("systemctl", "--no-ask-password", "start", "messagehub-campaign@1.service.d"),
    ("systemctl", "--no-ask-password", "start", "messagehub-campaign@../../x.service"),
    ("systemctl", "--no-ask-password", "reload-or-restart", "messagehub-campaign@1.service"),
    ("systemd-run", "--no-ask-password", "/bin/true"),
    ("busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
     "StopUnit", "ss", "dbus.service", "replace"),
    ("busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
     "StartUnit", "ss", "messagehub-campaign@../../x.service", "replace"),
]


@pytest.mark.parametrize("command", FORBIDDEN_COMMANDS, ids=lambda command: " ".join(command[-3:]))
def test_polkit_rejects_other_units(deployment: Deployment, command: tuple[str, ...]) -> None:
    status, stderr = polkit_attempt(deployment, *command)
    assert status != 0, f"{' '.join(command)} succeeded as messagehub"
    assert any(reason in stderr for reason in DENIED) or "is not valid" in stderr, stderr


def test_polkit_allows_campaign_units(first_run: RunObservations, deployment: Deployment) -> None:
    campaign_id = first_run.campaign_id
    stop_status, stop_error = polkit_attempt(deployment, "systemctl", "--no-ask-password", "stop", unit_name(campaign_id))
    # The campaign has finished, so the engine rejects another run (exit status 2):
    # the unit ran, which shows that polkit let the start through.
    start_status, start_error = polkit_attempt(deployment, "systemctl", "--no-ask-password", "start", unit_name(campaign_id))
    after = deployment.unit(campaign_id)

    assert stop_status == 0, stop_error
    assert not any(reason in start_error for reason in DENIED), start_error
    assert after["ExecMainStatus"] == "2", f"{after}{deployment.diagnostics(campaign_id)}"


def test_security_exposure_low(first_run: RunObservations, deployment: Deployment) -> None:
    result = deployment.run("systemd-analyze", "security", "--no-pager", unit_name(first_run.campaign_id), check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match is not None, f"{result.stdout[-1500:]}\n{result.stderr}"

    exposure = float(match.group(1))
    print(f"\nsystemd-analyze security {unit_name(first_run.campaign_id)}: exposure {exposure}")
    assert exposure < MAX_EXPOSURE, result.stdout[-3000:]


def active_campaign_units(deployment: Deployment) -> set[str]:
    """Return the names of campaign units that are active now."""
    result = deployment.run(
        "systemctl", "list-units", "--no-legend", "--plain", "--state=active", "messagehub-campaign@*.service", check=False
    )
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def max_active_together(deployment: Deployment, units: set[str], running: Callable[[], bool], timeout: float) -> int:
    """Sample the active campaign units until `running` turns false, and return the maximum seen at once."""
    maximum = 0
    deadline = time.monotonic() + timeout
    while running() and time.monotonic() < deadline:
        maximum = max(maximum, len(active_campaign_units(deployment) & units))
        time.sleep(0.1)

    return maximum


def test_three_campaigns_side_by_side(deployment: Deployment) -> None:
    senders = [f"parallel-{number}@example.com" for number in range(3)]
    campaign_ids = [deployment.create_campaign(sender, f"E2E parallel {number}") for number, sender in enumerate(senders)]
    for campaign_id in campaign_ids:
        deployment.launch(campaign_id)

    units = {unit_name(campaign_id) for campaign_id in campaign_ids}
    wait_for(lambda: active_campaign_units(deployment) & units, bool, timeout=20, interval=0.05)
    together = max_active_together(deployment, units, lambda: bool(active_campaign_units(deployment) & units), RUN_TIMEOUT)
    states = [wait_finished(deployment, campaign_id) for campaign_id in campaign_ids]

    print(f"\ncampaigns {campaign_ids}: at most {together} units active at once")
    assert together == 3, f"only {together} of 3 units were active at once"
    for campaign_id, sender, state in zip(campaign_ids, senders, states):
        assert state["campaign"]["status"] == "finished", f"{state}{deployment.diagnostics(campaign_id)}"
        check_each_recipient_once(deployment, campaign_id, sender)


def test_install_twice_then_uninstall(deployment: Deployment, wheelhouse: Path) -> None:
    # Runs last in this module: it removes the installation the other tests use.
    install(deployment, wheelhouse)
    web_state = deployment.run("systemctl", "is-active", "messagehub-web.service", check=False).stdout.strip()

    result = deployment.run("make", "-C", str(REPO), "uninstall", check=False, timeout=120)
    leftovers = deployment.run(
        "sh", "-c",
        "ls -d /opt/messagehub /etc/systemd/system/messagehub-web.service "
        "'/etc/systemd/system/messagehub-campaign@.service' /etc/polkit-1/rules.d/50-messagehub.rules 2>/dev/null",
        check=False,
    ).stdout.split()
    state = deployment.run("ls", "/var/lib/messagehub", check=False).stdout.split()

    assert web_state == "active"
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert leftovers == []
    assert "secret_key" in state
    assert "messagehub.db" in state
