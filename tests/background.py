"""Campaigns launched in the background from the web routes, with the plain-process supervisor.

Registered as a pytest plugin in tests/conftest.py, so its fixtures are
available to every test module.
"""

from __future__ import annotations

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
from tests.waiting import wait_for

# Seconds a background campaign of these tests may take to settle.
RUN_TIMEOUT = 180.0


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


def post_form(client: FlaskClient, path: str, page: str, **fields: str) -> int:
    """POST a form with the CSRF token of `page`, as a browser does, and return the status."""
    token = csrf_token(client.get(page).get_data(as_text=True))
    assert token, f"no csrf_token on {page}"
    return client.post(path, data={**fields, "csrf_token": token}).status_code


def campaign_status(app: Flask, campaign_id: int) -> str:
    """Return the campaign's status in the database."""
    return factories.campaign(app, campaign_id).status


def wait_settled(app: Flask, campaign_id: int, timeout: float = RUN_TIMEOUT) -> str:
    """Wait until the campaign's process ended and its status is no longer running, and return the status."""
    supervisor = choose_supervisor(app.config)

    def settled() -> bool:
        state = supervisor.state(campaign_id)
        return (state is None or not state.is_running) and campaign_status(app, campaign_id) != "running"

    wait_for(settled, bool, timeout, interval=0.1)
    return campaign_status(app, campaign_id)
