"""Fixtures shared by every test: the app on a fresh database, clients, sample data, SMTP."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from messagehub import create_app
from messagehub.auth.passwords import create_user
from messagehub.extensions import db
from tests.smtpserver import SmtpTestServer

pytest_plugins = ["tests.fakes.http_fixtures", "tests.fakes.aws_fixtures", "tests.background"]

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep MESSAGEHUB_* variables of the machine out of every test."""
    for name in list(os.environ):
        if name.startswith("MESSAGEHUB_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Return the sample contact files, which sit in ../shared/data beside the checkout."""
    path = (REPO / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.fail(f"sample data folder not found: {path}")
    return path


@pytest.fixture
def instance_path(tmp_path: Path) -> Path:
    """Return an empty instance folder for one test."""
    path = tmp_path / "instance"
    path.mkdir()
    return path


def make_app(instance_path: Path, **config) -> Flask:
    """Create the app on a migrated SQLite database in ``instance_path``."""
    from flask_migrate import upgrade

    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(instance_path),
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{instance_path / 'messagehub.db'}",
            "RETRY_BASE_SECONDS": 0.2,
            "RETRY_MAX_SECONDS": 1.0,
            "SMTP_TIMEOUT": 5.0,
            "EVENT_INTERVAL": 0.05,
            **config,
        }
    )
    with app.app_context():
        upgrade(directory=str(REPO / "migrations"))
    return app


@pytest.fixture
def app(instance_path: Path) -> Iterator[Flask]:
    """Return the app with CSRF checks off; tests of CSRF use ``csrf_app``."""
    app = make_app(instance_path, WTF_CSRF_ENABLED=False)
    with app.app_context():
        for role in ("admin", "operator", "viewer"):
            create_user(db.session, role, PASSWORD, role)
        db.session.commit()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask):
    return app.test_cli_runner()


class AuthActions:
    """Log in and out through the real login form."""

    def __init__(self, client: FlaskClient):
        self.client = client

    def login(self, username: str = "operator", password: str = PASSWORD):
        page = self.client.get("/login")
        token = csrf_token(page.get_data(as_text=True))
        return self.client.post("/login", data={"username": username, "password": password, "csrf_token": token})

    def logout(self):
        return self.client.post("/logout")


def csrf_token(html: str) -> str:
    """Return the CSRF token of the first form in ``html``, or an empty string."""
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="csrf_token" value="([^"]+)"', html
    )
    return match.group(1) if match else ""


@pytest.fixture
def auth(client: FlaskClient) -> AuthActions:
    return AuthActions(client)


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    """Start a real SMTP server (aiosmtpd) on 127.0.0.1 for one test."""
    with SmtpTestServer() as server:
        yield server
