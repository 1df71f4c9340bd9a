"""Background runs through the web app with the plain-process supervisor."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest

from messagehub.extensions import db
from messagehub.jobs.service import launch_background
from messagehub.models import Campaign, JobEvent, utcnow
from messagehub.supervisor.base import SupervisorError, UnitState
from tests import factories
from tests.conftest import make_app


@pytest.fixture
def process_app(instance_path):
    """The app with SUPERVISOR forced to plain processes, users created, CSRF off."""
    from messagehub.auth.passwords import create_user
    from tests.conftest import PASSWORD

    app = make_app(instance_path, WTF_CSRF_ENABLED=False, SUPERVISOR="process")
    with app.app_context():
        create_user(db.session, "operator", PASSWORD, "operator")
        db.session.commit()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def logged_in(process_app):
    from tests.conftest import AuthActions

    client = process_app.test_client()
    AuthActions(client).login()
    return client


def wait_for_status(app, campaign_id: int, wanted: str, timeout: float = 60) -> Campaign:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        campaign = factories.campaign(app, campaign_id)
        if campaign.status == wanted:
            return campaign
        time.sleep(0.1)
    pytest.fail(f"campaign {campaign_id} did not reach {wanted!r}; it is {campaign.status!r}")


def history(app, campaign_id: int) -> list[str]:
    with app.app_context():
        events = db.session.execute(
            db.select(JobEvent.kind).where(JobEvent.campaign_id == campaign_id).order_by(JobEvent.id)
        ).scalars()
        return list(events)


def wait_for_exit(app, client, campaign_id: int, timeout: float = 30) -> str:
    """Refresh the monitor page, as the browser does, until the job history has the run's exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = client.get(f"/jobs/{campaign_id}").get_data(as_text=True)
        if history(app, campaign_id)[-1] == "exit":
            return page
        time.sleep(0.1)
    pytest.fail(f"no exit recorded for campaign {campaign_id}: {history(app, campaign_id)}")


def outbox_campaign(app, count: int) -> int:
    contacts = [{"email": f"p{i}@example.com", "first_name": f"P{i}"} for i in range(count)]
    return factories.make_campaign(app, factories.make_list(app, contacts), delivery_method="outbox")


def test_background_launch_runs_to_end(process_app, logged_in, instance_path):
    campaign_id = outbox_campaign(process_app, 30)

    response = logged_in.post(f"/campaigns/{campaign_id}/launch", data={"mode": "background"})

    assert response.status_code == 303
    assert response.headers["Location"] == f"/jobs/{campaign_id}"
    wait_for_status(process_app, campaign_id, "finished")
    page = wait_for_exit(process_app, logged_in, campaign_id)

    assert len(list((instance_path / "outbox").rglob("*.eml"))) == 30
    assert "finished campaign" in page
    assert history(process_app, campaign_id) == ["launch", "exit"]


class RejectingSupervisor:
    """A supervisor whose manager rejects every start, as systemd does for a broken unit file."""

    name = "refusing"

    def launch(self, campaign_id: int) -> None:
        raise SupervisorError("Unit messagehub-campaign@.service has a bad setting.")


def test_refused_launch_leaves_draft_unqueued(app):
    campaign_id = outbox_campaign(app, 5)

    with app.app_context():
        campaign = db.session.get(Campaign, campaign_id)
        with pytest.raises(SupervisorError, match="bad setting"):
            launch_background(db.engine, db.session, RejectingSupervisor(), campaign, "admin")

    assert factories.campaign(app, campaign_id).status == "draft"
    assert factories.deliveries(app, campaign_id) == []


@pytest.mark.parametrize("action", ["resume", "restart"])
def test_draft_not_started_from_jobs(process_app, logged_in, instance_path, action):
    # Only the launch form checks the audience first, so a draft starts there alone.
    campaign_id = outbox_campaign(process_app, 3)

    page = logged_in.post(f"/jobs/{campaign_id}/{action}", follow_redirects=True).get_data(as_text=True)

    assert f"Campaign {campaign_id} has not been launched yet" in page
    assert factories.campaign(process_app, campaign_id).status == "draft"
    assert factories.deliveries(process_app, campaign_id) == []
    time.sleep(1.0)
    assert not list((instance_path / "outbox").rglob("*.eml"))


@pytest.mark.parametrize("action", ["resume", "restart"])
def test_foreground_run_not_doubled(process_app, logged_in, instance_path, action):
    # A run in the web app, alive a second ago: a background run beside it
    # would take its messages in flight for a dead run's and send them again.
    contacts = [{"email": f"p{i}@example.com", "first_name": f"P{i}"} for i in range(3)]
    campaign_id = factories.make_campaign(
        process_app, factories.make_list(process_app, contacts), delivery_method="outbox",
        status="running", run_mode="foreground", started_at=utcnow(), heartbeat_at=utcnow(),
    )

    page = logged_in.post(f"/jobs/{campaign_id}/{action}", follow_redirects=True).get_data(as_text=True)

    assert f"Campaign {campaign_id} is sending in the web app" in page
    assert factories.campaign(process_app, campaign_id).status == "running"
    assert history(process_app, campaign_id) == []
    time.sleep(1.0)
    assert not list((instance_path / "outbox").rglob("*.eml"))


def test_unconfigured_smtp_stops_launch(process_app, logged_in):
    contacts = [{"email": "p1@example.com", "first_name": "P1"}]
    campaign_id = factories.make_campaign(process_app, factories.make_list(process_app, contacts), delivery_method="smtp")

    page = logged_in.post(
        f"/campaigns/{campaign_id}/launch", data={"mode": "background"}, follow_redirects=True
    ).get_data(as_text=True)

    assert "SMTP is not configured: set the server in Settings first." in page
    assert factories.campaign(process_app, campaign_id).status == "draft"
    assert factories.deliveries(process_app, campaign_id) == []


@pytest.mark.parametrize(
    ("result", "exit_status", "words"),
    [
        ("signal", 9, "killed by signal 9 (SIGKILL)"),
        ("signal", 15, "killed by signal 15 (SIGTERM)"),
        ("exit-code", 2, "exit-code, exit status 2"),
        ("watchdog", None, "watchdog"),
    ],
)
def test_unit_ending_in_words(result, exit_status, words):
    state = UnitState(1, "messagehub-campaign@1.service", "failed", "failed", exit_status=exit_status, result=result)

    assert state.ending == words


def test_jobs_page_lists_unit(process_app, logged_in):
    campaign_id = outbox_campaign(process_app, 5)
    logged_in.post(f"/campaigns/{campaign_id}/launch", data={"mode": "background"})

    rows = logged_in.get("/jobs/", headers={"HX-Request": "true"}).get_data(as_text=True)

    assert f'data-campaign="{campaign_id}"' in rows
    assert f"messagehub-campaign@{campaign_id}.service" in rows


def test_stop_then_resume(process_app, logged_in, shared_data, instance_path):
    report = factories.import_file(process_app, shared_data / "contacts-10k.csv")
    campaign_id = factories.make_campaign(process_app, report.list_id, delivery_method="outbox")
    logged_in.post(f"/campaigns/{campaign_id}/launch", data={"mode": "background"})
    outbox = instance_path / "outbox"
    deadline = time.monotonic() + 60
    while len(list(outbox.rglob("*.eml"))) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)

    logged_in.post(f"/jobs/{campaign_id}/stop")
    paused = wait_for_status(process_app, campaign_id, "paused")
    wait_for_exit(process_app, logged_in, campaign_id)
    logged_in.post(f"/jobs/{campaign_id}/resume")
    finished = wait_for_status(process_app, campaign_id, "finished", timeout=300)

    assert 0 < paused.sent < finished.sent
    files = list(outbox.rglob("*.eml"))
    assert len(files) == finished.sent
    assert len({f.name for f in files}) == len(files)
    assert history(process_app, campaign_id)[:3] == ["launch", "stop", "exit"]
    assert "resume" in history(process_app, campaign_id)


def test_gone_process_shows_interrupted(process_app, logged_in):
    campaign_id = outbox_campaign(process_app, 3)
    with process_app.app_context():
        campaign = db.session.get(Campaign, campaign_id)
        campaign.status = "running"
        campaign.run_mode = "background"
        db.session.commit()

    rows = logged_in.get("/jobs/", headers={"HX-Request": "true"}).get_data(as_text=True)

    assert "interrupted" in rows
    assert '<span class="problem">Interrupted: ' in rows
    assert "Resume" in rows
    assert factories.campaign(process_app, campaign_id).status == "paused"


def test_monitor_rate_uses_the_clock(process_app, logged_in):
    list_id = factories.make_list(process_app, [{"email": "a@example.com"}])
    campaign_id = factories.make_campaign(process_app, list_id)
    with process_app.app_context():
        campaign = db.session.get(Campaign, campaign_id)
        campaign.status = "running"
        campaign.total, campaign.sent = 1_000, 100
        campaign.started_at = utcnow() - timedelta(seconds=20)
        # A heartbeat from 1 s after the start, as a lagging one would be.
        campaign.heartbeat_at = campaign.started_at + timedelta(seconds=1)
        db.session.commit()

    page = logged_in.get(f"/jobs/{campaign_id}", headers={"HX-Request": "true"}).get_data(as_text=True)

    assert re.search(r"<strong>(4\.\d|5\.0)</strong>messages/s", page), page
    assert re.search(r"<strong>1(7\d|8\d|9\d) s</strong>time left", page), page

    with process_app.app_context():
        db.session.get(Campaign, campaign_id).status = "paused"
        db.session.commit()
    page = logged_in.get(f"/jobs/{campaign_id}", headers={"HX-Request": "true"}).get_data(as_text=True)

    assert "<strong>—</strong>messages/s" in page
