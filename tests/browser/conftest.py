"""Fixtures of the browser tests: the real app served over HTTP, headless chromium, and logging in.

The app runs in a thread of the test process with CSRF checks on, background
campaigns as plain processes, and delivery through an SMTP test server, all
on 127.0.0.1. Playwright drives Debian's chromium; it never downloads a
browser of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, expect, sync_playwright
from werkzeug.serving import BaseWSGIServer, make_server

from messagehub.auth.passwords import create_user
from messagehub.extensions import db
from messagehub.supervisor.choose import choose_supervisor
from tests import factories
from tests.conftest import PASSWORD, make_app
from tests.smtpserver import SmtpTestServer

CHROMIUM = Path("/usr/bin/chromium")
# Chromium's sandbox does not start as root, so it is off. The other flags
# keep chromium from calling home or updating itself during the tests.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--no-first-run",
    "--disable-sync",
    "--disable-component-update",
]
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
USERS = ("admin", "operator", "viewer")

# Milliseconds Playwright waits for an element or a navigation by default.
DEFAULT_TIMEOUT_MS = 15_000
# Lines the tests add for the end of pytest's output, such as where the screenshots are.
SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the browser tests' summary lines after the test results, even without -s."""
    for line in SUMMARY:
        terminalreporter.write_line(f"browser tests: {line}")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Return the path of Debian's chromium. Without it the tests skip, or fail when CI is set."""
    if CHROMIUM.exists():
        return CHROMIUM

    reason = f"{CHROMIUM} not found: install Debian's chromium package (make setup does)"
    if os.environ.get("CI") is not None:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def smtp_relay() -> Iterator[SmtpTestServer]:
    """Start the SMTP test server every campaign of the browser tests is sent through."""
    with SmtpTestServer() as server:
        yield server


@pytest.fixture(scope="session")
def live_app(tmp_path_factory: pytest.TempPathFactory, smtp_relay: SmtpTestServer) -> Iterator[Flask]:
    """Return the app on a fresh database, with CSRF on, one user per role and the SMTP relay set."""
    instance_path = tmp_path_factory.mktemp("browser") / "instance"
    instance_path.mkdir()
    app = make_app(instance_path, SUPERVISOR="process", PROCESS_STOP_TIMEOUT=20.0)
    with app.app_context():
        for role in USERS:
            create_user(db.session, role, PASSWORD, role)
        db.session.commit()
    factories.use_smtp_server(app, smtp_relay.port)

    yield app

    kill_engines(app)
    with app.app_context():
        db.engine.dispose()


def kill_engines(app: Flask) -> None:
    """Kill the engine processes this app launched that still run."""
    # Each engine leads a session of its own, so a process whose session id
    # is its own pid is an engine and not an unrelated process that got the pid.
    for state in choose_supervisor(app.config).states():
        if state.is_running and state.main_pid and os.getsid(state.main_pid) == state.main_pid:
            os.killpg(state.main_pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def live_server(live_app: Flask) -> Iterator[str]:
    """Serve the app on a free port of 127.0.0.1 with werkzeug's threaded server, and return its URL."""
    # One access-log line per request would bury a failure's own output.
    access_log = logging.getLogger("werkzeug")
    level = access_log.level
    access_log.setLevel(logging.WARNING)
    server: BaseWSGIServer = make_server("127.0.0.1", 0, live_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="browser-tests-http", daemon=True)
    thread.start()

    yield f"http://127.0.0.1:{server.server_port}"

    server.shutdown()
    thread.join(timeout=10)
    server.server_close()
    access_log.setLevel(level)


@pytest.fixture(scope="session")
def browser(chromium: Path) -> Iterator[Browser]:
    """Launch headless chromium once for the whole session."""
    expect.set_options(timeout=DEFAULT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, live_server: str) -> Iterator[Page]:
    """Open a page at laptop width in a fresh browser context, so no cookie is shared between tests."""
    context = browser.new_context(base_url=live_server, viewport=LAPTOP)
    page = context.new_page()
    page.set_default_timeout(DEFAULT_TIMEOUT_MS)

    yield page

    context.close()


def login(page: Page, username: str, password: str = PASSWORD) -> None:
    """Log in through the login form and wait for the page that greets the user."""
    page.goto("/login")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("header.top .who")).to_contain_text(f"{username} (")


def logout(page: Page) -> None:
    """Log out with the button in the header and wait for the login form."""
    page.locator("header.top").get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
