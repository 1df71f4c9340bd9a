"""The send loop with an API sender: error-rate pause, opt-outs mid-run, requests refused whole."""

from __future__ import annotations

import threading

from flask import Flask

from messagehub.engine.process import build_runner
from tests import factories
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.twilio import FakeTwilio


def twilio_campaign(app: Flask, fake: FakeTwilio, numbers: list[str]) -> int:
    list_id = factories.make_list(app, [{"first_name": "P", "phone": number} for number in numbers])
    values = {"account_sid": fake.account_sid, "auth_token": fake.auth_token, "base_url": fake.url}
    account_id = factories.make_account(app, "twilio", values, 1000)
    return factories.make_campaign(
        app, list_id, channel="sms", subject="", html_body="", text_body="Hi {{ first_name }}",
        sms_sender="+14155550100", delivery_method="account", provider_account_id=account_id,
    )


def run(app: Flask, campaign_id: int, **config):
    runner = build_runner(campaign_id, {**app.config, **config}, threading.Event())
    return runner.run(campaign_id)


def test_error_rate_pauses(app: Flask, fake_twilio: FakeTwilio):
    numbers = [f"+1415555{n:04d}" for n in range(100)]
    for number in numbers[10:40]:
        fake_twilio.invalid_number(number)
    campaign_id = twilio_campaign(app, fake_twilio, numbers)

    outcome = run(app, campaign_id, ERROR_RATE_LIMIT=0.25, ERROR_RATE_WINDOW=20)

    campaign = factories.campaign(app, campaign_id)
    assert outcome.status == "paused"
    assert campaign.status == "paused"
    assert "recipients failed, over the limit of 25%" in campaign.last_error
    assert "21211" in campaign.last_error
    assert campaign.sent + campaign.failed < len(numbers)


def test_error_rate_limit_one_never_pauses(app: Flask, fake_twilio: FakeTwilio):
    numbers = [f"+1415555{n:04d}" for n in range(30)]
    for number in numbers[:20]:
        fake_twilio.invalid_number(number)
    campaign_id = twilio_campaign(app, fake_twilio, numbers)

    outcome = run(app, campaign_id, ERROR_RATE_LIMIT=1.0, ERROR_RATE_WINDOW=10)

    assert outcome.status == "finished"
    assert outcome.progress.failed == 20
    assert outcome.progress.sent == 10


def test_server_errors_retried(app: Flask, fake_twilio: FakeTwilio):
    numbers = [f"+1415555{n:04d}" for n in range(10)]
    fake_twilio.fail_next(3, status=503)
    campaign_id = twilio_campaign(app, fake_twilio, numbers)

    outcome = run(app, campaign_id)

    assert outcome.status == "finished"
    assert outcome.progress.sent == 10
    assert sorted(sms.to for sms in fake_twilio.accepted) == numbers


def test_wrong_token_pauses_with_reason(app: Flask, fake_twilio: FakeTwilio, monkeypatch):
    monkeypatch.setattr("messagehub.engine.runner.UNAVAILABLE_WAITS", (0.1,))
    numbers = ["+14155550001", "+14155550002"]
    campaign_id = twilio_campaign(app, fake_twilio, numbers)
    fake_twilio.auth_token = "another-token"

    outcome = run(app, campaign_id)

    campaign = factories.campaign(app, campaign_id)
    assert outcome.status == "paused"
    assert campaign.last_error.startswith("Provider unavailable:")
    assert [row.status for row in factories.deliveries(app, campaign_id)] == ["queued", "queued"]
    assert [row.attempts for row in factories.deliveries(app, campaign_id)] == [0, 0]
    assert fake_twilio.accepted == []


def test_rejected_request_resent_without_culprit(app: Flask, fake_sendgrid: FakeSendGrid):
    emails = [f"reader{n}@example.com" for n in range(30)]
    fake_sendgrid.reject_address(emails[4])
    list_id = factories.make_list(app, [{"email": email} for email in emails])
    account_id = factories.make_account(
        app, "sendgrid", {"api_key": fake_sendgrid.api_key, "base_url": fake_sendgrid.url}, 1000
    )
    campaign_id = factories.make_campaign(app, list_id, delivery_method="account", provider_account_id=account_id)

    outcome = run(app, campaign_id)

    rows = {row.address: row for row in factories.deliveries(app, campaign_id)}
    assert outcome.progress.sent == 29
    assert rows[emails[4]].status == "failed"
    # The request refused for another recipient cost the others no attempt.
    assert rows[emails[0]].attempts == 1
    assert fake_sendgrid.accepted_requests == 1
    assert sorted(email.to_email for email in fake_sendgrid.accepted) == sorted(set(emails) - {emails[4]})
