"""FakeSendGrid over real HTTP: what it accepts, records, refuses and reports."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.fakes.http_fixtures import fail_on_violations
from tests.fakes.openapi_check import ApiDescription
from tests.fakes.sendgrid import DUPLICATE_ADDRESS, INVALID_ADDRESS, INVALID_ADDRESS_HELP, FakeSendGrid
from tests.waiting import wait_for


def mail_body(*recipients: str) -> dict[str, object]:
    """Return a valid mail send body with one personalization per recipient and per-recipient text."""
    personalizations = [
        {
            "to": [{"email": email, "name": f"Reader {number}"}],
            "subject": "Offer -name-",
            "substitutions": {"-name-": f"Reader {number}", "-text-": f"Hello {number}"},
            "custom_args": {"messagehub_id": f"<{number}@test>"},
        }
        for number, email in enumerate(recipients)
    ]
    return {
        "personalizations": personalizations,
        "from": {"email": "news@example.org", "name": "News"},
        "reply_to": {"email": "reply@example.org"},
        "subject": "Offer",
        "content": [{"type": "text/plain", "value": "-text-"}, {"type": "text/html", "value": "<p>-text-</p>"}],
    }


def post(fake: FakeSendGrid, body: object, key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key or fake.api_key}"}
    return requests.post(f"{fake.url}/v3/mail/send", json=body, headers=headers, timeout=5)


def test_accepts_and_substitutes(fake_sendgrid: FakeSendGrid) -> None:
    response = post(fake_sendgrid, mail_body("ana@example.com", "ben@example.com"))

    first, second = fake_sendgrid.accepted
    assert response.status_code == 202
    assert response.content == b""
    assert first.x_message_id == response.headers["X-Message-Id"]
    assert first.to_email == "ana@example.com"
    assert first.to_name == "Reader 0"
    assert first.subject == "Offer Reader 0"
    assert first.text == "Hello 0"
    assert second.html == "<p>Hello 1</p>"
    assert second.custom_args == {"messagehub_id": "<1@test>"}
    assert second.reply_to == "reply@example.org"
    assert fake_sendgrid.accepted_requests == 1
    assert fake_sendgrid.violations == []


def test_violation_reported(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.allow_violations()
    body = mail_body("ana@example.com")
    del body["from"]

    response = post(fake_sendgrid, body)

    assert response.status_code == 400
    assert response.json() == {"errors": [{"message": "'from' is a required property", "field": None, "help": None}]}
    assert fake_sendgrid.violations == ["POST /v3/mail/send: 'from' is a required property"]
    assert fake_sendgrid.accepted == []


def test_violation_names_field(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.allow_violations()

    response = post(fake_sendgrid, mail_body("ana@example.com", "not-an-address"))

    [error] = response.json()["errors"]
    assert response.status_code == 400
    assert error["field"] == "personalizations.1.to.0.email"
    assert len(fake_sendgrid.violations) == 1


def test_wrong_key_unauthorized(fake_sendgrid: FakeSendGrid) -> None:
    response = post(fake_sendgrid, mail_body("ana@example.com"), key="SG.wrong")

    assert response.status_code == 401
    assert response.json()["errors"][0]["field"] is None
    assert fake_sendgrid.accepted == []


def test_missing_scope_forbidden(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.scopes = ["alerts.read"]

    response = post(fake_sendgrid, mail_body("ana@example.com"))

    assert response.status_code == 403
    assert fake_sendgrid.accepted == []


def test_rate_limit_headers(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.limit_rate(per_second=0.5, retry_after=3)

    first = post(fake_sendgrid, mail_body("ana@example.com"))
    second = post(fake_sendgrid, mail_body("ben@example.com"))

    assert first.status_code == 202
    assert second.status_code == 429
    assert second.headers["Retry-After"] == "3"
    assert second.headers["X-RateLimit-Remaining"] == "0"
    assert int(second.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert second.json()["errors"][0]["message"] == "too many requests"
    assert len(fake_sendgrid.request_times) == 2
    assert len(fake_sendgrid.accepted) == 1


def test_fail_next_then_accept(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.fail_next(2, status=503)

    statuses = [post(fake_sendgrid, mail_body("ana@example.com")).status_code for _ in range(3)]

    assert statuses == [503, 503, 202]
    assert len(fake_sendgrid.accepted) == 1


def test_slow_records_before_reply(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.slow(0.6)
    replies: list[requests.Response] = []
    thread = threading.Thread(target=lambda: replies.append(post(fake_sendgrid, mail_body("ana@example.com"))))
    started = time.monotonic()

    thread.start()
    wait_for(lambda: fake_sendgrid.accepted, bool, timeout=5, interval=0.02)
    recorded_while_waiting = not replies
    thread.join(timeout=5)

    assert recorded_while_waiting
    assert replies[0].status_code == 202
    assert time.monotonic() - started >= 0.6


def test_rejected_address(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.reject_address("Ben@Example.com")

    response = post(fake_sendgrid, mail_body("ana@example.com", "ben@example.com"))

    assert response.status_code == 400
    assert response.json() == {
        "errors": [{"message": INVALID_ADDRESS, "field": "personalizations.1.to.0.email", "help": INVALID_ADDRESS_HELP}]
    }
    assert fake_sendgrid.accepted == []
    assert fake_sendgrid.violations == []


def test_duplicate_address_rule(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.allow_violations()

    response = post(fake_sendgrid, mail_body("ana@example.com", "ANA@example.com"))

    [error] = response.json()["errors"]
    assert response.status_code == 400
    assert error["message"] == DUPLICATE_ADDRESS.format(email="ANA@example.com")
    assert error["field"] == "personalizations.1.to.0.email"
    assert len(fake_sendgrid.violations) == 1


def test_oversized_substitutions_rule(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.allow_violations()
    body = mail_body("ana@example.com")
    body["personalizations"][0]["substitutions"]["-text-"] = "x" * 10_000  # type: ignore[index]

    response = post(fake_sendgrid, body)

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "personalizations.0.substitutions"
    assert len(fake_sendgrid.violations) == 1


def test_scopes_endpoint(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.allow_violations()

    authorized = requests.get(
        f"{fake_sendgrid.url}/v3/scopes", headers={"Authorization": f"Bearer {fake_sendgrid.api_key}"}, timeout=5
    )
    anonymous = requests.get(f"{fake_sendgrid.url}/v3/scopes", timeout=5)

    assert authorized.json() == {"scopes": ["mail.send"]}
    assert anonymous.status_code == 401
    assert fake_sendgrid.violations == [
        "GET /v3/scopes: Security not found. Schemes not valid for any requirement: [['Authorization']]"
    ]


def test_unallowed_violations_fail(sendgrid_description: ApiDescription) -> None:
    with FakeSendGrid(sendgrid_description) as fake:
        post(fake, {"personalizations": []})

    with pytest.raises(pytest.fail.Exception, match="FakeSendGrid saw 3 request violation"):
        fail_on_violations(fake)
