"""Campaigns through the API providers, launched in the background from the web routes.

Each test imports the 10,000-row sample export, launches a campaign with the
plain-process supervisor, and reads back what the provider's stand-in on
127.0.0.1 accepted: moto for SES and SNS, the OpenAPI-checking servers for
SendGrid and Twilio.
"""

from __future__ import annotations

import collections
import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from messagehub.extensions import db
from messagehub.models import OptOut
from tests import factories
from tests.background import post_form, wait_settled
from tests.fakes.aws import AwsStandIn
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.twilio import FakeTwilio

# A rate high enough that the stand-ins, not the account, set the pace.
FAST = 2000.0
RUN_TIMEOUT = 420.0
SENDER_ADDRESS = "news@example.com"
SENDER_NUMBER = "+14155550100"


@pytest.fixture
def sample_list(process_app: Flask, shared_data) -> int:
    """Import the plain 10,000-row export into a list and return its id."""
    return factories.import_file(process_app, shared_data / "contacts-10k.csv").list_id


def launch(client: FlaskClient, campaign_id: int) -> int:
    """Launch the campaign in the background through its page, and return the status code."""
    return post_form(client, f"/campaigns/{campaign_id}/launch", f"/campaigns/{campaign_id}", mode="background")


def sms_campaign(app: Flask, list_id: int, account_id: int, **fields) -> int:
    return factories.make_campaign(
        app,
        list_id,
        channel="sms",
        subject="",
        html_body="",
        text_body="Hi {{ first_name | default('there') }}, your code is 1234.",
        sms_sender=SENDER_NUMBER,
        delivery_method="account",
        provider_account_id=account_id,
        **fields,
    )


def email_campaign(app: Flask, list_id: int, account_id: int) -> int:
    return factories.make_campaign(
        app, list_id, from_email=SENDER_ADDRESS, delivery_method="account", provider_account_id=account_id
    )


def sent_to(app: Flask, campaign_id: int) -> dict[str, str]:
    """Return each sent delivery's message id mapped to its address."""
    return {row.message_id: row.address for row in factories.deliveries(app, campaign_id) if row.status == "sent"}


def assert_once(received: collections.Counter, expected: set[str]) -> None:
    """Assert that every expected key arrived exactly once and nothing else did."""
    missing = expected - received.keys()
    duplicates = {key: count for key, count in received.items() if count > 1}
    strangers = received.keys() - expected
    assert not missing, f"{len(missing)} recipients got nothing, e.g. {sorted(missing)[:3]}"
    assert not duplicates, f"{len(duplicates)} recipients got more than one, e.g. {list(duplicates.items())[:3]}"
    assert not strangers, f"messages nobody was due, e.g. {sorted(strangers)[:3]}"


def message_id(data: bytes) -> str:
    match = re.search(rb"^Message-ID: (<[^>]+>)\r$", data, re.MULTILINE)
    assert match, "message without a Message-ID header"
    return match.group(1).decode()


def test_ses_campaign_each_once(process_app: Flask, operator: FlaskClient, sample_list: int, moto_aws: AwsStandIn):
    moto_aws.verify_identity(SENDER_ADDRESS)
    account_id = factories.make_account(process_app, "ses", moto_aws.account_settings(), FAST)
    campaign_id = email_campaign(process_app, sample_list, account_id)

    status = launch(operator, campaign_id)
    final = wait_settled(process_app, campaign_id, RUN_TIMEOUT)

    campaign = factories.campaign(process_app, campaign_id)
    expected = sent_to(process_app, campaign_id)
    received = collections.Counter(message_id(email.data) for email in moto_aws.sent_emails())
    assert status == 303
    assert final == "finished"
    assert campaign.sent == len(expected) > 9900
    assert campaign.sent + campaign.skipped == campaign.total
    assert_once(received, set(expected))


def test_sns_campaign_each_once(process_app: Flask, operator: FlaskClient, sample_list: int, moto_aws: AwsStandIn):
    account_id = factories.make_account(process_app, "sns", moto_aws.account_settings(), FAST)
    campaign_id = sms_campaign(process_app, sample_list, account_id)

    status = launch(operator, campaign_id)
    final = wait_settled(process_app, campaign_id, RUN_TIMEOUT)

    campaign = factories.campaign(process_app, campaign_id)
    expected = set(sent_to(process_app, campaign_id).values())
    received = collections.Counter(sms.phone_number for sms in moto_aws.published_sms())
    assert status == 303
    assert final == "finished"
    assert campaign.sent == len(expected) > 5000
    assert campaign.sent + campaign.skipped == campaign.total
    assert_once(received, expected)
    assert {sms.attributes.get("AWS.MM.SMS.OriginationNumber") for sms in moto_aws.published_sms()} == {SENDER_NUMBER}


def test_sns_opted_out_skipped_later(process_app: Flask, operator: FlaskClient, moto_aws: AwsStandIn):
    numbers = ["+14155550101", "+14155550102", "+14155550103"]
    list_id = factories.make_list(process_app, [{"first_name": "N", "phone": number} for number in numbers])
    account_id = factories.make_account(process_app, "sns", moto_aws.account_settings(), FAST)
    moto_aws.opt_out(numbers[1])
    first = sms_campaign(process_app, list_id, account_id)
    launch(operator, first)
    wait_settled(process_app, first)
    second = sms_campaign(process_app, list_id, account_id)

    launch(operator, second)
    wait_settled(process_app, second)

    outcomes = {row.address: (row.status, row.provider_reply) for row in factories.deliveries(process_app, second)}
    with process_app.app_context():
        opted_out = db.session.execute(db.select(OptOut.address).where(OptOut.channel == "sms")).scalars().all()
    assert opted_out == [numbers[1]]
    assert outcomes[numbers[1]] == ("skipped", "opted out")
    assert [sms.phone_number for sms in moto_aws.published_sms()].count(numbers[0]) == 2
    assert [sms.phone_number for sms in moto_aws.published_sms()].count(numbers[1]) == 0


def twilio_account(app: Flask, fake: FakeTwilio, rate: float = FAST, name: str | None = None) -> int:
    values = {"account_sid": fake.account_sid, "auth_token": fake.auth_token, "base_url": fake.url}
    return factories.make_account(app, "twilio", values, rate, name)


def sendgrid_account(app: Flask, fake: FakeSendGrid) -> int:
    return factories.make_account(app, "sendgrid", {"api_key": fake.api_key, "base_url": fake.url}, FAST)


def numbers_list(app: Flask, count: int, first: int = 0, name: str = "Phones") -> tuple[int, list[str]]:
    """Create a list of ``count`` contacts with distinct US example numbers; return its id and the numbers."""
    numbers = [f"+1415555{number:04d}" for number in range(first, first + count)]
    list_id = factories.make_list(app, [{"first_name": f"P{n}", "phone": n} for n in numbers], name=name)
    return list_id, numbers


def busiest_second(times: list[float]) -> int:
    """Return the largest number of ``times`` that fall within one second."""
    ordered = sorted(times)
    busiest, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= 1.0:
            start += 1
        busiest = max(busiest, end - start + 1)
    return busiest


def test_sendgrid_campaign_each_once(
    process_app: Flask, operator: FlaskClient, sample_list: int, fake_sendgrid: FakeSendGrid
):
    campaign_id = email_campaign(process_app, sample_list, sendgrid_account(process_app, fake_sendgrid))

    status = launch(operator, campaign_id)
    final = wait_settled(process_app, campaign_id, RUN_TIMEOUT)

    campaign = factories.campaign(process_app, campaign_id)
    expected = sent_to(process_app, campaign_id)
    received = collections.Counter(email.custom_args["messagehub_id"] for email in fake_sendgrid.accepted)
    assert status == 303
    assert final == "finished"
    assert campaign.sent == len(expected) > 9900
    assert campaign.sent + campaign.skipped == campaign.total
    assert_once(received, set(expected))
    # Full requests of 1,000 personalisations each, not one request per message.
    assert fake_sendgrid.accepted_requests == -(-len(expected) // 1000)
    assert fake_sendgrid.violations == []


def test_twilio_campaign_each_once(
    process_app: Flask, operator: FlaskClient, sample_list: int, fake_twilio: FakeTwilio
):
    campaign_id = sms_campaign(process_app, sample_list, twilio_account(process_app, fake_twilio))

    status = launch(operator, campaign_id)
    final = wait_settled(process_app, campaign_id, RUN_TIMEOUT)

    campaign = factories.campaign(process_app, campaign_id)
    expected = set(sent_to(process_app, campaign_id).values())
    received = collections.Counter(sms.to for sms in fake_twilio.accepted)
    assert status == 303
    assert final == "finished"
    assert campaign.sent == len(expected) > 5000
    assert campaign.sent + campaign.skipped == campaign.total
    assert_once(received, expected)
    assert fake_twilio.violations == []


def test_throttled_storm_slows_down(process_app: Flask, operator: FlaskClient, fake_twilio: FakeTwilio):
    list_id, numbers = numbers_list(process_app, 300)
    campaign_id = sms_campaign(process_app, list_id, twilio_account(process_app, fake_twilio))
    # The account claims 2,000 a second; Twilio allows 30 and replies 429 beyond.
    fake_twilio.limit_rate(30, retry_after=1)

    launch(operator, campaign_id)
    final = wait_settled(process_app, campaign_id)

    accepted = [sms.accepted_at for sms in fake_twilio.accepted]
    rejected = len(fake_twilio.request_times) - len(accepted)
    assert final == "finished"
    assert_once(collections.Counter(sms.to for sms in fake_twilio.accepted), set(numbers))
    assert factories.campaign(process_app, campaign_id).failed == 0
    assert rejected > 0
    # Slowed down: a few rejections a second at most, not one per message.
    assert rejected < len(accepted) / 10
    assert max(accepted) - min(accepted) >= (300 - 30) / 30 * 0.9


def test_invalid_recipients_fail_alone(
    process_app: Flask, operator: FlaskClient, fake_twilio: FakeTwilio, fake_sendgrid: FakeSendGrid
):
    list_id, numbers = numbers_list(process_app, 20)
    fake_twilio.invalid_number(numbers[3])
    fake_twilio.opted_out(numbers[7])
    sms_id = sms_campaign(process_app, list_id, twilio_account(process_app, fake_twilio))
    emails = [f"reader{n}@example.com" for n in range(20)]
    email_list = factories.make_list(process_app, [{"email": e} for e in emails], name="Readers")
    fake_sendgrid.reject_address(emails[5])
    email_id = email_campaign(process_app, email_list, sendgrid_account(process_app, fake_sendgrid))

    launch(operator, sms_id)
    launch(operator, email_id)
    wait_settled(process_app, sms_id)
    wait_settled(process_app, email_id)

    sms_rows = {row.address: row for row in factories.deliveries(process_app, sms_id)}
    email_rows = {row.address: row for row in factories.deliveries(process_app, email_id)}
    assert sms_rows[numbers[3]].status == "failed"
    assert "21211" in sms_rows[numbers[3]].provider_reply
    assert "is not a valid phone number" in sms_rows[numbers[3]].provider_reply
    assert sms_rows[numbers[7]].status == "failed"
    assert "21610" in sms_rows[numbers[7]].provider_reply
    assert [row.status for row in sms_rows.values()].count("sent") == 18
    assert email_rows[emails[5]].status == "failed"
    assert "valid" in email_rows[emails[5]].provider_reply
    assert [row.status for row in email_rows.values()].count("sent") == 19
    assert sorted(email.to_email for email in fake_sendgrid.accepted) == sorted(set(emails) - {emails[5]})


def test_opted_out_skipped_by_later_campaign(process_app: Flask, operator: FlaskClient, fake_twilio: FakeTwilio):
    list_id, numbers = numbers_list(process_app, 5)
    account_id = twilio_account(process_app, fake_twilio)
    fake_twilio.opted_out(numbers[2])
    first = sms_campaign(process_app, list_id, account_id)
    launch(operator, first)
    wait_settled(process_app, first)
    other_list, _ = numbers_list(process_app, 3, first=1, name="Other phones")
    later = sms_campaign(process_app, other_list, account_id)

    launch(operator, later)
    wait_settled(process_app, later)

    rows = {row.address: (row.status, row.provider_reply) for row in factories.deliveries(process_app, later)}
    assert rows[numbers[2]] == ("skipped", "opted out")
    assert [sms.to for sms in fake_twilio.accepted].count(numbers[2]) == 0
    assert [sms.to for sms in fake_twilio.accepted].count(numbers[1]) == 2


def test_account_rate_shared(process_app: Flask, operator: FlaskClient, fake_twilio: FakeTwilio):
    account_id = twilio_account(process_app, fake_twilio, rate=50)
    first_list, first_numbers = numbers_list(process_app, 300)
    second_list, second_numbers = numbers_list(process_app, 300, first=300, name="More phones")
    first = sms_campaign(process_app, first_list, account_id)
    second = sms_campaign(process_app, second_list, account_id)

    launch(operator, first)
    launch(operator, second)
    wait_settled(process_app, first)
    wait_settled(process_app, second)

    accepted = [sms.accepted_at for sms in fake_twilio.accepted]
    overall = (len(accepted) - 1) / (max(accepted) - min(accepted))
    assert_once(collections.Counter(sms.to for sms in fake_twilio.accepted), set(first_numbers + second_numbers))
    assert overall <= 50 * 1.02
    # A process the machine delayed sends its late slot at once, so one
    # second may see a message or two more; the run as a whole may not.
    assert busiest_second(accepted) <= 55
