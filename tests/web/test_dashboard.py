"""The dashboard: totals of today and this month, running campaigns, provider health."""

from __future__ import annotations

import re
import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event

from messagehub.engine.process import build_runner
from messagehub.extensions import db
from messagehub.main import service
from messagehub.models import Delivery, utcnow
from tests import factories

# A fixed clock in the middle of a month, so that "this month but not today" exists.
NOW = datetime(2024, 5, 15, 12, 0, tzinfo=timezone.utc)


def add_deliveries(app, campaign_id: int, rows: list[dict]) -> None:
    with app.app_context():
        db.session.add_all(Delivery(campaign_id=campaign_id, address="x@example.com", **fields) for fields in rows)
        db.session.commit()


def make_campaign(app, **fields) -> int:
    list_id = factories.make_list(app, [{"email": "seed@example.com"}], name=f"List {fields.get('name', 'x')}")
    return factories.make_campaign(app, list_id, **fields)


def sent(at: datetime) -> dict:
    return {"status": "sent", "attempts": 1, "sent_at": at, "updated_at": at}


def failed(at: datetime, reply: str = "550 rejected") -> dict:
    return {"status": "failed", "attempts": 3, "updated_at": at, "provider_reply": reply}


def total(page: str, name: str) -> int:
    return int(re.search(rf'data-total="{name}">([\d,]+)<', page).group(1).replace(",", ""))


def health_row(page: str, name: str) -> str:
    return re.search(rf'<tr data-provider="{re.escape(name)}">(.*?)</tr>', page, re.S).group(1)


def test_totals_today_and_month(app):
    campaign_id = make_campaign(app, delivery_method="outbox", status="finished")
    start_of_day = NOW.replace(hour=0, minute=0)
    add_deliveries(app, campaign_id, [
        sent(NOW - timedelta(hours=1)),
        sent(start_of_day),
        sent(NOW - timedelta(days=3)),
        {**sent(NOW - timedelta(days=4)), "updated_at": NOW},
        sent(NOW - timedelta(days=14, hours=12)),
        sent(NOW - timedelta(days=14, hours=12, seconds=1)),
        failed(NOW - timedelta(minutes=5)),
        failed(NOW - timedelta(days=2)),
        failed(NOW - timedelta(days=40)),
        {"status": "queued", "updated_at": NOW},
        {"status": "skipped", "updated_at": NOW, "provider_reply": "unsubscribed"},
    ])

    with app.app_context():
        counted = service.totals(db.session, NOW)

    assert counted.sent_today == 2
    assert counted.failed_today == 1
    assert counted.sent_month == 5
    assert counted.failed_month == 2


def test_totals_on_first_of_month(app):
    campaign_id = make_campaign(app, delivery_method="outbox", status="finished")
    first = datetime(2024, 6, 1, 0, 30, tzinfo=timezone.utc)
    add_deliveries(app, campaign_id, [sent(first), sent(first - timedelta(hours=1))])

    with app.app_context():
        counted = service.totals(db.session, first)

    assert counted.sent_today == 1
    assert counted.sent_month == 1


def test_dashboard_shows_totals(app, client, auth):
    auth.login("viewer")
    now = utcnow()
    campaign_id = make_campaign(app, delivery_method="outbox", status="finished")
    add_deliveries(app, campaign_id, [sent(now), sent(now), failed(now), sent(now - timedelta(days=62))])

    page = client.get("/").get_data(as_text=True)

    assert total(page, "sent-today") == 2
    assert total(page, "failed-today") == 1
    assert total(page, "sent-month") == 2
    assert total(page, "failed-month") == 1


def test_provider_health_failure_share(app, client, auth, fake_twilio):
    auth.login("viewer")
    values = {"account_sid": fake_twilio.account_sid, "auth_token": fake_twilio.auth_token, "base_url": fake_twilio.url}
    account_id = factories.make_account(app, "twilio", values, 100, name="Twilio main")
    factories.make_account(app, "twilio", values, 100, name="Twilio spare")
    fake_twilio.invalid_number("+14155550104")
    phones = [{"first_name": f"P{i}", "phone": f"+1415555010{i}"} for i in range(1, 5)]
    list_id = factories.make_list(app, phones, name="Phones")
    campaign_id = factories.make_campaign(
        app, list_id, channel="sms", text_body="Hi {{ first_name }}", sms_sender="+14155550100",
        delivery_method="account", provider_account_id=account_id,
    )
    runner = build_runner(campaign_id, app.config, threading.Event())
    runner.run(campaign_id)
    runner.store.engine.dispose()

    page = client.get("/").get_data(as_text=True)

    main = health_row(page, "Twilio main")
    assert len(fake_twilio.accepted) == 3
    assert "<td>3</td>" in main
    assert "<td>1</td>" in main
    assert "25.0%" in main
    assert "+14155550104 is not a valid phone number" in main
    assert "no traffic" in health_row(page, "Twilio spare")
    assert "no traffic" in health_row(page, "SMTP server")


def test_provider_health_smtp_window(app):
    smtp_campaign = make_campaign(app, name="a", delivery_method="smtp", status="finished")
    outbox_campaign = make_campaign(app, name="b", delivery_method="outbox", status="finished")
    add_deliveries(app, smtp_campaign, [
        sent(NOW - timedelta(minutes=10)),
        failed(NOW - timedelta(minutes=20), "421 try later"),
        failed(NOW - timedelta(minutes=50), "550 no such user"),
        failed(NOW - timedelta(minutes=61), "554 older than the window"),
    ])
    add_deliveries(app, outbox_campaign, [failed(NOW - timedelta(minutes=1), "disk full")])

    with app.app_context():
        [smtp] = service.provider_health(db.session, NOW)

    assert smtp.sent == 1
    assert smtp.failed == 2
    assert smtp.failed_share == pytest.approx(200 / 3)
    assert smtp.last_error == "550 no such user"


def test_dashboard_queries_constant(app, client, auth):
    """Does the dashboard cost the same number of queries with 1 campaign as with 6?"""
    auth.login("viewer")
    client.get("/")

    def count_queries() -> int:
        statements = []

        def note(connection, cursor, statement, *rest) -> None:
            statements.append(statement)

        with app.app_context():
            engine = db.engine
        event.listen(engine, "before_cursor_execute", note)
        try:
            assert client.get("/").status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", note)
        return len(statements)

    now = utcnow()
    first = make_campaign(app, name="first", delivery_method="smtp", status="finished")
    add_deliveries(app, first, [sent(now), failed(now)])
    with_one = count_queries()
    for number in range(5):
        campaign_id = make_campaign(
            app, name=f"more {number}", delivery_method="smtp", status="running", run_mode="foreground",
            heartbeat_at=now, total=2,
        )
        add_deliveries(app, campaign_id, [sent(now), failed(now)])
    with_six = count_queries()

    assert with_one == with_six


def test_running_panel_progress(app, client, auth):
    auth.login("viewer")
    make_campaign(
        app, name="Live one", delivery_method="outbox", status="running", run_mode="foreground",
        heartbeat_at=utcnow(), total=8, sent=3, failed=1,
    )
    make_campaign(app, name="Done one", delivery_method="outbox", status="finished", total=8, sent=8)

    dashboard = client.get("/").get_data(as_text=True)
    panel = client.get("/running", headers={"HX-Request": "true"}).get_data(as_text=True)

    assert 'hx-get="/running" hx-trigger="every 2s"' in dashboard
    assert 'data-percent="50.0"' in panel
    assert panel.count('class="running-campaign"') == 1
    assert "3 sent · 1 failed" in panel
    assert "<html" not in panel


def test_running_panel_drops_dead_run(app, client, auth):
    auth.login("viewer")
    # A foreground run whose web worker died: its heartbeat stopped minutes ago.
    campaign_id = make_campaign(
        app, name="Orphan", delivery_method="outbox", status="running", run_mode="foreground",
        heartbeat_at=utcnow() - timedelta(minutes=5), total=8, sent=3,
    )

    panel = client.get("/running", headers={"HX-Request": "true"}).get_data(as_text=True)

    campaign = factories.campaign(app, campaign_id)
    assert "No campaign is sending." in panel
    assert campaign.status == "paused"
    assert campaign.last_error.startswith("Interrupted: the web app process")


def test_running_panel_empty(client, auth):
    auth.login("viewer")

    panel = client.get("/running").get_data(as_text=True)

    assert "No campaign is sending." in panel


def test_recent_campaigns_last_ten(app, client, auth):
    auth.login("viewer")
    for number in range(12):
        make_campaign(app, name=f"Campaign {number:02d}", delivery_method="outbox")

    page = client.get("/").get_data(as_text=True)

    assert "Campaign 11" in page
    assert "Campaign 02" in page
    assert "Campaign 01" not in page


def test_dashboard_viewer_no_post_forms(client, auth):
    auth.login("viewer")

    page = client.get("/").get_data(as_text=True)

    assert page.count('method="post"') == 1
    assert 'action="/logout"' in page
