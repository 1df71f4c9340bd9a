"""SesSender against moto's SES v2 in server mode on 127.0.0.1, behind the checking layer."""

from __future__ import annotations

import logging

import pytest

from messagehub.messages.mime import build_message, make_message_id
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
from messagehub.providers.ses import CREDENTIALS_STEP, DEFAULT_RATE, ENDPOINT_STEP, SENDING_STEP, SesSender
from tests.fakes.aws import AwsStandIn
from tests.smtpserver import unused_port
from tests.waiting import wait_for

SENDER = "news@example.org"


def campaign_message(recipient: str, delivery_id: int = 1) -> OutgoingMessage:
    """Build a message as a campaign does: multipart, non-ASCII subject and name."""
    return build_message(
        subject="Frühjahrsangebote – jetzt 20 % sparen",
        text="Hallo Zoë,\nunsere Angebote gelten bis Sonntag.\n",
        html="<p>Hallo Zoë,</p><p>unsere Angebote gelten bis <b>Sonntag</b>.</p>",
        from_name="Bücherei Nord",
        from_email=SENDER,
        reply_to="service@example.org",
        to_name="Zoë Åström",
        to_email=recipient,
        message_id=make_message_id(7, delivery_id, "example.org", "test-install-token"),
    )


def sender_for(moto_aws: AwsStandIn, **overrides: object) -> SesSender:
    settings: dict[str, object] = {**moto_aws.account_settings(), "timeout": 5.0}
    settings.update(overrides)
    return SesSender(**settings)  # type: ignore[arg-type]


@pytest.fixture
def verified(moto_aws: AwsStandIn) -> AwsStandIn:
    """Return the stand-in with the sender's domain verified in SES."""
    moto_aws.verify_identity("example.org")
    return moto_aws


def test_send_stores_identical_bytes(verified: AwsStandIn, ses_sender: SesSender, sample_addresses: list[str]) -> None:
    message = campaign_message(sample_addresses[0])

    [result] = ses_sender.send_batch([message])

    [stored] = verified.sent_emails()
    assert stored.data == message.data
    assert stored.sender == SENDER
    assert stored.recipients == [sample_addresses[0]]
    assert isinstance(result, SendResult)
    assert result.confirmed is True
    assert result.provider_id == stored.message_id


def test_send_many_in_order(verified: AwsStandIn, ses_sender: SesSender, sample_addresses: list[str]) -> None:
    messages = [campaign_message(address, number) for number, address in enumerate(sample_addresses[:20])]

    results = [ses_sender.send_batch([message])[0] for message in messages]

    stored = verified.sent_emails()
    assert [email.data for email in stored] == [message.data for message in messages]
    assert [result.provider_id for result in results] == [email.message_id for email in stored]


def test_send_configuration_set(verified: AwsStandIn, sample_addresses: list[str]) -> None:
    sender = sender_for(verified, configuration_set="campaigns")

    sender.send_batch([campaign_message(sample_addresses[0])])

    [request] = verified.requests("SendEmail")
    assert request.params["ConfigurationSetName"] == "campaigns"


def test_send_batch_limit(ses_sender: SesSender, sample_addresses: list[str]) -> None:
    messages = [campaign_message(address) for address in sample_addresses[:2]]

    with pytest.raises(ValueError, match="at most 1"):
        ses_sender.send_batch(messages)

    assert ses_sender.batch_limit == 1


def test_send_rejects_sms(ses_sender: SesSender) -> None:
    with pytest.raises(TypeError, match="OutgoingSms"):
        ses_sender.send_batch([OutgoingSms("+447700900123", "Shop", "hello", "<1@example.org>")])


def test_unverified_sender_unavailable(moto_aws: AwsStandIn, ses_sender: SesSender) -> None:
    with pytest.raises(ProviderUnavailable, match="verify it in SES") as caught:
        ses_sender.send_batch([campaign_message("bob@example.com")])

    assert SENDER in caught.value.reply
    assert moto_aws.sent_emails() == []


def test_non_ascii_recipient_fails(verified: AwsStandIn, ses_sender: SesSender) -> None:
    message = campaign_message("bob@example.com")
    utf8_message = OutgoingMessage(
        sender=SENDER, recipient="jürgen@example.com", data=message.data, message_id=message.message_id,
        needs_smtputf8=True,
    )

    [outcome] = ses_sender.send_batch([utf8_message])

    assert isinstance(outcome, PermanentFailure)
    assert "ASCII" in outcome.reply
    assert verified.requests("SendEmail") == []


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (400, "MessageRejected", "Email address is not verified. The following identities failed the check "
                                 "in region EU-WEST-1: bob@example.com"),
        (400, "BadRequestException", "Illegal address"),
    ],
)
def test_recipient_error_fails_message(
    verified: AwsStandIn, ses_sender: SesSender, status: int, code: str, message: str
) -> None:
    verified.faults.fail("SendEmail", status, code, message)

    [outcome] = ses_sender.send_batch([campaign_message("bob@example.com")])

    assert isinstance(outcome, PermanentFailure)
    assert outcome.code == code
    assert message in outcome.reply
    assert outcome.opted_out is False


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (400, "MessageRejected", "Email address is not verified. The following identities failed the check "
                                 f"in region EU-WEST-1: {SENDER}"),
        (403, "AccessDeniedException", "User is not authorized to perform: ses:SendEmail"),
        (400, "SendingPausedException", "Sending is paused for this account."),
        (400, "AccountSuspendedException", "Your account has been suspended."),
        (400, "MailFromDomainNotVerifiedException", "The MAIL FROM domain is not verified."),
        (404, "NotFoundException", "Configuration set <campaigns> does not exist."),
        (400, "ThrottlingException", "Daily message quota exceeded."),
    ],
)
def test_account_error_unavailable(
    verified: AwsStandIn, ses_sender: SesSender, status: int, code: str, message: str
) -> None:
    verified.faults.fail("SendEmail", status, code, message)

    with pytest.raises(ProviderUnavailable) as caught:
        ses_sender.send_batch([campaign_message("bob@example.com")])

    assert code in caught.value.reply
    assert verified.sent_emails() == []


@pytest.mark.parametrize(
    ("status", "code"), [(500, "InternalFailure"), (503, "ServiceUnavailable"), (502, "BadGateway")]
)
def test_server_error_temporary(verified: AwsStandIn, ses_sender: SesSender, status: int, code: str) -> None:
    verified.faults.fail("SendEmail", status, code, "We encountered an internal error. Please try again.")

    with pytest.raises(TemporaryFailure) as caught:
        ses_sender.send_batch([campaign_message("bob@example.com")])

    assert not isinstance(caught.value, Throttled)
    assert code in caught.value.reply
    # botocore's own retries are off: the engine decides about the next attempt.
    assert len(verified.requests("SendEmail")) == 1


def test_throttling_raises_throttled(verified: AwsStandIn, ses_sender: SesSender) -> None:
    verified.faults.throttle("SendEmail")

    with pytest.raises(Throttled) as caught:
        ses_sender.send_batch([campaign_message("bob@example.com")])
    [retried] = ses_sender.send_batch([campaign_message("bob@example.com")])

    assert caught.value.retry_after is None
    assert "TooManyRequestsException" in caught.value.reply
    assert [request.status for request in verified.requests("SendEmail")] == [429, 200]
    assert isinstance(retried, SendResult)
    assert len(verified.sent_emails()) == 1


def test_throttling_retry_after(verified: AwsStandIn, ses_sender: SesSender) -> None:
    verified.faults.throttle("SendEmail", retry_after=3)

    with pytest.raises(Throttled) as caught:
        ses_sender.send_batch([campaign_message("bob@example.com")])

    assert caught.value.retry_after == 3.0


def test_rate_limit_throttles_excess(verified: AwsStandIn, ses_sender: SesSender) -> None:
    verified.faults.limit_rate("SendEmail", per_second=1, burst=2)
    outcomes: list[object] = []

    for number in range(3):
        try:
            outcomes.extend(ses_sender.send_batch([campaign_message("bob@example.com", number)]))
        except Throttled as error:
            outcomes.append(error)

    assert isinstance(outcomes[0], SendResult)
    assert isinstance(outcomes[1], SendResult)
    assert isinstance(outcomes[2], Throttled)
    assert len(verified.sent_emails()) == 2


def test_read_timeout_unconfirmed(verified: AwsStandIn) -> None:
    sender = sender_for(verified, timeout=0.5)
    verified.faults.delay("SendEmail", 1.5)

    [result] = sender.send_batch([campaign_message("bob@example.com")])

    assert isinstance(result, SendResult)
    assert result.confirmed is False
    assert result.provider_id is None
    assert len(verified.requests("SendEmail")) == 1
    # The stand-in, like AWS, still handles the request the client gave up on.
    stored = wait_for(verified.sent_emails, lambda emails: len(emails) == 1, timeout=5)
    assert len(stored) == 1


def test_unreachable_endpoint_connection_lost(moto_aws: AwsStandIn) -> None:
    sender = sender_for(moto_aws, endpoint_url=f"http://127.0.0.1:{unused_port()}")

    with pytest.raises(ConnectionLost, match="cannot reach SES"):
        sender.send_batch([campaign_message("bob@example.com")])


def test_default_endpoint_never_reached(moto_aws: AwsStandIn) -> None:
    sender = sender_for(moto_aws, endpoint_url=None)

    with pytest.raises(ConnectionLost, match=r"email\.eu-west-1\.amazonaws\.com"):
        sender.send_batch([campaign_message("bob@example.com")])


@pytest.mark.parametrize(
    "overrides",
    [{"secret_access_key": "wrong-secret-0123456789abcdefghijklmn"}, {"access_key_id": "AKIAUNKNOWNKEY000000"}],
)
def test_wrong_credentials_unavailable(verified: AwsStandIn, overrides: dict[str, str]) -> None:
    sender = sender_for(verified, **overrides)

    with pytest.raises(ProviderUnavailable, match="rejected the credentials"):
        sender.send_batch([campaign_message("bob@example.com")])

    assert verified.sent_emails() == []


def test_check_reports_quota(moto_aws: AwsStandIn, ses_sender: SesSender) -> None:
    steps = ses_sender.check()

    assert [(name, passed) for name, passed, _ in steps] == [
        (ENDPOINT_STEP, True), (CREDENTIALS_STEP, True), (SENDING_STEP, True),
    ]
    detail = steps[2][2]
    assert "production access" in detail
    assert "50000 messages per 24 hours" in detail
    assert "max send rate 14 per second" in detail


def test_check_counts_sent(verified: AwsStandIn, ses_sender: SesSender) -> None:
    ses_sender.send_batch([campaign_message("bob@example.com")])

    steps = ses_sender.check()

    assert "1 sent in the last 24 hours" in steps[2][2]


def test_check_sandbox(moto_aws: AwsStandIn, ses_sender: SesSender) -> None:
    moto_aws.ses_account["ProductionAccessEnabled"] = False
    moto_aws.ses_account["SendQuota"] = {"Max24HourSend": 200.0, "MaxSendRate": 1.0}

    name, passed, detail = ses_sender.check()[2]

    assert passed is True
    assert "sandbox" in detail
    assert "max send rate 1 per second" in detail


def test_check_unlimited_quota(moto_aws: AwsStandIn, ses_sender: SesSender) -> None:
    moto_aws.ses_account["SendQuota"] = {"Max24HourSend": -1.0, "MaxSendRate": 500.0}

    detail = ses_sender.check()[2][2]

    assert "no daily quota" in detail
    assert "max send rate 500 per second" in detail


def test_check_sending_paused(moto_aws: AwsStandIn, ses_sender: SesSender) -> None:
    moto_aws.ses_account["SendingEnabled"] = False

    name, passed, detail = ses_sender.check()[2]

    assert name == SENDING_STEP
    assert passed is False
    assert "paused" in detail


def test_check_wrong_secret(moto_aws: AwsStandIn) -> None:
    sender = sender_for(moto_aws, secret_access_key="wrong-secret-0123456789abcdefghijklmn")

    steps = sender.check()

    assert [(name, passed) for name, passed, _ in steps] == [(ENDPOINT_STEP, True), (CREDENTIALS_STEP, False)]
    assert "SignatureDoesNotMatch" in steps[1][2]


def test_check_unreachable(moto_aws: AwsStandIn) -> None:
    sender = sender_for(moto_aws, endpoint_url=f"http://127.0.0.1:{unused_port()}")

    steps = sender.check()

    assert [(name, passed) for name, passed, _ in steps] == [(ENDPOINT_STEP, False)]


def test_check_timeout(moto_aws: AwsStandIn) -> None:
    sender = sender_for(moto_aws, timeout=0.3)
    moto_aws.faults.delay("GetAccount", 0.8)

    steps = sender.check()

    assert [(name, passed) for name, passed, _ in steps] == [(ENDPOINT_STEP, False)]
    assert "0.3 s" in steps[0][2]


def test_secret_never_shown(verified: AwsStandIn, caplog: pytest.LogCaptureFixture) -> None:
    wrong_secret = "wrong-secret-0123456789abcdefghijklmn"
    caplog.set_level(logging.DEBUG)
    good = sender_for(verified)
    bad = sender_for(verified, secret_access_key=wrong_secret)

    good.send_batch([campaign_message("bob@example.com")])
    good_steps = good.check()
    bad_steps = bad.check()
    with pytest.raises(ProviderUnavailable) as caught:
        bad.send_batch([campaign_message("bob@example.com")])

    visible_text = " ".join([caplog.text, repr(good), repr(bad), str(caught.value), str(good_steps), str(bad_steps)])
    assert verified.secret_access_key not in visible_text
    assert wrong_secret not in visible_text
    assert "SesSender(region='eu-west-1'" in repr(good)


def test_invalid_settings_rejected(moto_aws: AwsStandIn) -> None:
    with pytest.raises(ValueError, match="region"):
        sender_for(moto_aws, region="")
    with pytest.raises(ValueError, match="timeout"):
        sender_for(moto_aws, timeout=0)


def test_default_rate() -> None:
    assert DEFAULT_RATE == 14.0
