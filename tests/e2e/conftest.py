"""Fixtures of the end-to-end tests: a wheelhouse, and MessageHub installed in a booted systemd container."""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.waiting import wait_for

from tests.e2e.sandbox import SystemdContainer

REPO = Path(__file__).resolve().parents[2]
WEBCLIENT = REPO / "tests" / "e2e" / "webclient.py"

PREFIX = "/opt/messagehub"
STATE_DIR = "/var/lib/messagehub"
APP_PYTHON = f"{PREFIX}/venv/bin/python"
ADMIN = "admin"
ADMIN_PASSWORD = "e2e admin password"
SMTP_PORT = 2525
SMTP_UNIT = "smtp-sink-test.service"
WEB_UNIT = "messagehub-web.service"

# Big enough that a run lasts a few seconds at the engine's pace (about 400
# messages a second to the local test server, measured on a 2-CPU VM), so
# the tests can stop or kill a unit while it sends.
LIST_SIZE = 2000
# The engine sends the list in about a second. A delay before each final
# reply stretches a run to several seconds, so that the tests can look at it,
# stop it and kill it while it sends.
SMTP_REPLY_DELAY = 0.005

# Runs inside the container as the messagehub user with the installed app.
# Commands: "smtp PORT", "import NAME CSV", "emails LIST_ID", "campaign ID".
APP_SNIPPET = '''
import json, sys
from pathlib import Path
from messagehub import create_app
from messagehub.extensions import db

app = create_app()
command, *args = sys.argv[1:]
with app.app_context():
    if command == "smtp":
        from messagehub.delivery_settings import save_smtp_settings
        from messagehub.providers.smtp import SmtpSettings
        settings = SmtpSettings(host="127.0.0.1", port=int(args[0]), security="none", timeout=10.0)
        save_smtp_settings(db.session, app.config["SECRET_KEY"], settings, keep_password=False)
        db.session.commit()
        print(json.dumps({"saved": True}))
    elif command == "import":
        from messagehub.contacts.loading import load_file, start_report
        from messagehub.models import ContactList
        path = Path(args[1])
        contact_list = ContactList(name=args[0])
        db.session.add(contact_list)
        db.session.flush()
        report = start_report(db.session, contact_list.id, path.name, path.stat().st_size)
        db.session.commit()
        load_file(db.engine, report.id, path, None)
        print(json.dumps({"list_id": contact_list.id}))
    elif command == "emails":
        from messagehub.models import Contact
        rows = db.session.query(Contact.email).filter(Contact.list_id == int(args[0])).all()
        print(json.dumps([row[0] for row in rows]))
    elif command == "campaign":
        from messagehub.models import Campaign
        campaign = db.session.get(Campaign, int(args[0]))
        print(json.dumps({"status": campaign.status, "last_error": campaign.last_error}))
    elif command == "unconfirmed":
        from messagehub.models import Delivery
        rows = db.session.query(Delivery.address).filter(
            Delivery.campaign_id == int(args[0]), Delivery.provider_reply.like("unconfirmed%")
        ).all()
        print(json.dumps([row[0] for row in rows]))
'''




def require_sandbox() -> None:
    """Skip when this machine cannot boot a container, but fail instead under CI."""
    status = SystemdContainer.available()
    if status:
        return

    if os.environ.get("CI"):
        pytest.fail(f"CI must run the systemd container tests: {status.reason}")

    pytest.skip(status.reason)


def build_wheelhouse() -> Path:
    """Build wheels of the project's dependencies once per setup.cfg, for an offline `make install`."""
    digest = hashlib.sha256((REPO / "setup.cfg").read_bytes() + (REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    wheelhouse = Path(sys.prefix) / f"wheelhouse-{digest}"
    if (wheelhouse / ".complete").exists():
        return wheelhouse

    # setuptools and wheel are the build requirements of pyproject.toml: pip
    # needs them in the wheelhouse to build the project itself offline.
    partial = Path(tempfile.mkdtemp(prefix="wheelhouse-", dir=Path(sys.prefix)))
    command = [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(partial), str(REPO), "setuptools", "wheel"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    if result.returncode != 0:
        shutil.rmtree(partial)
        pytest.fail(f"pip wheel failed (pystemd and systemd-python need libsystemd-dev and pkg-config):\n{result.stderr[-3000:]}")

    # `make install` builds the project from its copy in PREFIX, never from a wheel.
    for wheel in partial.glob("messagehub-*.whl"):
        wheel.unlink()
    (partial / ".complete").touch()
    shutil.rmtree(wheelhouse, ignore_errors=True)
    partial.rename(wheelhouse)
    return wheelhouse


def write_contacts(path: Path, count: int) -> list[str]:
    """Write a CSV of `count` distinct, valid contacts and return their addresses."""
    addresses = [f"e2e-{number:05d}@example.com" for number in range(count)]
    with open(path, "w", newline="", encoding="utf-8") as output:
        writer = csv.writer(output)
        writer.writerow(["email", "first_name", "last_name"])
        for number, address in enumerate(addresses):
            writer.writerow([address, f"First{number}", f"Last{number}"])

    return addresses


class Deployment:
    """MessageHub installed with `make install` in a running container, driven as a user would."""

    def __init__(self, container: SystemdContainer, scratch: Path) -> None:
        self.container = container
        self.scratch = scratch
        self.received_dir = scratch / "received"
        self.snippet = scratch / "app_snippet.py"
        self.list_id = 0
        self.addresses: list[str] = []

    def run(self, *cmd: str, user: str | None = None, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a command in the container (see SystemdContainer.run)."""
        return self.container.run(list(cmd), user=user, check=check, timeout=timeout)

    def app(self, *args: str) -> object:
        """Run APP_SNIPPET as the messagehub user with the installed app and return its JSON output."""
        result = self.run(
            "env", f"MESSAGEHUB_INSTANCE_PATH={STATE_DIR}", APP_PYTHON, str(self.snippet), *args, user="messagehub"
        )
        return json.loads(result.stdout.strip().splitlines()[-1])

    def web(self, *args: str) -> dict:
        """Run webclient.py inside the container as the admin and return its JSON result."""
        command = ["/usr/bin/python3", str(WEBCLIENT), "--user", ADMIN, "--password", ADMIN_PASSWORD, *args]
        result = self.run(*command)
        return json.loads(result.stdout)

    def create_campaign(self, sender: str, name: str) -> int:
        """Create a campaign of the test list through the web form; its sender identifies its messages."""
        response = self.web(
            "create-campaign",
            f"name={name}",
            f"list_id={self.list_id}",
            "subject=Hello {{ first_name }}",
            "from_name=MessageHub E2E",
            f"from_email={sender}",
            "reply_to=",
            "text_body=Hello {{ first_name }}, this is a test.",
            "html_body=<p>Hello {{ first_name }}, this is a test.</p>",
            "delivery_method=smtp",
        )
        assert response["campaign_id"], f"campaign not created: status {response['status']}, {response['flashes']}"
        return int(response["campaign_id"])

    def launch(self, campaign_id: int) -> dict:
        """Launch a campaign in the background from its page, as the Launch button does."""
        return self.web("post", "--page", f"/campaigns/{campaign_id}", f"/campaigns/{campaign_id}/launch", "mode=background")

    def received(self, sender: str) -> collections.Counter[str]:
        """Count the messages from `sender` per recipient in the SMTP server's record folder."""
        counts: collections.Counter[str] = collections.Counter()
        for path in self.received_dir.glob("*.json"):
            envelope = json.loads(path.read_text())
            if envelope["sender"] == sender:
                counts.update(address.casefold() for address in envelope["recipients"])

        return counts

    def unit(self, campaign_id: int) -> dict[str, str]:
        """Return the systemd properties the tests check of a campaign unit."""
        names = ("ActiveState", "SubState", "Result", "NRestarts", "ExecMainStatus", "MainPID", "StatusText")
        return self.container.unit_properties(unit_name(campaign_id), *names)

    def wait_inactive(self, campaign_id: int, timeout: float = 60.0) -> dict[str, str]:
        """Wait until the campaign's unit is no longer running or restarting, and return its properties."""
        return wait_for(
            lambda: self.unit(campaign_id),
            lambda props: props["ActiveState"] in ("inactive", "failed"),
            timeout,
        )

    def diagnostics(self, campaign_id: int) -> str:
        """Return the unit's status, its journal tail and the web app's journal tail, for failure messages."""
        status = self.run("systemctl", "status", "--no-pager", "--lines=0", unit_name(campaign_id), check=False)
        journal = self.run("journalctl", "--no-pager", "--lines=30", f"--unit={unit_name(campaign_id)}", check=False)
        web = self.run("journalctl", "--no-pager", "--lines=15", f"--unit={WEB_UNIT}", check=False)
        return f"\n--- unit status\n{status.stdout}\n--- unit journal\n{journal.stdout}\n--- web journal\n{web.stdout}"


def unit_name(campaign_id: int) -> str:
    """Return the systemd unit of a campaign."""
    return f"messagehub-campaign@{campaign_id}.service"


def install(deployment: Deployment, wheelhouse: Path) -> None:
    """Run `make install` offline from the bound checkout, as an administrator would."""
    # make install only reads the checkout: it copies the app to PREFIX and builds it there.
    result = deployment.run(
        "make", "-C", str(REPO), "install", f"PIP_OPTIONS=--no-index --find-links={wheelhouse}", check=False, timeout=300
    )
    assert result.returncode == 0, f"make install failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def start_web(deployment: Deployment) -> None:
    """Start the web unit, create the admin and wait until the login page responds."""
    deployment.run("systemctl", "start", WEB_UNIT, timeout=60)
    deployment.run(
        "env", f"MESSAGEHUB_INSTANCE_PATH={STATE_DIR}", f"{PREFIX}/venv/bin/messagehub",
        "user", "create", ADMIN, "--role", "admin", "--password", ADMIN_PASSWORD,
        user="messagehub",
    )
    login_status = wait_for(
        lambda: deployment.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:5000/login", check=False).stdout,
        lambda status: status == "200",
        timeout=30,
    )
    assert login_status == "200", f"login page answered {login_status!r}"


def start_smtp_sink(deployment: Deployment) -> None:
    """Run tests/smtpserver.py as a unit in the container, with the checkout's virtualenv (it has aiosmtpd)."""
    deployment.received_dir.mkdir()
    deployment.run(
        "systemd-run", f"--unit={SMTP_UNIT}", f"--property=WorkingDirectory={REPO}",
        f"--setenv=PYTHONPATH={REPO}", "--setenv=PYTHONDONTWRITEBYTECODE=1",
        f"{sys.prefix}/bin/python", "-m", "tests.smtpserver",
        "--port", str(SMTP_PORT), "--record-dir", str(deployment.received_dir),
        "--reply-delay", str(SMTP_REPLY_DELAY),
    )
    listening = wait_for(
        lambda: deployment.run("ss", "-Hltn", f"sport = :{SMTP_PORT}", check=False).stdout.strip(),
        bool,
        timeout=15,
    )
    assert listening, f"SMTP test server is not listening:\n{deployment.container.journal(SMTP_UNIT)}"


def prepare_data(deployment: Deployment) -> None:
    """Store the SMTP settings and import the contact list the campaigns send to."""
    deployment.snippet.write_text(APP_SNIPPET)
    deployment.app("smtp", str(SMTP_PORT))

    contacts = deployment.scratch / "contacts.csv"
    deployment.addresses = write_contacts(contacts, LIST_SIZE)
    deployment.list_id = int(deployment.app("import", "E2E recipients", str(contacts))["list_id"])

    imported = deployment.app("emails", str(deployment.list_id))
    assert len(imported) == LIST_SIZE, f"imported {len(imported)} of {LIST_SIZE} contacts"


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """Return a folder of wheels of every dependency, built once per setup.cfg and cached in the virtualenv."""
    require_sandbox()
    return build_wheelhouse()


@pytest.fixture(scope="module")
def e2e_scratch() -> Iterator[Path]:
    """Create a host folder bound into the container, readable by its messagehub user."""
    # Not under /tmp: the container's boot cleans /tmp with systemd-tmpfiles.
    path = Path(tempfile.mkdtemp(prefix="messagehub-e2e-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def deployment(wheelhouse: Path, e2e_scratch: Path) -> Iterator[Deployment]:
    """Boot a container, `make install` MessageHub in it, start the web app and an SMTP server, import a list."""
    started = time.monotonic()
    with SystemdContainer([REPO, e2e_scratch], lifetime=900, tmpfs_size="2G") as container:
        deployment = Deployment(container, e2e_scratch)
        install(deployment, wheelhouse)
        start_web(deployment)
        start_smtp_sink(deployment)
        prepare_data(deployment)
        print(f"\ncontainer booted in {container.boot_seconds:.1f} s, ready after {time.monotonic() - started:.1f} s")
        yield deployment


def status_line(text: str) -> re.Match[str] | None:
    """Find the progress figures ("sent N of M") in `systemctl status` output."""
    return re.search(r'Status: "(?:finished: )?sent (\d+) of (\d+)', text)
