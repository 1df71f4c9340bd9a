"""ApiDescription against the vendors' real OpenAPI descriptions, with werkzeug requests built in memory."""

from __future__ import annotations

import base64
import json

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from tests.fakes.openapi_check import ApiDescription, TokenBucket, is_phone_number

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
MESSAGES_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def twilio_post(form: dict[str, str], path: str = MESSAGES_PATH, auth: bool = True) -> Request:
    headers = basic_auth(ACCOUNT_SID, "token") if auth else {}
    return EnvironBuilder(path=path, method="POST", data=form, headers=headers).get_request()


def mail_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "personalizations": [{"to": [{"email": "ana@example.com", "name": "Ana"}], "subject": "Hi"}],
        "from": {"email": "news@example.org", "name": "News"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "Hello"}],
    }
    body.update(overrides)
    return body


def sendgrid_post(body: object, path: str = "/v3/mail/send", content_type: str = "application/json") -> Request:
    data = json.dumps(body) if content_type == "application/json" else "a=b"
    headers = {"Authorization": "Bearer SG.key"}
    return EnvironBuilder(path=path, method="POST", data=data, content_type=content_type, headers=headers).get_request()


def test_twilio_valid_post_passes(twilio_description: ApiDescription) -> None:
    request = twilio_post({"To": "+14155550100", "From": "+14155550199", "Body": "Hello"})

    assert twilio_description.violations(request) == []


def test_twilio_post_without_to(twilio_description: ApiDescription) -> None:
    request = twilio_post({"From": "+14155550199", "Body": "Hello"})

    violations = twilio_description.violations(request)

    assert violations == ["'To' is a required property"]


def test_twilio_to_not_a_number(twilio_description: ApiDescription) -> None:
    request = twilio_post({"To": "0049 170 1234567", "From": "+14155550199", "Body": "Hello"})

    [problem] = twilio_description.problems(request)

    assert problem.field == "To"
    assert "phone-number" in problem.message


def test_twilio_alphanumeric_from_passes(twilio_description: ApiDescription) -> None:
    request = twilio_post({"To": "+447700900123", "From": "MessageHub", "Body": "Hello"})

    assert twilio_description.violations(request) == []


def test_twilio_bad_messaging_service_sid(twilio_description: ApiDescription) -> None:
    request = twilio_post({"To": "+14155550100", "MessagingServiceSid": "MG123", "Body": "Hello"})

    violations = twilio_description.violations(request)

    assert len(violations) == 2
    assert all(violation.startswith("MessagingServiceSid: ") for violation in violations)


def test_twilio_bad_account_sid(twilio_description: ApiDescription) -> None:
    request = twilio_post({"To": "+14155550100", "Body": "Hello"}, path="/2010-04-01/Accounts/AC123/Messages.json")

    violations = twilio_description.violations(request)

    assert len(violations) == 2
    assert all(violation.startswith("AccountSid: ") for violation in violations)


def test_twilio_missing_auth(twilio_description: ApiDescription) -> None:
    request = twilio_post({"To": "+14155550100", "Body": "Hello"}, auth=False)

    [violation] = twilio_description.violations(request)

    assert "Security not found" in violation


def test_twilio_json_body_rejected(twilio_description: ApiDescription) -> None:
    request = EnvironBuilder(
        path=MESSAGES_PATH,
        method="POST",
        data=json.dumps({"To": "+14155550100"}),
        content_type="application/json",
        headers=basic_auth(ACCOUNT_SID, "token"),
    ).get_request()

    [violation] = twilio_description.violations(request)

    assert "application/json" in violation


def test_sendgrid_valid_body_passes(sendgrid_description: ApiDescription) -> None:
    assert sendgrid_description.violations(sendgrid_post(mail_body())) == []


def test_sendgrid_invalid_address(sendgrid_description: ApiDescription) -> None:
    body = mail_body(personalizations=[{"to": [{"email": "ana@localhost"}], "subject": "Hi"}])

    [problem] = sendgrid_description.problems(sendgrid_post(body))

    assert problem.field == "personalizations.0.to.0.email"
    assert "email" in problem.message


def test_sendgrid_missing_from(sendgrid_description: ApiDescription) -> None:
    body = mail_body()
    del body["from"]

    assert sendgrid_description.violations(sendgrid_post(body)) == ["'from' is a required property"]


def test_sendgrid_too_many_personalizations(sendgrid_description: ApiDescription) -> None:
    personalizations = [{"to": [{"email": f"user{number}@example.com"}]} for number in range(1001)]

    [problem] = sendgrid_description.problems(sendgrid_post(mail_body(personalizations=personalizations)))

    assert problem.field == "personalizations"
    assert "too long" in problem.message


def test_sendgrid_form_body_rejected(sendgrid_description: ApiDescription) -> None:
    request = sendgrid_post(None, content_type="application/x-www-form-urlencoded")

    [violation] = sendgrid_description.violations(request)

    assert "application/x-www-form-urlencoded" in violation


def test_sendgrid_unknown_path(sendgrid_description: ApiDescription) -> None:
    [violation] = sendgrid_description.violations(sendgrid_post(mail_body(), path="/v3/mail/sned"))

    assert "Path not found" in violation


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("+14155550100", True),
        ("+4915123456077", True),
        ("whatsapp:+14155550100", True),
        ("MessageHub", True),
        ("Shop 24", True),
        ("14155550100", False),
        ("+0123456", False),
        ("12345", False),
        ("TwelveChars1", False),
        ("Sale!", False),
        ("", False),
    ],
)
def test_phone_number_format(value: str, expected: bool) -> None:
    assert is_phone_number(value) is expected


def test_token_bucket_refills() -> None:
    now = [100.0]
    bucket = TokenBucket(per_second=2, capacity=1, clock=lambda: now[0])

    first = bucket.take()
    second = bucket.take()
    now[0] += 0.5
    third = bucket.take()

    assert first == 0
    assert second == pytest.approx(0.5)
    assert third == 0
