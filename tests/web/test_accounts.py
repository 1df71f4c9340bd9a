"""Provider account pages: secrets stored encrypted, never shown, kept when left empty."""

from __future__ import annotations

from sqlalchemy import select

from messagehub.extensions import db
from messagehub.models import ProviderAccount
from messagehub.provider_accounts import read_secrets
from tests import factories

TOKEN = "twilio-token-6f1e2d"


def add_twilio(client, name: str = "Twilio main", token: str = TOKEN):
    return client.post(
        "/settings/accounts/new/twilio",
        data={"name": name, "account_sid": "AC" + "0" * 32, "auth_token": token, "rate_per_second": "5"},
    )


def stored(app, name: str = "Twilio main") -> ProviderAccount:
    with app.app_context():
        account = db.session.execute(select(ProviderAccount).where(ProviderAccount.name == name)).scalar_one()
        db.session.expunge(account)
        return account


def test_add_account_encrypts_secret(app, client, auth):
    auth.login("admin")

    response = add_twilio(client)

    account = stored(app)
    assert response.status_code == 303
    assert account.settings["account_sid"] == "AC" + "0" * 32
    assert TOKEN not in account.secrets_encrypted
    assert read_secrets(account, app.config["SECRET_KEY"]) == {"auth_token": TOKEN}


def test_account_page_hides_secret(app, client, auth):
    auth.login("admin")
    add_twilio(client)

    page = client.get(f"/settings/accounts/{stored(app).id}").get_data(as_text=True)

    assert "AC" + "0" * 32 in page
    assert TOKEN not in page
    assert "Leave empty to keep it" in page


def test_empty_secret_keeps_stored(app, client, auth):
    auth.login("admin")
    add_twilio(client)
    account_id = stored(app).id

    response = client.post(
        f"/settings/accounts/{account_id}",
        data={"name": "Twilio renamed", "account_sid": "AC" + "1" * 32, "auth_token": "", "rate_per_second": "2"},
    )

    account = stored(app, "Twilio renamed")
    assert response.status_code == 303
    assert account.rate_per_second == 2
    assert read_secrets(account, app.config["SECRET_KEY"]) == {"auth_token": TOKEN}


def test_new_account_needs_secret(app, client, auth):
    auth.login("admin")

    response = add_twilio(client, token="")

    assert response.status_code == 400
    assert "This field is required." in response.get_data(as_text=True)


def test_account_name_unique(app, client, auth):
    auth.login("admin")
    add_twilio(client)

    response = add_twilio(client)

    assert response.status_code == 400
    assert "Another account has this name." in response.get_data(as_text=True)


def test_endpoint_must_be_url(app, client, auth):
    auth.login("admin")

    response = client.post(
        "/settings/accounts/new/sendgrid",
        data={"name": "SG", "api_key": "SG.x", "base_url": "localhost:8025", "rate_per_second": "10"},
    )

    assert response.status_code == 400
    assert "Enter a URL starting with https://" in response.get_data(as_text=True)


def test_new_account_form_has_default_rate(client, auth):
    auth.login("admin")

    page = client.get("/settings/accounts/new/ses").get_data(as_text=True)

    assert 'name="rate_per_second"' in page
    assert 'value="14' in page


def test_operator_cannot_add_account(client, auth):
    auth.login("operator")

    response = add_twilio(client)

    assert response.status_code == 403


def test_delete_account(app, client, auth):
    auth.login("admin")
    add_twilio(client)
    account_id = stored(app).id

    response = client.post(f"/settings/accounts/{account_id}/delete")

    assert response.status_code == 303
    with app.app_context():
        assert db.session.get(ProviderAccount, account_id) is None


def test_unknown_kind_404(client, auth):
    auth.login("admin")

    assert client.get("/settings/accounts/new/carrier-pigeon").status_code == 404


def test_check_twilio_account(app, client, auth, fake_twilio):
    auth.login("admin")
    values = {"account_sid": fake_twilio.account_sid, "auth_token": fake_twilio.auth_token, "base_url": fake_twilio.url}
    account_id = factories.make_account(app, "twilio", values, 1)

    page = client.post(f"/settings/accounts/{account_id}/check").get_data(as_text=True)

    assert page.count('class="ok"') == 3
    assert 'class="bad"' not in page
    assert fake_twilio.auth_token not in page


def test_check_reports_refused_key(app, client, auth, fake_sendgrid):
    auth.login("admin")
    account_id = factories.make_account(
        app, "sendgrid", {"api_key": "SG.not-the-right-key", "base_url": fake_sendgrid.url}, 1
    )

    page = client.post(f"/settings/accounts/{account_id}/check").get_data(as_text=True)

    assert 'class="bad"' in page
    assert "SG.not-the-right-key" not in page


def test_check_ses_account(app, client, auth, moto_aws):
    auth.login("admin")
    account_id = factories.make_account(app, "ses", moto_aws.account_settings(), 14)

    page = client.post(f"/settings/accounts/{account_id}/check").get_data(as_text=True)

    assert page.count('class="ok"') == 3
    assert moto_aws.secret_access_key not in page


def test_sms_test_send(app, client, auth, fake_twilio):
    auth.login("operator")
    values = {"account_sid": fake_twilio.account_sid, "auth_token": fake_twilio.auth_token, "base_url": fake_twilio.url}
    account_id = factories.make_account(app, "twilio", values, 1)
    list_id = factories.make_list(app, [{"first_name": "Ada", "phone": "+14155550101"}])
    campaign_id = factories.make_campaign(
        app, list_id, channel="sms", subject="", html_body="", text_body="Hi {{ first_name }}",
        sms_sender="+14155550100", delivery_method="account", provider_account_id=account_id,
    )

    response = client.post(f"/campaigns/{campaign_id}/test", data={"address": "+1 415 555 0199"}, follow_redirects=True)

    assert "Test message sent to +14155550199" in response.get_data(as_text=True)
    assert [(sms.to, sms.body) for sms in fake_twilio.accepted] == [("+14155550199", "Hi Ada")]
