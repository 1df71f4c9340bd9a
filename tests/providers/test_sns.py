"""SnsSender against moto's SNS in server mode on 127.0.0.1, behind the checking layer."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import pytest

from messagehub.providers.base import (
    ConnectionLost,
    OutgoingMessage,
    OutgoingSms,
    PermanentFailure,
    ProviderUnavailable,
    SendResult,
    TemporaryFailure,
    Throttled,
)
from messagehub.providers.ses import CREDENTIALS_STEP, ENDPOINT_STEP
from messagehub.providers.sns import (
    DEFAULT_RATE,
    OPTED_OUT_CODE,
    ORIGINATION_NUMBER_ATTRIBUTE,
    SENDER_ID_ATTRIBUTE,
    SMS_TYPE_ATTRIBUTE,
    SnsSender,
)
from tests.fakes.aws import AwsStandIn
from tests.smtpserver import unused_port
from tests.waiting import wait_for

@pytest.fixture(scope="module")
def sample_numbers(shared_data: Path) -> list[str]:
    """Return the first 20 numbers of the sample contact list that are already in E.164 form."""
    numbers = []
    with open(shared_data / "contacts-10k.csv", newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            phone = row["phone"].strip()
            if re.fullmatch(r"\+[1-9][0-9]{6,14}", phone) and not phone.endswith("99"):
                numbers.append(phone)
            if len(numbers) == 20:
                break

    return numbers


def sms(recipient: str, sender: str = "MsgHub", body: str = "Your order has shipped.") -> OutgoingSms:
    return OutgoingSms(recipient=recipient, sender=sender, body=body, message_id=f"<sms-{recipient}@example.org>")


def sender_for(moto_aws: AwsStandIn, **overrides: object) -> SnsSender:
    settings: dict[str, object] = {**moto_aws.account_settings(), "timeout": 5.0}
    settings.update(overrides)
    return SnsSender(**settings)  # type: ignore[arg-type]


def test_publish_with_sender_id(moto_aws: AwsStandIn, sns_sender: SnsSender, sample_numbers: list[str]) -> None:
    message = sms(sample_numbers[0], sender="MsgHub", body="Zoë, your parcel is on its way.")

    [result] = sns_sender.send_batch([message])

    [published] = moto_aws.published_sms()
    assert published.phone_number == sample_numbers[0]
    assert published.message == "Zoë, your parcel is on its way."
    assert published.attributes == {SMS_TYPE_ATTRIBUTE: "Transactional", SENDER_ID_ATTRIBUTE: "MsgHub"}
    assert isinstance(result, SendResult)
    assert result.confirmed is True
    assert result.provider_id == published.message_id


def test_publish_with_origination_number(
    moto_aws: AwsStandIn, sns_sender: SnsSender, sample_numbers: list[str]
) -> None:
    sns_sender.send_batch([sms(sample_numbers[1], sender="+447700900123")])

    [published] = moto_aws.published_sms()
    assert published.attributes == {SMS_TYPE_ATTRIBUTE: "Transactional", ORIGINATION_NUMBER_ATTRIBUTE: "+447700900123"}


def test_publish_without_sender(moto_aws: AwsStandIn, sns_sender: SnsSender, sample_numbers: list[str]) -> None:
    sns_sender.send_batch([sms(sample_numbers[2], sender="")])

    [published] = moto_aws.published_sms()
    assert published.attributes == {SMS_TYPE_ATTRIBUTE: "Transactional"}


def test_publish_promotional(moto_aws: AwsStandIn, sample_numbers: list[str]) -> None:
    sender = sender_for(moto_aws, sms_type="Promotional")

    sender.send_batch([sms(sample_numbers[0])])

    [published] = moto_aws.published_sms()
    assert published.attributes[SMS_TYPE_ATTRIBUTE] == "Promotional"


def test_publish_many(moto_aws: AwsStandIn, sns_sender: SnsSender, sample_numbers: list[str]) -> None:
    results = [sns_sender.send_batch([sms(number)])[0] for number in sample_numbers]

    published = moto_aws.published_sms()
    assert [entry.phone_number for entry in published] == sample_numbers
    assert [result.provider_id for result in results] == [entry.message_id for entry in published]


def test_invalid_sms_type() -> None:
    with pytest.raises(ValueError, match="invalid SMS type 'Urgent'"):
        SnsSender("eu-west-1", "AKIAEXAMPLE", "secret", sms_type="Urgent")


def test_send_rejects_email(sns_sender: SnsSender) -> None:
    email = OutgoingMessage(sender="a@example.org", recipient="b@example.com", data=b"", message_id="<1@x>")

    with pytest.raises(TypeError, match="OutgoingMessage"):
        sns_sender.send_batch([email])


def test_listed_opted_out_number(moto_aws: AwsStandIn, sns_sender: SnsSender, sample_numbers: list[str]) -> None:
    moto_aws.opt_out(sample_numbers[0])

    [outcome] = sns_sender.send_batch([sms(sample_numbers[0])])
    [other] = sns_sender.send_batch([sms(sample_numbers[1])])

    assert isinstance(outcome, PermanentFailure)
    assert outcome.opted_out is True
    assert outcome.code == OPTED_OUT_CODE
    assert isinstance(other, SendResult)
    assert [entry.phone_number for entry in moto_aws.published_sms()] == [sample_numbers[1]]


@pytest.mark.parametrize("number", ["07400 123014", "+1", "447700900123", "+44 7700 900123", ""])
def test_invalid_number_fails(moto_aws: AwsStandIn, sns_sender: SnsSender, number: str) -> None:
    [outcome] = sns_sender.send_batch([sms(number)])

    assert isinstance(outcome, PermanentFailure)
    assert "E.164" in outcome.reply
    assert outcome.opted_out is False
    assert moto_aws.requests() == []


def test_number_rejected_by_sns(moto_aws: AwsStandIn, sns_sender: SnsSender, sample_numbers: list[str]) -> None:
    reason = f"Invalid parameter: PhoneNumber Reason: {sample_numbers[0]} is not valid to publish to"
    moto_aws.faults.fail("Publish", 400, "InvalidParameter", reason)

    [outcome] = sns_sender.send_batch([sms(sample_numbers[0])])

    assert isinstance(outcome, PermanentFailure)
    assert outcome.code == "InvalidParameter"
    assert reason in outcome.reply
    assert moto_aws.published_sms() == []


def test_sender_attribute_rejected(moto_aws: AwsStandIn, sns_sender: SnsSender, sample_numbers: list[str]) -> None:
    moto_aws.faults.fail(
        "Publish", 400, "InvalidParameter",
        "Invalid parameter: MessageAttributes Reason: AWS.SNS.SMS.SenderID is not supported in this country",
    )

    with pytest.raises(ProviderUnavailable, match="sender settings"):
        sns_sender.send_batch([sms(sample_numbers[0])])


@pytest.mark.parametrize("sender", ["MG0123456789abcdef0123456789abcdef", "Shop Nord", "123456", "ABCDEFGHIJKL"])
def test_invalid_sender_unavailable(moto_aws: AwsStandIn, sns_sender: SnsSender, sender: str) -> None:
    with pytest.raises(ProviderUnavailable, match="invalid SMS sender"):
        sns_sender.send_batch([sms("+447700900123", sender=sender)])

    assert moto_aws.requests() == []


def test_empty_body_fails(moto_aws: AwsStandIn, sns_sender: SnsSender) -> None:
    [outcome] = sns_sender.send_batch([sms("+447700900123", body="  \n")])

    assert isinstance(outcome, PermanentFailure)
    assert moto_aws.requests() == []


@pytest.mark.parametrize("operation", ["Publish", "ListPhoneNumbersOptedOut"])
def test_throttling_raises_throttled(
    moto_aws: AwsStandIn, sns_sender: SnsSender, sample_numbers: list[str], operation: str
) -> None:
    moto_aws.faults.throttle(operation)

    with pytest.raises(Throttled) as caught:
        sns_sender.send_batch([sms(sample_numbers[0])])

    assert caught.value.retry_after is None
    assert caught.value.reply == "Throttling: Rate exceeded"
    assert moto_aws.published_sms() == []
    # botocore's own retries are off: one request, no second try.
    assert len(moto_aws.requests(operation)) == 1


def test_throttling_retry_after(moto_aws: AwsStandIn, sns_sender: SnsSender, sample_numbers: list[str]) -> None:
    moto_aws.faults.throttle("Publish", retry_after=2.5)

    with pytest.raises(Throttled) as caught:
        sns_sender.send_batch([sms(sample_numbers[0])])

    assert caught.value.retry_after == 2.5


@pytest.mark.parametrize(
    ("status", "code"),
    [(403, "AuthorizationError"), (403, "InvalidClientTokenId"), (400, "SignatureDoesNotMatch")],
)
def test_account_error_unavailable(
    moto_aws: AwsStandIn, sns_sender: SnsSender, sample_numbers: list[str], status: int, code: str
) -> None:
    moto_aws.faults.fail("Publish", status, code, "User is not authorized to perform: SNS:Publish")

    with pytest.raises(ProviderUnavailable, match="rejected the credentials"):
        sns_sender.send_batch([sms(sample_numbers[0])])


@pytest.mark.parametrize(("status", "code"), [(500, "InternalError"), (503, "ServiceUnavailable")])
def test_server_error_temporary(
    moto_aws: AwsStandIn, sns_sender: SnsSender, sample_numbers: list[str], status: int, code: str
) -> None:
    moto_aws.faults.fail("Publish", status, code, "Service is unavailable. Try again later.")

    with pytest.raises(TemporaryFailure) as caught:
        sns_sender.send_batch([sms(sample_numbers[0])])

    assert not isinstance(caught.value, Throttled)
    assert code in caught.value.reply
    assert len(moto_aws.requests("Publish")) == 1


@pytest.mark.parametrize(
    "overrides",
    [{"secret_access_key": "wrong-secret-0123456789abcdefghijklmn"}, {"access_key_id": "AKIAUNKNOWNKEY000000"}],
)
def test_wrong_credentials_unavailable(
    moto_aws: AwsStandIn, sample_numbers: list[str], overrides: dict[str, str]
) -> None:
    sender = sender_for(moto_aws, **overrides)

    with pytest.raises(ProviderUnavailable, match="rejected the credentials"):
        sender.send_batch([sms(sample_numbers[0])])

    assert moto_aws.published_sms() == []


def test_read_timeout_unconfirmed(moto_aws: AwsStandIn, sample_numbers: list[str]) -> None:
    sender = sender_for(moto_aws, timeout=0.5)
    moto_aws.faults.delay("Publish", 1.5)

    [result] = sender.send_batch([sms(sample_numbers[0])])

    assert isinstance(result, SendResult)
    assert result.confirmed is False
    assert len(moto_aws.requests("Publish")) == 1
    # The stand-in, like AWS, still publishes the message the client gave up on.
    published = wait_for(moto_aws.published_sms, lambda entries: len(entries) == 1, timeout=5)
    assert len(published) == 1


def test_opt_out_list_read_once(moto_aws: AwsStandIn, sns_sender: SnsSender, sample_numbers: list[str]) -> None:
    for number in sample_numbers[:5]:
        sns_sender.send_batch([sms(number)])

    assert len(moto_aws.requests("ListPhoneNumbersOptedOut")) == 1
    assert len(moto_aws.requests("Publish")) == 5


def test_opt_out_check_timeout_not_sent(moto_aws: AwsStandIn, sample_numbers: list[str]) -> None:
    sender = sender_for(moto_aws, timeout=0.3)
    moto_aws.faults.delay("ListPhoneNumbersOptedOut", 0.8)

    with pytest.raises(ConnectionLost):
        sender.send_batch([sms(sample_numbers[0])])

    assert moto_aws.requests("Publish") == []


def test_unreachable_endpoint_connection_lost(moto_aws: AwsStandIn, sample_numbers: list[str]) -> None:
    sender = sender_for(moto_aws, endpoint_url=f"http://127.0.0.1:{unused_port()}")

    with pytest.raises(ConnectionLost, match="cannot reach SNS"):
        sender.send_batch([sms(sample_numbers[0])])


def test_default_endpoint_never_reached(moto_aws: AwsStandIn, sample_numbers: list[str]) -> None:
    sender = sender_for(moto_aws, endpoint_url=None)

    with pytest.raises(ConnectionLost, match=r"sns\.eu-west-1\.amazonaws\.com"):
        sender.send_batch([sms(sample_numbers[0])])


def test_check_reports_spend_limit(moto_aws: AwsStandIn, sns_sender: SnsSender) -> None:
    moto_aws.set_sms_attributes(MonthlySpendLimit="1", DefaultSMSType="Transactional", DefaultSenderID="MsgHub")

    steps = sns_sender.check()

    assert [(name, passed) for name, passed, _ in steps] == [(ENDPOINT_STEP, True), (CREDENTIALS_STEP, True)]
    detail = steps[1][2]
    assert "monthly SMS spend limit USD 1" in detail
    assert "default SMS type Transactional" in detail
    assert "default sender ID MsgHub" in detail


def test_check_without_attributes(moto_aws: AwsStandIn, sns_sender: SnsSender) -> None:
    steps = sns_sender.check()

    assert "spend limit not set" in steps[1][2]


def test_check_wrong_key(moto_aws: AwsStandIn) -> None:
    sender = sender_for(moto_aws, access_key_id="AKIAUNKNOWNKEY000000")

    steps = sender.check()

    assert [(name, passed) for name, passed, _ in steps] == [(ENDPOINT_STEP, True), (CREDENTIALS_STEP, False)]
    assert "InvalidClientTokenId" in steps[1][2]


def test_check_unreachable(moto_aws: AwsStandIn) -> None:
    sender = sender_for(moto_aws, endpoint_url=f"http://127.0.0.1:{unused_port()}")

    steps = sender.check()

    assert [(name, passed) for name, passed, _ in steps] == [(ENDPOINT_STEP, False)]


def test_secret_never_shown(moto_aws: AwsStandIn, caplog: pytest.LogCaptureFixture, sample_numbers: list[str]) -> None:
    wrong_secret = "wrong-secret-0123456789abcdefghijklmn"
    caplog.set_level(logging.DEBUG)
    good = sender_for(moto_aws)
    bad = sender_for(moto_aws, secret_access_key=wrong_secret)

    good.send_batch([sms(sample_numbers[0])])
    good_steps = good.check()
    bad_steps = bad.check()
    with pytest.raises(ProviderUnavailable) as caught:
        bad.send_batch([sms(sample_numbers[0])])

    visible_text = " ".join([caplog.text, repr(good), repr(bad), str(caught.value), str(good_steps), str(bad_steps)])
    assert moto_aws.secret_access_key not in visible_text
    assert wrong_secret not in visible_text
    assert "SnsSender(region='eu-west-1'" in repr(good)


def test_default_rate() -> None:
    assert DEFAULT_RATE == 20.0
