"""FakeTwilio over real HTTP: what it accepts, records, refuses and reports."""

from __future__ import annotations

import requests

from tests.fakes.twilio import FakeTwilio


def post_message(
    fake: FakeTwilio, form: dict[str, str], password: str | None = None, sid: str | None = None
) -> requests.Response:
    account = sid or fake.account_sid
    url = f"{fake.url}/2010-04-01/Accounts/{account}/Messages.json"
    return requests.post(url, data=form, auth=(fake.account_sid, password or fake.auth_token), timeout=5)


def test_creates_message(fake_twilio: FakeTwilio) -> None:
    response = post_message(fake_twilio, {"To": "+48512345021", "From": "+14155550199", "Body": "Cześć €"})

    resource = response.json()
    [accepted] = fake_twilio.accepted
    assert response.status_code == 201
    assert resource["sid"] == accepted.sid
    assert resource["status"] == "queued"
    assert resource["to"] == "+48512345021"
    assert resource["num_segments"] == "1"
    assert accepted.from_ == "+14155550199"
    assert accepted.body == "Cześć €"
    assert len(fake_twilio.request_times) == 1


def test_missing_to_reported(fake_twilio: FakeTwilio) -> None:
    fake_twilio.allow_violations()

    response = post_message(fake_twilio, {"From": "+14155550199", "Body": "Hello"})

    assert response.status_code == 400
    assert response.json() == {
        "code": 21604,
        "message": "A 'To' phone number is required.",
        "more_info": "https://www.twilio.com/docs/errors/21604",
        "status": 400,
    }
    assert fake_twilio.violations == [
        f"POST /2010-04-01/Accounts/{fake_twilio.account_sid}/Messages.json: 'To' is a required property"
    ]
    assert fake_twilio.accepted == []


def test_valid_request_not_reported(fake_twilio: FakeTwilio) -> None:
    service = "MG" + "ab" * 16

    response = post_message(fake_twilio, {"To": "+12015550119", "MessagingServiceSid": service, "Body": "Hi"})

    [accepted] = fake_twilio.accepted
    assert response.status_code == 201
    assert accepted.messaging_service_sid == service
    assert accepted.from_ is None
    assert fake_twilio.violations == []


def test_wrong_token_unauthorized(fake_twilio: FakeTwilio) -> None:
    response = post_message(fake_twilio, {"To": "+12015550119", "From": "+14155550199", "Body": "Hi"}, password="wrong")

    assert response.status_code == 401
    assert response.json()["code"] == 20003
    assert response.json()["message"] == "Authenticate"
    assert fake_twilio.accepted == []


def test_other_account_not_found(fake_twilio: FakeTwilio) -> None:
    other = "AC" + "cd" * 16

    response = post_message(fake_twilio, {"To": "+12015550119", "From": "+14155550199", "Body": "Hi"}, sid=other)

    assert response.status_code == 404
    assert response.json()["code"] == 20404


def test_invalid_number(fake_twilio: FakeTwilio) -> None:
    fake_twilio.invalid_number("+12015550119")

    response = post_message(fake_twilio, {"To": "+12015550119", "From": "+14155550199", "Body": "Hi"})

    assert response.status_code == 400
    assert response.json()["code"] == 21211
    assert response.json()["message"] == "The 'To' number +12015550119 is not a valid phone number."
    assert fake_twilio.violations == []


def test_opted_out_number(fake_twilio: FakeTwilio) -> None:
    fake_twilio.opted_out("+12015550119")

    response = post_message(fake_twilio, {"To": "+12015550119", "From": "+14155550199", "Body": "Hi"})

    assert response.status_code == 400
    assert response.json()["code"] == 21610
    assert response.json()["message"] == "Attempt to send to unsubscribed recipient"


def test_rate_limited(fake_twilio: FakeTwilio) -> None:
    fake_twilio.limit_rate(per_second=1, retry_after=4)
    form = {"To": "+12015550119", "From": "+14155550199", "Body": "Hi"}

    first = post_message(fake_twilio, form)
    second = post_message(fake_twilio, form)

    assert first.status_code == 201
    assert second.status_code == 429
    assert second.headers["Retry-After"] == "4"
    assert second.json()["code"] == 20429


def test_injected_server_error(fake_twilio: FakeTwilio) -> None:
    fake_twilio.fail_next(1, status=500)
    form = {"To": "+12015550119", "From": "+14155550199", "Body": "Hi"}

    first = post_message(fake_twilio, form)
    second = post_message(fake_twilio, form)

    assert first.status_code == 500
    assert first.json()["code"] == 20500
    assert second.status_code == 201


def test_account_resource(fake_twilio: FakeTwilio) -> None:
    fake_twilio.account_status = "suspended"
    url = f"{fake_twilio.url}/2010-04-01/Accounts/{fake_twilio.account_sid}.json"

    response = requests.get(url, auth=(fake_twilio.account_sid, fake_twilio.auth_token), timeout=5)

    assert response.status_code == 200
    assert response.json()["status"] == "suspended"
    assert response.json()["sid"] == fake_twilio.account_sid
