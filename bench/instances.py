"""MessageHub instances for the benchmarks of the web app, the launch path and the API senders.

An instance is a folder holding a migrated SQLite database with an operator
user, a list of synthetic contacts and draft campaigns, plus a ``config.py``
that both the web app and the campaign processes read. ``WebServer`` serves
an instance with Flask's development server (werkzeug, threaded) on
127.0.0.1, and ``login`` returns an HTTP session logged in through the real
login form, CSRF token included.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import requests
from sqlalchemy import insert
from sqlalchemy.orm import Session

from smtp_throughput import CITIES, FIRST_NAMES, HTML_BODY, INSERT_CHUNK, REPO, SUBJECT, TEXT_BODY, free_port, stop_process

OPERATOR = "bench-operator"
PASSWORD = "bench operator password"

# Seconds a stop may take: the engine pauses after the message in flight,
# which a slow SMTP sink can hold back for a while.
STOP_TIMEOUT = 30.0

CSRF_FIELD = re.compile(r'name="csrf_token"(?: type="hidden")? value="([^"]+)"')


def create_instance(directory: Path, config: dict[str, object]) -> Path:
    """Create an instance folder with ``config`` as its config.py, a migrated database and the operator user."""
    from flask_migrate import upgrade

    from messagehub.auth.passwords import create_user

    instance_path = directory / "instance"
    instance_path.mkdir(parents=True)
    lines = [f"{name} = {value!r}" for name, value in config.items()]
    (instance_path / "config.py").write_text("\n".join(lines) + "\n", encoding="utf-8")

    with database_session(instance_path) as session:
        upgrade(directory=str(REPO / "migrations"))
        create_user(session, OPERATOR, PASSWORD, "operator")

    return instance_path


@contextmanager
def database_session(instance_path: Path) -> Iterator[Session]:
    """Yield the web app's session on the instance's database, and commit when the block ends."""
    from messagehub import create_app
    from messagehub.extensions import db

    app = create_app({"INSTANCE_PATH": str(instance_path), "LOG_LEVEL": "WARNING"})
    with app.app_context():
        yield db.session
        db.session.commit()
        db.engine.dispose()


def insert_contacts(session: Session, recipients: int, with_phones: bool = False) -> int:
    """Insert a list of ``recipients`` synthetic contacts, optionally with E.164 numbers, and return its id."""
    from messagehub.models import Contact, ContactList

    contact_list = ContactList(name=f"Benchmark {recipients}")
    session.add(contact_list)
    session.flush()

    for start in range(0, recipients, INSERT_CHUNK):
        rows = [
            contact_row(contact_list.id, index, with_phones)
            for index in range(start, min(start + INSERT_CHUNK, recipients))
        ]
        session.execute(insert(Contact), rows)

    return contact_list.id


def contact_row(list_id: int, index: int, with_phones: bool) -> dict[str, object]:
    """Return the column values of synthetic contact number ``index``."""
    address = f"reader{index}@example.com"
    return {
        "list_id": list_id,
        "email": address,
        "email_key": address,
        "first_name": FIRST_NAMES[index % len(FIRST_NAMES)],
        "last_name": f"Reader {index}",
        # German mobile numbers of 13 digits, unique per contact and in E.164 form.
        "phone": f"+49151{index:08d}" if with_phones else None,
        "attributes": {"city": CITIES[index % len(CITIES)]},
    }


def insert_campaigns(session: Session, list_id: int, count: int, **fields: object) -> list[int]:
    """Insert ``count`` draft campaigns for the list and return their ids.

    Without ``fields`` they are email campaigns sent over SMTP with the
    templates of the SMTP benchmark. ``fields`` sets other Campaign columns.
    """
    from messagehub.models import Campaign

    values = {
        "list_id": list_id,
        "subject": SUBJECT,
        "from_name": "Reading Club",
        "from_email": "news@example.com",
        "text_body": TEXT_BODY,
        "html_body": HTML_BODY,
        "delivery_method": "smtp",
        **fields,
    }
    campaigns = [Campaign(name=f"Benchmark {number + 1}", **values) for number in range(count)]
    session.add_all(campaigns)
    session.flush()

    return [campaign.id for campaign in campaigns]


def use_smtp_server(session: Session, port: int) -> None:
    """Point the instance's SMTP settings at a server on 127.0.0.1 without TLS or authentication."""
    from flask import current_app

    from messagehub.delivery_settings import save_smtp_settings
    from messagehub.providers.smtp import SmtpSettings

    settings = SmtpSettings(host="127.0.0.1", port=port, security="none", local_hostname="bench.example.com")
    save_smtp_settings(session, current_app.config["SECRET_KEY"], settings, keep_password=False)


class WebServer:
    """The web app served by ``flask run`` (werkzeug, threaded) on a free port of 127.0.0.1, in a process of its own.

    ``environment`` adds variables to the server's environment, which every
    campaign process it launches inherits.
    """

    def __init__(self, instance_path: Path, environment: dict[str, str] | None = None):
        self.instance_path = instance_path
        self.port = free_port()
        self.environment = {**os.environ, **(environment or {}), "MESSAGEHUB_INSTANCE_PATH": str(instance_path)}
        self.log_path = instance_path / "web.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> WebServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Return the server's base URL, such as http://127.0.0.1:40123."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it serves the login page."""
        command = [
            sys.executable, "-m", "flask", "--app", "wsgi:app", "run",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--with-threads", "--no-reload", "--no-debugger",
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=self.environment, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_until_serving()

    def _wait_until_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"web server exited with status {self.process.returncode}: {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/login", timeout=2.0).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)

        raise TimeoutError(f"web server did not respond on {self.url} within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        """Return the end of the server's output, for error messages."""
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """Stop the server by its pid; campaign processes it launched keep running (see ``stop_campaigns``)."""
        if self.process is not None:
            stop_process(self.process)


def login(base_url: str) -> requests.Session:
    """Return an HTTP session logged in as the operator through the login form."""
    session = requests.Session()
    token = form_token(session, f"{base_url}/login")
    response = session.post(
        f"{base_url}/login",
        data={"username": OPERATOR, "password": PASSWORD, "csrf_token": token},
        allow_redirects=False,
        timeout=30.0,
    )
    if response.status_code != 303:
        raise RuntimeError(f"login as {OPERATOR} failed with status {response.status_code}")

    return session


def form_token(session: requests.Session, page_url: str) -> str:
    """Return the CSRF token of the first form on a page, as a browser submits it."""
    response = session.get(page_url, timeout=30.0)
    response.raise_for_status()
    match = CSRF_FIELD.search(response.text)
    if match is None:
        raise RuntimeError(f"no csrf_token field on {page_url}")

    return match.group(1)


def launch_in_background(session: requests.Session, base_url: str, campaign_id: int) -> requests.Response:
    """Launch a campaign in the background through its page's form, without following the redirect."""
    token = form_token(session, f"{base_url}/campaigns/{campaign_id}")
    return post_launch(session, base_url, campaign_id, token)


def post_launch(session: requests.Session, base_url: str, campaign_id: int, token: str) -> requests.Response:
    """POST the launch form of a campaign in background mode, and raise unless the app redirects to the monitor."""
    response = session.post(
        f"{base_url}/campaigns/{campaign_id}/launch",
        data={"mode": "background", "csrf_token": token},
        allow_redirects=False,
        timeout=60.0,
    )
    if response.status_code != 303 or "/jobs/" not in response.headers.get("Location", ""):
        raise RuntimeError(
            f"launching campaign {campaign_id} failed: status {response.status_code}, "
            f"redirect to {response.headers.get('Location')!r}"
        )

    return response


def stop_campaigns(instance_path: Path) -> None:
    """Stop every campaign process of the instance that still runs, all at once, and wait for them to exit.

    The engine pauses its campaign on SIGTERM. A process still running after
    ``STOP_TIMEOUT`` gets SIGKILL, sent to its own process group only.
    """
    from messagehub.supervisor.process import ProcessSupervisor

    supervisor = ProcessSupervisor(instance_path, stop_timeout=STOP_TIMEOUT)
    running = [state for state in supervisor.states() if state.is_running]
    with ThreadPoolExecutor(max_workers=max(len(running), 1)) as pool:
        list(pool.map(lambda state: stop_campaign(supervisor, state.campaign_id), running))

    for state in supervisor.states():
        # Each engine leads a session of its own, so its pid is its group id.
        if state.is_running and state.main_pid and os.getsid(state.main_pid) == state.main_pid:
            os.killpg(state.main_pid, signal.SIGKILL)


def stop_campaign(supervisor, campaign_id: int) -> None:
    """Stop one campaign's process, which may have ended on its own in the meantime."""
    from messagehub.supervisor.base import UnitNotFound

    try:
        supervisor.stop(campaign_id)
    except UnitNotFound:
        pass
