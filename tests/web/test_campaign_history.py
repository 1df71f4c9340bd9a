"""Campaign history: filters, search, pages, the message each recipient got, the CSV export, sending defaults."""

from __future__ import annotations

import csv
import io
import re
import threading
from html import unescape

import pytest

from messagehub.campaigns import export
from messagehub.engine.process import build_runner
from messagehub.extensions import db
from messagehub.models import Contact, Delivery, ProviderAccount, utcnow
from tests import factories


def add_deliveries(app, campaign_id: int, rows: list[dict]) -> list[int]:
    """Insert delivery rows (Delivery fields) for ``campaign_id`` and return their ids."""
    with app.app_context():
        deliveries = [Delivery(campaign_id=campaign_id, **fields) for fields in rows]
        db.session.add_all(deliveries)
        db.session.commit()
        return [delivery.id for delivery in deliveries]


def send_campaign(app, campaign_id: int) -> None:
    """Run the campaign to its end in this thread, through the real engine."""
    runner = build_runner(campaign_id, app.config, threading.Event())
    try:
        runner.run(campaign_id)
    finally:
        runner.store.engine.dispose()


def history_page(client, campaign_id: int, query: str = "") -> str:
    response = client.get(f"/campaigns/{campaign_id}/deliveries{query}")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def message_panel(client, campaign_id: int, delivery_id: int) -> str:
    """Fetch one delivery's message the way a click on its row does."""
    response = client.get(f"/campaigns/{campaign_id}/deliveries?delivery={delivery_id}", headers={"HX-Request": "true"})
    assert response.status_code == 200
    return response.get_data(as_text=True)


def delivery_of(app, campaign_id: int, address: str) -> Delivery:
    with app.app_context():
        row = db.session.execute(
            db.select(Delivery).where(Delivery.campaign_id == campaign_id, Delivery.address == address)
        ).scalar_one()
        db.session.expunge(row)
        return row


def listed_addresses(page: str) -> list[str]:
    return re.findall(r'<tr class="delivery-row" data-delivery="\d+".*?<a [^>]*>([^<]*)</a>', page, re.S)


@pytest.fixture
def finished_campaign(app) -> int:
    """A finished email campaign whose history has sent, failed and queued recipients."""
    list_id = factories.make_list(app, [{"email": "seed@example.com"}], name="History")
    campaign_id = factories.make_campaign(app, list_id, delivery_method="outbox", status="finished")
    now = utcnow()
    rows = [
        {"address": f"sent{i:03d}@example.com", "status": "sent", "attempts": 1, "sent_at": now, "provider_id": f"id-{i}"}
        for i in range(130)
    ]
    rows += [
        {"address": f"bounce{i}@example.org", "status": "failed", "attempts": 3, "provider_reply": "550 5.1.1 no such user"}
        for i in range(5)
    ]
    rows += [{"address": "waiting_1@example.net", "status": "queued"}, {"address": "waiting%1@example.net", "status": "queued"}]
    add_deliveries(app, campaign_id, rows)
    return campaign_id


# History: filters, search, pages.


def test_history_filters_status(client, auth, finished_campaign):
    auth.login("viewer")

    page = history_page(client, finished_campaign, "?status=failed")

    addresses = listed_addresses(page)
    assert len(addresses) == 5
    assert all(address.startswith("bounce") for address in addresses)
    assert "550 5.1.1 no such user" in page
    assert "5 recipients with outcome failed" in page


def test_history_filters_unconfirmed(app, client, auth, finished_campaign):
    unconfirmed = {"status": "sent", "attempts": 1, "provider_reply": "unconfirmed: connection lost after the final dot"}
    # A failed row whose reply happens to start with the word is not an unconfirmed send.
    add_deliveries(app, finished_campaign, [
        {"address": "maybe@example.com", **unconfirmed},
        {"address": "refused@example.com", "status": "failed", "attempts": 1, "provider_reply": "unconfirmed sender"},
    ])
    auth.login("viewer")

    page = history_page(client, finished_campaign, "?status=unconfirmed")

    assert listed_addresses(page) == ["maybe@example.com"]
    assert "1 recipient with outcome unconfirmed" in page
    assert 'aria-current="page">unconfirmed</a>' in page


def test_history_search_by_address(client, auth, finished_campaign):
    auth.login("viewer")

    found = listed_addresses(history_page(client, finished_campaign, "?q=SENT012"))
    literal_underscore = listed_addresses(history_page(client, finished_campaign, "?q=waiting_"))
    literal_percent = listed_addresses(history_page(client, finished_campaign, "?q=waiting%25"))

    assert found == ["sent012@example.com"]
    assert literal_underscore == ["waiting_1@example.net"]
    assert literal_percent == ["waiting%1@example.net"]


def test_history_search_with_status(client, auth, finished_campaign):
    auth.login("viewer")

    page = history_page(client, finished_campaign, "?status=queued&q=example.com")

    assert listed_addresses(page) == []
    assert "No recipients with outcome queued matching “example.com”" in page


def test_history_pages_keep_filters(client, auth, finished_campaign):
    auth.login("viewer")

    first = history_page(client, finished_campaign, "?status=sent&q=sent")
    second = history_page(client, finished_campaign, "?status=sent&q=sent&page=2")

    assert "Page 1 of 2" in first
    assert f"/campaigns/{finished_campaign}/deliveries?page=2&amp;status=sent&amp;q=sent" in first
    assert len(listed_addresses(first)) == 100
    assert listed_addresses(second)[0] == "sent100@example.com"
    assert len(listed_addresses(second)) == 30


def test_history_columns(client, auth, finished_campaign):
    auth.login("viewer")
    delivery = delivery_of(client.application, finished_campaign, "sent007@example.com")

    page = history_page(client, finished_campaign, "?q=sent007")

    assert "<code>id-7</code>" in page
    assert delivery.sent_at.strftime("%Y-%m-%d %H:%M:%S") in page
    assert "Provider reply" in page
    assert "Sent at (UTC)" in page


def test_history_unknown_status_ignored(client, auth, finished_campaign):
    auth.login("viewer")

    page = history_page(client, finished_campaign, "?status=bogus")

    assert "137 recipients." in page


def test_history_viewer_no_post_forms(client, auth, finished_campaign):
    auth.login("viewer")
    delivery = delivery_of(client.application, finished_campaign, "sent001@example.com")

    page = history_page(client, finished_campaign, f"?delivery={delivery.id}")

    assert page.count('method="post"') == 1
    assert 'action="/logout"' in page
    assert "Export results as CSV" in page


# The message each recipient got.


def test_email_message_as_sent(app, client, auth, instance_path):
    auth.login("viewer")
    list_id = factories.make_list(
        app, [{"email": "ann@example.com", "first_name": "Ann", "attributes": {"city": "Köln"}}, {"email": "bo@example.com"}]
    )
    campaign_id = factories.make_campaign(
        app, list_id, delivery_method="outbox",
        text_body="Hello {{ first_name | default('there') }} in {{ city | default('town') }}",
        html_body="<p>Hello <b>{{ first_name | default('there') }}</b> in {{ city | default('town') }}</p>",
    )
    send_campaign(app, campaign_id)
    [sent_file] = [path for path in (instance_path / "outbox").rglob("*.eml") if "ann@example.com" in path.read_text()]
    sent = factories.parse(sent_file.read_bytes())
    delivery = delivery_of(app, campaign_id, "ann@example.com")

    panel = message_panel(client, campaign_id, delivery.id)

    assert delivery.status == "sent"
    assert f"<strong>Subject:</strong> {sent['Subject']}" in panel
    assert sent.get_body(("plain",)).get_content().strip() in unescape(panel)
    assert '<iframe class="preview-frame" sandbox' in panel
    assert unescape(re.search(r'srcdoc="([^"]*)"', panel).group(1)) == "<p>Hello <b>Ann</b> in Köln</p>"
    assert "The contact was edited" not in panel
    assert "<html" not in panel


def test_message_page_without_htmx(app, client, auth):
    auth.login("viewer")
    list_id = factories.make_list(app, [{"email": "ann@example.com", "first_name": "Ann"}])
    campaign_id = factories.make_campaign(app, list_id, delivery_method="outbox")
    send_campaign(app, campaign_id)
    delivery = delivery_of(app, campaign_id, "ann@example.com")

    page = history_page(client, campaign_id, f"?delivery={delivery.id}")

    assert "<html" in page
    assert "Message to ann@example.com" in page
    assert "News for Ann" in page
    assert listed_addresses(page) == ["ann@example.com"]


def test_sms_message_with_segments(app, client, auth, fake_twilio):
    auth.login("viewer")
    values = {"account_sid": fake_twilio.account_sid, "auth_token": fake_twilio.auth_token, "base_url": fake_twilio.url}
    account_id = factories.make_account(app, "twilio", values, 100)
    list_id = factories.make_list(app, [{"first_name": "Zoë", "phone": "+14155550101"}], name="Phones")
    campaign_id = factories.make_campaign(
        app, list_id, channel="sms", sms_sender="+14155550100", delivery_method="account", provider_account_id=account_id,
        text_body="Hi {{ first_name }} \N{GRINNING FACE} " + "see you soon. " * 6,
    )
    send_campaign(app, campaign_id)
    [accepted] = fake_twilio.accepted
    delivery = delivery_of(app, campaign_id, "+14155550101")

    panel = message_panel(client, campaign_id, delivery.id)

    assert delivery.provider_id == accepted.sid
    assert f'<pre class="plain">{accepted.body}</pre>' in unescape(panel)
    assert f"UCS-2, {len(accepted.body) + 1} UTF-16 units, {accepted.segments} segments." in panel
    assert accepted.segments == 2
    assert accepted.sid in panel
    assert "<strong>From:</strong> +14155550100" in panel


def forget_fields(app, delivery_id: int) -> None:
    """Drop the fields kept on a delivery, as on rows handed over before they were kept."""
    with app.app_context():
        db.session.get(Delivery, delivery_id).context = None
        db.session.commit()


def test_kept_fields_survive_edit(app, client, auth):
    auth.login("viewer")
    list_id = factories.make_list(app, [{"email": "ann@example.com", "first_name": "Ann"}])
    campaign_id = factories.make_campaign(app, list_id, delivery_method="outbox")
    send_campaign(app, campaign_id)
    delivery = delivery_of(app, campaign_id, "ann@example.com")
    with app.app_context():
        contact = db.session.get(Contact, delivery.contact_id)
        contact.first_name = "Annabel"
        db.session.commit()

    panel = message_panel(client, campaign_id, delivery.id)

    assert "News for Ann" in panel
    assert "News for Annabel" not in panel
    assert "may differ from what was sent" not in panel


def test_contact_edited_after_sending(app, client, auth):
    auth.login("viewer")
    list_id = factories.make_list(app, [{"email": "ann@example.com", "first_name": "Ann"}])
    campaign_id = factories.make_campaign(app, list_id, delivery_method="outbox")
    send_campaign(app, campaign_id)
    delivery = delivery_of(app, campaign_id, "ann@example.com")
    forget_fields(app, delivery.id)
    with app.app_context():
        contact = db.session.get(Contact, delivery.contact_id)
        contact.first_name = "Annabel"
        db.session.commit()

    panel = message_panel(client, campaign_id, delivery.id)

    assert "after this message was sent on" in panel
    assert "may differ from what was sent" in panel
    assert "News for Annabel" in panel


def test_contact_edited_before_sending(app, client, auth):
    auth.login("viewer")
    list_id = factories.make_list(app, [{"email": "ann@example.com", "first_name": "Ann"}])
    campaign_id = factories.make_campaign(app, list_id, delivery_method="outbox")
    with app.app_context():
        contact = db.session.execute(db.select(Contact).where(Contact.list_id == list_id)).scalar_one()
        contact.first_name = "Annabel"
        db.session.commit()
    send_campaign(app, campaign_id)
    delivery = delivery_of(app, campaign_id, "ann@example.com")

    panel = message_panel(client, campaign_id, delivery.id)

    assert "The contact was edited" not in panel
    assert "News for Annabel" in panel


def test_deleted_contact_uses_address(app, client, auth):
    auth.login("viewer")
    list_id = factories.make_list(app, [{"email": "ann@example.com", "first_name": "Ann"}])
    campaign_id = factories.make_campaign(app, list_id, delivery_method="outbox")
    send_campaign(app, campaign_id)
    delivery = delivery_of(app, campaign_id, "ann@example.com")
    forget_fields(app, delivery.id)
    with app.app_context():
        db.session.delete(db.session.get(Contact, delivery.contact_id))
        db.session.commit()

    panel = message_panel(client, campaign_id, delivery.id)

    assert "contact deleted" in panel
    assert "rendered with the recipient's address only" in panel
    assert "News for you" in panel


def test_deleted_contact_kept_fields(app, client, auth):
    auth.login("viewer")
    list_id = factories.make_list(app, [{"email": "ann@example.com", "first_name": "Ann"}])
    campaign_id = factories.make_campaign(app, list_id, delivery_method="outbox")
    send_campaign(app, campaign_id)
    delivery = delivery_of(app, campaign_id, "ann@example.com")
    with app.app_context():
        db.session.delete(db.session.get(Contact, delivery.contact_id))
        db.session.commit()

    panel = message_panel(client, campaign_id, delivery.id)

    assert "contact deleted" in panel
    assert "rendered from the fields kept when it was sent" in panel
    assert "News for Ann" in panel


def test_missing_field_explained(app, client, auth):
    auth.login("viewer")
    list_id = factories.make_list(app, [{"email": "ann@example.com", "first_name": "Ann"}])
    campaign_id = factories.make_campaign(app, list_id, delivery_method="outbox", subject="For {{ first_name }}")
    send_campaign(app, campaign_id)
    delivery = delivery_of(app, campaign_id, "ann@example.com")
    forget_fields(app, delivery.id)
    with app.app_context():
        db.session.get(Contact, delivery.contact_id).first_name = ""
        db.session.commit()

    panel = message_panel(client, campaign_id, delivery.id)

    assert "The message cannot be rendered again: the contact now lacks first_name." in panel


def test_delivery_of_other_campaign_404(app, client, auth, finished_campaign):
    auth.login("viewer")
    other = factories.make_campaign(app, None, name="Other")
    delivery = delivery_of(app, finished_campaign, "sent001@example.com")

    response = client.get(f"/campaigns/{other}/deliveries?delivery={delivery.id}")

    assert response.status_code == 404


# The CSV export.


def read_export(client, campaign_id: int) -> tuple[object, list[list[str]]]:
    response = client.get(f"/campaigns/{campaign_id}/export")
    body = response.get_data()
    assert body.startswith(b"\xef\xbb\xbf")
    return response, list(csv.reader(io.StringIO(body.decode("utf-8-sig"), newline="")))


def test_export_has_every_delivery(client, auth, finished_campaign):
    auth.login("viewer")

    response, rows = read_export(client, finished_campaign)

    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == f'attachment; filename="campaign-{finished_campaign}-results.csv"'
    assert rows[0] == list(export.HEADER)
    assert len(rows) == 1 + 137
    assert {row[0] for row in rows[1:]} >= {"sent000@example.com", "sent129@example.com", "bounce4@example.org"}
    assert ["waiting_1@example.net", "", "", "queued", "0", "", "", ""] in rows


def test_export_dates_iso_utc(app, client, auth, finished_campaign):
    auth.login("viewer")
    delivery = delivery_of(app, finished_campaign, "sent000@example.com")

    _, rows = read_export(client, finished_campaign)

    first = next(row for row in rows if row[0] == "sent000@example.com")
    assert first[3:] == ["sent", "1", "", "id-0", delivery.sent_at.strftime("%Y-%m-%dT%H:%M:%SZ")]


def test_export_streams(client, auth, finished_campaign):
    auth.login("viewer")

    response = client.get(f"/campaigns/{finished_campaign}/export", buffered=False)

    assert response.is_streamed
    assert not isinstance(response.response, (list, tuple, bytes, str))
    response.close()


def test_export_rows_in_batches(app, finished_campaign):
    with app.app_context():
        whole = list(export.result_rows(db.engine, finished_campaign))
        batched = list(export.result_rows(db.engine, finished_campaign, batch_size=4))

    assert len(whole) == 137
    assert batched == whole


def test_export_neutralises_formulas(app, client, auth):
    auth.login("viewer")
    hyperlink = '=HYPERLINK("http://example.com/x","Click")'
    list_id = factories.make_list(
        app, [{"email": "ann@example.com", "first_name": hyperlink, "last_name": "@SUM(1)"}, {"email": "bo@example.com"}]
    )
    campaign_id = factories.make_campaign(app, list_id, delivery_method="outbox", subject="Hi")
    send_campaign(app, campaign_id)
    with app.app_context():
        db.session.execute(
            db.update(Delivery).where(Delivery.address == "bo@example.com").values(provider_reply="-2+3", provider_id="+cmd")
        )
        db.session.commit()

    _, rows = read_export(client, campaign_id)

    ann = next(row for row in rows if row[0] == "ann@example.com")
    bo = next(row for row in rows if row[0] == "bo@example.com")
    assert ann[1] == "'" + hyperlink
    assert ann[2] == "'@SUM(1)"
    assert bo[5] == "'-2+3"
    assert bo[6] == "'+cmd"


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@A1", "'@A1"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("\x00x", "'\x00x"),
        ("a=1", "a=1"),
        ("", ""),
        ("Zoë", "Zoë"),
    ],
)
def test_neutralise_cell(cell, expected):
    assert export.neutralise(cell) == expected


# Sending defaults.


def save_defaults(client, **fields):
    values = {
        "from_name": "Ada at Example", "from_email": "ada@example.com", "reply_to": "help@example.com",
        "sms_sender": "Example", "delivery_method": "smtp", "sms_delivery_method": "", **fields,
    }
    return client.post("/settings/defaults", data=values)


def test_defaults_prefill_email_form(client, auth):
    auth.login("admin")

    saved = save_defaults(client)
    page = client.get("/campaigns/new").get_data(as_text=True)

    assert saved.status_code == 303
    assert saved.headers["Location"] == "/settings/"
    assert 'value="Ada at Example"' in page
    assert 'value="ada@example.com"' in page
    assert 'value="help@example.com"' in page
    assert re.search(r'<option selected value="smtp">', page)


def test_defaults_prefill_sms_form(app, client, auth):
    auth.login("admin")
    account_id = factories.make_account(app, "twilio", {"account_sid": "AC" + "1" * 32, "auth_token": "t"}, 10)

    save_defaults(client, sms_delivery_method=f"account:{account_id}")
    page = client.get("/campaigns/new?channel=sms").get_data(as_text=True)

    assert re.search(r'<input id="sms_sender" name="sms_sender"[^>]* value="Example">', page)
    assert f'<option selected value="account:{account_id}">' in page


def test_defaults_not_applied_on_post(app, client, auth):
    auth.login("admin")
    save_defaults(client)
    list_id = factories.make_list(app, [{"email": "ann@example.com"}])

    page = client.post(
        "/campaigns/new", data={"name": "", "list_id": list_id, "subject": "Hi", "from_email": "me@example.org", "text_body": "x"}
    ).get_data(as_text=True)

    assert 'value="me@example.org"' in page
    assert 'value="Ada at Example"' not in page


def test_defaults_deleted_account_ignored(app, client, auth):
    auth.login("admin")
    values = {"api_key": "SG.test-key", "base_url": "http://127.0.0.1:9"}
    account_id = factories.make_account(app, "sendgrid", values, 10)
    saved = save_defaults(client, delivery_method=f"account:{account_id}")
    with app.app_context():
        db.session.delete(db.session.get(ProviderAccount, account_id))
        db.session.commit()

    page = client.get("/campaigns/new").get_data(as_text=True)

    assert saved.status_code == 303
    assert "<option selected" not in page
    assert 'value="ada@example.com"' in page


def test_defaults_invalid_input_kept(client, auth):
    auth.login("admin")

    response = save_defaults(client, from_email="not an address", from_name="Typed name")
    page = response.get_data(as_text=True)

    assert response.status_code == 400
    assert "Sending defaults not saved" in page
    assert 'value="Typed name"' in page
    assert 'value="not an address"' in page
    assert "An email address must have an @-sign." in page


def test_defaults_viewer_reads_only(client, auth):
    auth.login("admin")
    save_defaults(client)
    auth.logout()
    auth.login("viewer")

    page = client.get("/settings/").get_data(as_text=True)
    refused = save_defaults(client, from_name="Changed")

    assert 'value="Ada at Example"' in page
    assert 'disabled id="from_name"' in page
    assert "Save sending defaults" not in page
    assert refused.status_code == 403
