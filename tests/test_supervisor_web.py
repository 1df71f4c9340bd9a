"""Launch, stop, resume and restart from the web routes with the plain-process supervisor.

The same steps as tests/e2e/test_campaign_units.py, without systemd: the app
runs with SUPERVISOR = "process" and CSRF checks on, each campaign runs as a
detached engine process, and a real SMTP server on 127.0.0.1 counts what
every recipient receives.
"""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from messagehub.auth.passwords import create_user
from messagehub.extensions import db
from messagehub.supervisor.choose import choose_supervisor
from tests import factories
from tests.conftest import PASSWORD, AuthActions, csrf_token, make_app
from tests.smtpserver import SmtpTestServer
from tests.waiting import wait_for


LIST_SIZE = 2000
MID_RUN_SENT = 300
RUN_TIMEOUT = 90.0




@pytest.fixture
def process_app(instance_path: Path) -> Iterator[Flask]:
    """Return the app with plain-process campaigns and CSRF checks on, with an operator user."""
    app = make_app(instance_path, SUPERVISOR="process", PROCESS_STOP_TIMEOUT=20.0)
    with app.app_context():
        create_user(db.session, "operator", PASSWORD, "operator")
        db.session.commit()

    yield app

    # Kill only engines this test launched: each leads a session of its own.
    for state in choose_supervisor(app.config).states():
        if state.is_running and state.main_pid and os.getsid(state.main_pid) == state.main_pid:
            os.killpg(state.main_pid, signal.SIGKILL)
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def operator(process_app: Flask) -> FlaskClient:
    """Return a test client logged in as the operator through the login form."""
    client = process_app.test_client()
    response = AuthActions(client).login()
    assert response.status_code == 303
    return client


@pytest.fixture
def smtp_campaign(process_app: Flask, smtp_server: SmtpTestServer) -> int:
    """Create a campaign to LIST_SIZE distinct contacts, sent through the test SMTP server."""
    contacts = [{"email": f"web-{number:05d}@example.com", "first_name": f"P{number}"} for number in range(LIST_SIZE)]
    list_id = factories.make_list(process_app, contacts)
    factories.use_smtp_server(process_app, smtp_server.port)
    return factories.make_campaign(process_app, list_id, delivery_method="smtp")


def post_form(client: FlaskClient, path: str, page: str, **fields: str) -> int:
    """POST a form with the CSRF token of `page`, as a browser does, and return the status."""
    token = csrf_token(client.get(page).get_data(as_text=True))
    assert token, f"no csrf_token on {page}"
    return client.post(path, data={**fields, "csrf_token": token}).status_code


def campaign_status(app: Flask, campaign_id: int) -> str:
    """Return the campaign's status in the database."""
    return factories.campaign(app, campaign_id).status


def wait_settled(app: Flask, campaign_id: int) -> str:
    """Wait until the campaign's process ended and its status is no longer running, and return the status."""
    supervisor = choose_supervisor(app.config)

    def settled() -> bool:
        state = supervisor.state(campaign_id)
        return (state is None or not state.is_running) and campaign_status(app, campaign_id) != "running"

    wait_for(settled, bool, RUN_TIMEOUT, interval=0.1)
    return campaign_status(app, campaign_id)


def wait_mid_run(server: SmtpTestServer) -> int:
    """Wait until MID_RUN_SENT messages arrived, and return how many had."""
    count = wait_for(lambda: len(server.messages), lambda value: value >= MID_RUN_SENT, timeout=30)
    assert count >= MID_RUN_SENT, f"only {count} messages arrived"
    return count


def check_each_recipient_once(server: SmtpTestServer) -> None:
    """Assert that each of the LIST_SIZE contacts received exactly one message."""
    counts: collections.Counter[str] = server.count_by_recipient()
    expected = {f"web-{number:05d}@example.com" for number in range(LIST_SIZE)}
    missing = expected - counts.keys()
    duplicates = {address: count for address, count in counts.items() if count > 1}
    assert not missing, f"{len(missing)} recipients got nothing, e.g. {sorted(missing)[:5]}"
    assert not duplicates, f"{len(duplicates)} recipients got duplicates, e.g. {list(duplicates.items())[:5]}"
    assert counts.keys() <= expected, f"messages to addresses outside the list: {sorted(counts.keys() - expected)[:5]}"


def test_launch_sends_each_once(process_app: Flask, operator: FlaskClient, smtp_campaign: int, smtp_server: SmtpTestServer) -> None:
    status = post_form(operator, f"/campaigns/{smtp_campaign}/launch", f"/campaigns/{smtp_campaign}", mode="background")
    final = wait_settled(process_app, smtp_campaign)

    assert status == 303
    assert final == "finished"
    check_each_recipient_once(smtp_server)


def test_stop_then_resume(process_app: Flask, operator: FlaskClient, smtp_campaign: int, smtp_server: SmtpTestServer) -> None:
    monitor = f"/jobs/{smtp_campaign}"
    post_form(operator, f"/campaigns/{smtp_campaign}/launch", f"/campaigns/{smtp_campaign}", mode="background")
    wait_mid_run(smtp_server)

    stop_status = post_form(operator, f"{monitor}/stop", monitor)
    paused = wait_settled(process_app, smtp_campaign)
    received_while_paused = len(smtp_server.messages)
    resume_status = post_form(operator, f"{monitor}/resume", monitor)
    final = wait_settled(process_app, smtp_campaign)

    assert stop_status == 303
    assert paused == "paused"
    assert received_while_paused < LIST_SIZE
    assert resume_status == 303
    assert final == "finished"
    check_each_recipient_once(smtp_server)


def test_restart_mid_run(process_app: Flask, operator: FlaskClient, smtp_campaign: int, smtp_server: SmtpTestServer) -> None:
    monitor = f"/jobs/{smtp_campaign}"
    post_form(operator, f"/campaigns/{smtp_campaign}/launch", f"/campaigns/{smtp_campaign}", mode="background")
    received_before = wait_mid_run(smtp_server)

    restart_status = post_form(operator, f"{monitor}/restart", monitor)
    final = wait_settled(process_app, smtp_campaign)

    assert received_before < LIST_SIZE
    assert restart_status == 303
    assert final == "finished"
    check_each_recipient_once(smtp_server)
