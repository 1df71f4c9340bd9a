"""The web flow: import, create, check, preview, test send, send now with live progress."""

from __future__ import annotations

import email
import email.policy
import time
from datetime import timedelta
from pathlib import Path

import pytest
from markupsafe import escape

from messagehub.extensions import db
from messagehub.models import ContactList, ImportReport, utcnow
from tests import factories


def wait_for_import(client, report_url: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = client.get(report_url, headers={"HX-Request": "true"}).get_data(as_text=True)
        if "Importing…" not in page:
            return page
        time.sleep(0.2)
    pytest.fail("the import did not finish")


def upload(client, list_id: int, path: Path, country: str = ""):
    with path.open("rb") as file:
        response = client.post(
            f"/contacts/{list_id}/imports",
            data={"file": (file, path.name), "default_country": country},
            content_type="multipart/form-data",
        )
    # Werkzeug's test client spools a large multipart body into a temporary
    # file that it leaves open; close it here rather than in the garbage collector.
    response.request.environ["wsgi.input"].close()
    return response


def create_list(app, client, name: str = "Customers") -> int:
    response = client.post("/contacts/", data={"name": name})
    assert response.status_code == 303
    with app.app_context():
        return db.session.execute(db.select(ContactList.id).where(ContactList.name == name)).scalar_one()


def test_import_through_page(app, client, auth, shared_data):
    auth.login()
    list_id = create_list(app, client)

    response = upload(client, list_id, shared_data / "contacts-10k-excel-bom.csv")
    page = wait_for_import(client, response.headers["Location"])

    assert "Import finished" in page
    assert "semicolons" in page
    assert "Read as UTF-8 with byte order mark" in page
    with app.app_context():
        report = db.session.execute(db.select(ImportReport)).scalar_one()
        first_problem = report.problems[0]
        assert report.added > 9000
        assert report.rejected > 0
        assert f"<td>{first_problem.line}</td>" in page
        assert str(escape(first_problem.reason)) in page


def test_import_of_nothing_is_failure(app, client, auth, tmp_path):
    auth.login()
    list_id = create_list(app, client)
    path = tmp_path / "bad.csv"
    path.write_text("email,first_name\nnot-an-address,Ann\n@@,Bob\n")

    response = upload(client, list_id, path)
    page = wait_for_import(client, response.headers["Location"])

    assert "Import failed" in page
    assert "No contact was loaded" in page
    assert "<td>2</td>" in page
    assert "<td>3</td>" in page


def test_import_of_non_csv_explained(app, client, auth, tmp_path):
    auth.login()
    list_id = create_list(app, client)
    path = tmp_path / "photo.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)

    response = upload(client, list_id, path)
    page = wait_for_import(client, response.headers["Location"])

    assert "Import failed" in page


def campaign_form(list_id: int, **fields) -> dict:
    return {
        "name": "Welcome",
        "list_id": str(list_id),
        "subject": "Welcome, {{ first_name | default('friend') }}",
        "from_name": "Ada at Example",
        "from_email": "ada@example.com",
        "reply_to": "",
        "text_body": "Hello {{ first_name | default('there') }} from {{ city | default('your town') }}",
        "html_body": "<p>Hello {{ first_name | default('there') }}</p>",
        "delivery_method": "outbox",
        **fields,
    }


def test_campaign_form_rejects_header_breaks(app, client, auth):
    auth.login()
    list_id = create_list(app, client)

    response = client.post("/campaigns/new", data=campaign_form(list_id, from_name="Ada\r\nBcc: x@example.org"))

    assert response.status_code == 400
    assert "Line breaks are not allowed here." in response.get_data(as_text=True)
    assert 'value="Welcome"' in response.get_data(as_text=True)


def test_campaign_form_names_template_error(app, client, auth):
    auth.login()
    list_id = create_list(app, client)

    response = client.post("/campaigns/new", data=campaign_form(list_id, text_body="Hello {{ first_name "))

    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "line 1" in page.lower()


def test_check_names_missing_fields(app, client, auth):
    auth.login()
    list_id = factories.make_list(
        app, [{"email": "a@example.com", "first_name": "Ann"}, {"email": "b@example.com", "first_name": ""}]
    )
    client.post("/campaigns/new", data=campaign_form(list_id, subject="Hi {{ first_name }}"))

    check = client.get("/campaigns/1/check").get_data(as_text=True)
    refused = client.post("/campaigns/1/launch", data={"mode": "foreground"})

    assert "1 of 2 recipients cannot be personalised" in check
    assert "b@example.com" in check
    assert "first_name" in check
    assert refused.status_code == 303
    assert factories.campaign(app, 1).status == "draft"


def test_preview_as_contact(app, client, auth):
    auth.login()
    list_id = factories.make_list(
        app,
        [{"email": "a@example.com", "first_name": "Ann"}, {"email": "z@example.com", "first_name": "Zoë", "attributes": {"city": "Köln"}}],
    )
    client.post("/campaigns/new", data=campaign_form(list_id))

    page = client.get("/campaigns/1/preview?contact=z@example.com").get_data(as_text=True)

    assert "Welcome, Zoë" in page
    assert "Hello Zoë from Köln" in page


def test_test_send_to_outbox(app, client, auth, instance_path):
    auth.login()
    list_id = factories.make_list(app, [{"email": "a@example.com", "first_name": "Ann"}])
    client.post("/campaigns/new", data=campaign_form(list_id))

    response = client.post("/campaigns/1/test", data={"address": "me@example.org", "contact_id": ""})

    assert response.status_code == 303
    files = list((instance_path / "outbox").rglob("*.eml"))
    assert len(files) == 1
    message = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert str(message["Subject"]) == "[Test] Welcome, Ann"
    assert message["To"].addresses[0].addr_spec == "me@example.org"
    assert factories.campaign(app, 1).status == "draft"


def test_send_now_streams_progress(app, client, auth, instance_path):
    auth.login()
    contacts = [{"email": f"p{i}@example.com", "first_name": f"P{i}"} for i in range(40)]
    list_id = factories.make_list(app, contacts)
    client.post("/campaigns/new", data=campaign_form(list_id))

    response = client.post("/campaigns/1/launch", data={"mode": "foreground"})
    stream = client.get("/campaigns/1/events")
    events = stream.get_data(as_text=True)

    assert response.status_code == 303
    assert "event: progress" in events
    assert 'data-percent="100.0"' in events
    assert 'event: done\ndata: {"status": "finished"}' in events
    assert len(list((instance_path / "outbox").rglob("*.eml"))) == 40
    page = client.get("/campaigns/1/deliveries?status=sent").get_data(as_text=True)
    assert "p39@example.com" in page


def test_stream_ends_for_dead_run(app, client, auth):
    auth.login("viewer")
    list_id = factories.make_list(app, [{"email": "a@example.com", "first_name": "Ann"}])
    # A foreground run whose web worker died: its heartbeat stopped minutes ago.
    campaign_id = factories.make_campaign(
        app, list_id, delivery_method="outbox", status="running", run_mode="foreground",
        heartbeat_at=utcnow() - timedelta(minutes=5),
    )

    events = client.get(f"/campaigns/{campaign_id}/events").get_data(as_text=True)

    assert 'event: done\ndata: {"status": "paused"}' in events
    assert factories.campaign(app, campaign_id).last_error.startswith("Interrupted")


def test_viewer_cannot_send(app, client, auth):
    auth.login("viewer")
    list_id = factories.make_list(app, [{"email": "a@example.com", "first_name": "Ann"}])
    factories.make_campaign(app, list_id, delivery_method="outbox")

    assert client.post("/campaigns/1/launch", data={"mode": "foreground"}).status_code == 403
    assert "Launch campaign" not in client.get("/campaigns/1").get_data(as_text=True)


def test_list_paginates_and_searches(app, client, auth):
    auth.login()
    contacts = [{"email": f"p{i:03d}@example.com", "first_name": f"Name{i:03d}"} for i in range(120)]
    list_id = factories.make_list(app, contacts)

    first = client.get(f"/contacts/{list_id}").get_data(as_text=True)
    third = client.get(f"/contacts/{list_id}?page=3").get_data(as_text=True)
    found = client.get(f"/contacts/{list_id}?q=name117").get_data(as_text=True)

    assert "Page 1 of 3" in first
    assert f"/contacts/{list_id}?page=2" in first
    assert "p119@example.com" in third
    assert "p000@example.com" not in third
    assert "p117@example.com" in found
    assert "p116@example.com" not in found


def test_render_error_explained_not_500(app, client, auth):
    auth.login()
    list_id = factories.make_list(app, [{"email": "a@example.com", "first_name": "Ann"}])
    client.post("/campaigns/new", data=campaign_form(list_id, text_body="Total: {{ 1 / 0 }}"))

    check = client.get("/campaigns/1/check")
    preview = client.get("/campaigns/1/preview?contact=a@example.com")
    launch = client.post("/campaigns/1/launch", data={"mode": "foreground"})

    assert check.status_code == 200
    assert "division by zero" in check.get_data(as_text=True)
    assert preview.status_code == 200
    assert "division by zero" in preview.get_data(as_text=True)
    assert launch.status_code == 303
    assert factories.campaign(app, 1).status == "draft"


def test_duplicate_makes_draft(app, client, auth):
    auth.login()
    list_id = factories.make_list(app, [{"email": "a@example.com", "first_name": "Ann"}])
    original = factories.make_campaign(app, list_id, delivery_method="outbox", status="finished")

    response = client.post(f"/campaigns/{original}/duplicate")

    copy = factories.campaign(app, original + 1)
    assert response.headers["Location"] == f"/campaigns/{original + 1}/edit"
    assert copy.status == "draft"
    assert copy.name == "Copy of Spring news"
    assert copy.text_body == factories.campaign(app, original).text_body
    assert copy.list_id == list_id
