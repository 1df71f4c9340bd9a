"""Launch, stop, resume and restart from the web routes with the plain-process supervisor.

The same steps as tests/e2e/test_campaign_units.py, without systemd: the app
runs with SUPERVISOR = "process" and CSRF checks on, each campaign runs as a
detached engine process, and a real SMTP server on 127.0.0.1 counts what
every recipient receives.
"""

from __future__ import annotations

import collections

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests import factories
from tests.background import post_form, wait_settled
from tests.smtpserver import SmtpTestServer
from tests.waiting import wait_for

LIST_SIZE = 2000
MID_RUN_SENT = 300


@pytest.fixture
def smtp_campaign(process_app: Flask, smtp_server: SmtpTestServer) -> int:
    """Create a campaign to LIST_SIZE distinct contacts, sent through the test SMTP server."""
    contacts = [{"email": f"web-{number:05d}@example.com", "first_name": f"P{number}"} for number in range(LIST_SIZE)]
    list_id = factories.make_list(process_app, contacts)
    factories.use_smtp_server(process_app, smtp_server.port)
    return factories.make_campaign(process_app, list_id, delivery_method="smtp")


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
