"""Launch reuses a passing audience check, and still refuses a draft that changed since."""

from __future__ import annotations

import logging

import pytest

from messagehub.campaigns import service
from messagehub.extensions import db
from messagehub.models import Campaign, Contact, OptOut
from tests import factories

# Prints the first name without a default, so a contact without one fails the check.
STRICT_SUBJECT = "News for {{ first_name }}"

REFUSED = "cannot be personalised"


@pytest.fixture
def check_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the full audience checks (every template rendered for every recipient) by campaign id."""
    calls: list[int] = []
    full_check = service.check_campaign

    def counting(session, campaign):
        calls.append(campaign.id)
        return full_check(session, campaign)

    monkeypatch.setattr(service, "check_campaign", counting)
    return calls


def make_draft(app, contacts: list[dict], **fields) -> tuple[int, int]:
    """Create a list of ``contacts`` and an outbox draft for it; return (list id, campaign id)."""
    list_id = factories.make_list(app, contacts)
    fields = {"subject": STRICT_SUBJECT, "delivery_method": "outbox", **fields}
    return list_id, factories.make_campaign(app, list_id, **fields)


def launch(client, campaign_id: int) -> str:
    """Launch in the foreground and return the campaign page it leads to."""
    response = client.post(f"/campaigns/{campaign_id}/launch", data={"mode": "foreground"}, follow_redirects=True)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def add_contact(app, list_id: int, **fields) -> int:
    with app.app_context():
        contact = Contact(list_id=list_id, email_key=fields["email"].casefold(), **fields)
        db.session.add(contact)
        db.session.commit()
        return contact.id


def contact_id(app, address: str) -> int:
    with app.app_context():
        return db.session.execute(db.select(Contact.id).where(Contact.email == address)).scalar_one()


def test_launch_after_passing_check_skips_it(app, client, auth, check_calls, caplog):
    auth.login()
    _, campaign_id = make_draft(app, [{"email": "a@example.com", "first_name": "Ann"}])
    client.get(f"/campaigns/{campaign_id}/check")
    check_calls.clear()

    with caplog.at_level(logging.INFO, logger="messagehub.web"):
        launch(client, campaign_id)

    assert check_calls == []
    assert factories.campaign(app, campaign_id).status != "draft"
    skipped = [record for record in caplog.records if record.getMessage().startswith("skipped the audience check")]
    assert len(skipped) == 1
    assert skipped[0].campaign_id == campaign_id


def test_launch_without_check_runs_it(app, client, auth, check_calls):
    auth.login()
    _, campaign_id = make_draft(app, [{"email": "a@example.com", "first_name": "Ann"}])

    launch(client, campaign_id)

    assert check_calls == [campaign_id]
    assert factories.campaign(app, campaign_id).status != "draft"


def test_failing_check_not_stored(app, client, auth):
    auth.login()
    _, campaign_id = make_draft(app, [{"email": "a@example.com", "first_name": "Ann"}, {"email": "b@example.com"}])

    check = client.get(f"/campaigns/{campaign_id}/check").get_data(as_text=True)

    assert "1 of 2 recipients cannot be personalised" in check
    assert factories.campaign(app, campaign_id).audience_checked is None


def test_template_error_clears_stored_check(app, client, auth):
    auth.login()
    list_id, campaign_id = make_draft(app, [{"email": "a@example.com", "first_name": "Ann"}])
    client.get(f"/campaigns/{campaign_id}/check")
    assert factories.campaign(app, campaign_id).audience_checked is not None
    with app.app_context():
        db.session.get(Campaign, campaign_id).text_body = "Total: {{ 1 / 0 }}"
        db.session.commit()

    check = client.get(f"/campaigns/{campaign_id}/check").get_data(as_text=True)

    assert "division by zero" in check
    assert factories.campaign(app, campaign_id).audience_checked is None


def edit_contact_to_blank_name(app, client, list_id: int) -> None:
    contact = contact_id(app, "b@example.com")
    response = client.post(
        f"/contacts/{list_id}/contacts/{contact}/edit",
        data={"email": "b@example.com", "first_name": "", "last_name": "", "phone": "", "country": ""},
    )
    assert response.status_code == 303


def add_contact_without_name(app, client, list_id: int) -> None:
    add_contact(app, list_id, email="c@example.com")


def replace_last_contact(app, client, list_id: int) -> None:
    # SQLite gives the new row the deleted row's id, so the count and the sum
    # of ids stay the same. Only the latest updated_at differs.
    deleted = contact_id(app, "b@example.com")
    assert client.post(f"/contacts/{list_id}/contacts/{deleted}/delete").status_code == 303
    added = add_contact(app, list_id, email="c@example.com")
    assert added == deleted


def resubscribe_contact_without_name(app, client, list_id: int) -> None:
    contact = add_contact(app, list_id, email="c@example.com", unsubscribed=True)
    # Checked again with the unsubscribed contact, which the check leaves out.
    client.get("/campaigns/1/check")
    assert factories.campaign(app, 1).audience_checked is not None
    assert client.post(f"/contacts/{list_id}/contacts/{contact}/resubscribe").status_code == 303


def print_last_name(app, client, list_id: int) -> None:
    response = client.post(
        "/campaigns/1/edit",
        data={
            "name": "Spring news",
            "list_id": str(list_id),
            "subject": "News for {{ first_name }} {{ last_name }}",
            "from_name": "MessageHub Tests",
            "from_email": "news@example.com",
            "reply_to": "",
            "text_body": "Hello",
            "html_body": "",
            "delivery_method": "outbox",
        },
    )
    assert response.status_code == 303


@pytest.mark.parametrize(
    "change",
    [edit_contact_to_blank_name, add_contact_without_name, replace_last_contact, resubscribe_contact_without_name, print_last_name],
)
def test_change_after_check_refused_at_launch(app, client, auth, change):
    auth.login()
    list_id, campaign_id = make_draft(
        app, [{"email": "a@example.com", "first_name": "Ann"}, {"email": "b@example.com", "first_name": "Bob"}]
    )
    assert campaign_id == 1
    client.get(f"/campaigns/{campaign_id}/check")
    assert factories.campaign(app, campaign_id).audience_checked is not None

    change(app, client, list_id)
    page = launch(client, campaign_id)

    assert REFUSED in page
    assert factories.campaign(app, campaign_id).status == "draft"


def test_opt_out_after_check_refused_at_launch(app, client, auth):
    auth.login()
    _, campaign_id = make_draft(app, [{"email": "a@example.com", "first_name": "Ann"}])
    client.get(f"/campaigns/{campaign_id}/check")
    with app.app_context():
        db.session.add(OptOut(channel="email", address="a@example.com", reason="test"))
        db.session.commit()

    page = launch(client, campaign_id)

    assert "The list has no contact with an email address to send to." in page
    assert factories.campaign(app, campaign_id).status == "draft"


def test_fingerprint_same_for_unchanged_draft(app):
    _, campaign_id = make_draft(app, [{"email": "a@example.com", "first_name": "Ann"}])
    with app.app_context():
        campaign = db.session.get(Campaign, campaign_id)
        first = service.audience_fingerprint(db.session, campaign)
        second = service.audience_fingerprint(db.session, campaign)

    assert first == second
    assert len(first) == 64
