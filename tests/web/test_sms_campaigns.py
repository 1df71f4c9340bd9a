"""SMS campaign pages: the form, the sender check, and segments shown before launch."""

from __future__ import annotations

import html

from sqlalchemy import select

from messagehub.extensions import db
from messagehub.models import Campaign, OptOut, ProviderAccount
from messagehub.engine.sqlstore import SqlCampaignStore
from tests import factories
from tests.waiting import wait_for

APOSTROPHE = "\N{RIGHT SINGLE QUOTATION MARK}"
EMOJI = "\N{GRINNING FACE}"


def add_account(app, kind: str = "twilio") -> int:
    with app.app_context():
        account = ProviderAccount(name=f"{kind} account", kind=kind, settings={}, secrets_encrypted="", rate_per_second=10)
        db.session.add(account)
        db.session.commit()
        return account.id


def sms_list(app) -> int:
    return factories.make_list(
        app,
        [
            {"first_name": "Ada", "phone": "+14155550101"},
            {"first_name": "Zoë", "phone": "+14155550102"},
            {"first_name": "Bob", "email": "bob@example.com"},
            {"first_name": "Cy", "phone": "0301234567"},
            {"first_name": "Di", "phone": "+14155550101"},
        ],
        name="Phones",
    )


def create_sms(client, list_id: int, account_id: int, body: str, sender: str = "+14155550100"):
    return client.post(
        "/campaigns/new?channel=sms",
        data={
            "name": "Reminder",
            "list_id": list_id,
            "sms_sender": sender,
            "text_body": body,
            "delivery_method": f"account:{account_id}",
        },
    )


def only_campaign(app) -> Campaign:
    with app.app_context():
        campaign = db.session.execute(select(Campaign)).scalar_one()
        db.session.expunge(campaign)
        return campaign


def test_create_sms_campaign(app, client, auth):
    auth.login()
    account_id = add_account(app)

    response = create_sms(client, sms_list(app), account_id, "Hi {{ first_name }}, see you at 10.")

    campaign = only_campaign(app)
    assert response.status_code == 303
    assert campaign.channel == "sms"
    assert campaign.delivery_method == "account"
    assert campaign.provider_account_id == account_id
    assert campaign.sms_sender == "+14155550100"


def test_sms_form_offers_only_sms_accounts(app, client, auth):
    auth.login()
    add_account(app, "twilio")
    add_account(app, "sendgrid")

    page = client.get("/campaigns/new?channel=sms").get_data(as_text=True)

    assert "Twilio: twilio account" in page
    assert "sendgrid account" not in page
    assert "Outbox" not in page


def test_sms_sender_checked(app, client, auth):
    auth.login()

    response = create_sms(client, sms_list(app), add_account(app), "Hi", sender="not a sender!")

    assert response.status_code == 400
    assert "Enter a number in E.164 form" in html.unescape(response.get_data(as_text=True))


def test_segments_shown_before_launch(app, client, auth):
    auth.login()
    # The curly apostrophe forces UCS-2 for everyone; "Zoë" adds ë, not in GSM-7 either.
    create_sms(client, sms_list(app), add_account(app), f"{{{{ first_name }}}}{APOSTROPHE}s code: " + "x" * 150)
    campaign = only_campaign(app)

    page = html.unescape(client.get(f"/campaigns/{campaign.id}/check").get_data(as_text=True))

    assert "UCS-2 for every message" in page
    assert f"<code title=\"U+2019\">{APOSTROPHE}</code>" in page
    assert "U+00EB" in page
    # 3 + 1 + 8 + 150 = 162 UTF-16 units: 3 segments of 67 for each of the 2 phones.
    assert "Segments in total</th><td><strong>6</strong>" in page


def test_gsm_extension_counted_twice(app, client, auth):
    auth.login()
    create_sms(client, sms_list(app), add_account(app), "€" * 80)
    campaign = only_campaign(app)

    page = client.get(f"/campaigns/{campaign.id}/check").get_data(as_text=True)

    assert "GSM-7 for every message" in page
    assert "Segments per message</th><td>1</td>" in page


def test_preview_shows_segments(app, client, auth):
    auth.login()
    create_sms(client, sms_list(app), add_account(app), "Hello " + EMOJI * 34)
    campaign = only_campaign(app)

    page = client.get(f"/campaigns/{campaign.id}/preview", headers={"HX-Request": "true"}).get_data(as_text=True)

    assert "UCS-2, 74 UTF-16 units, 2 segments." in page


def test_sms_needs_account(app, client, auth):
    auth.login()
    list_id = sms_list(app)
    campaign_id = factories.make_campaign(app, list_id, channel="sms", text_body="Hi", sms_sender="+14155550100")

    response = client.post(f"/campaigns/{campaign_id}/launch", data={"mode": "background"}, follow_redirects=True)

    assert "Choose a Twilio or Amazon SNS account" in response.get_data(as_text=True)


def test_queue_skips_without_number(app):
    list_id = sms_list(app)
    account_id = add_account(app)
    campaign_id = factories.make_campaign(
        app, list_id, channel="sms", text_body="Hi", sms_sender="+14155550100",
        delivery_method="account", provider_account_id=account_id,
    )
    with app.app_context():
        db.session.add(OptOut(channel="sms", address="+14155550102", reason="21610"))
        db.session.commit()
        store = SqlCampaignStore(db.engine)

        store.start_run(campaign_id)
        replies = db.session.execute(
            db.text(
                "select address, coalesce(provider_reply, status) from deliveries "
                "where campaign_id = :c order by contact_id"
            ),
            {"c": campaign_id},
        ).all()

    assert [tuple(row) for row in replies] == [
        ("+14155550101", "queued"),
        ("+14155550102", "opted out"),
        ("", "no phone number"),
        ("0301234567", "phone number not in E.164 form"),
        ("+14155550101", "same phone number as an earlier contact of the list"),
    ]


def test_sms_foreground_run(app, client, auth, fake_twilio):
    auth.login()
    values = {"account_sid": fake_twilio.account_sid, "auth_token": fake_twilio.auth_token, "base_url": fake_twilio.url}
    account_id = factories.make_account(app, "twilio", values, 100)
    create_sms(client, sms_list(app), account_id, "Hi {{ first_name }}")
    campaign = only_campaign(app)

    response = client.post(f"/campaigns/{campaign.id}/launch", data={"mode": "foreground"})
    status = wait_for(
        lambda: factories.campaign(app, campaign.id).status, lambda value: value in ("finished", "paused", "failed"), 30
    )

    assert response.status_code == 303
    assert status == "finished"
    assert sorted((sms.to, sms.body) for sms in fake_twilio.accepted) == [
        ("+14155550101", "Hi Ada"),
        ("+14155550102", "Hi Zoë"),
    ]
