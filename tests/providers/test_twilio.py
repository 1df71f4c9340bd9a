"""TwilioSender against the Twilio stand-in, which checks every request against Twilio's description."""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from messagehub.providers.base import (
    ConnectionLost,
    OutgoingSms,
    PermanentFailure,
    ProviderUnavailable,
    SendError,
    SendResult,
    TemporaryFailure,
    Throttled,
)
from messagehub.providers.twilio import IN_DOUBT_REPLY, TwilioSender
from tests.fakes.http_fixtures import fail_on_violations
from tests.fakes.openapi_check import ApiDescription
from tests.fakes.twilio import FakeTwilio
from tests.smtpserver import unused_port

SENDER_NUMBER = "+14155550199"
MESSAGING_SERVICE = "MG" + "0123456789abcdef" * 2


@pytest.fixture(scope="module")
def numbers(shared_data: Path) -> list[str]:
    """Return the first 5 sample phone numbers already written in E.164."""
    found: list[str] = []
    with open(shared_data / "contacts-10k.csv", newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            if re.fullmatch(r"\+[1-9][0-9]{1,14}", row["phone"]):
                found.append(row["phone"])
            if len(found) == 5:
                break

    return found


def make_sms(number: int, recipient: str, sender: str = SENDER_NUMBER, body: str | None = None) -> OutgoingSms:
    text = body if body is not None else f"Your code is {number}. Reply STOP to opt out."
    return OutgoingSms(recipient=recipient, sender=sender, body=text, message_id=f"delivery-{number}")


def sender_for(fake: FakeTwilio, timeout: float = 5.0, rate: float | None = None) -> TwilioSender:
    return TwilioSender(fake.account_sid, fake.auth_token, base_url=fake.url, timeout=timeout, rate=rate)


def test_send_records_message(fake_twilio: FakeTwilio, numbers: list[str]) -> None:
    body = "Zażółć gęślą jaźń €"
    messages = [make_sms(number, recipient, body=body) for number, recipient in enumerate(numbers)]

    outcomes = sender_for(fake_twilio).send_batch(messages)

    accepted = fake_twilio.accepted
    assert [message.to for message in accepted] == numbers
    assert all(message.from_ == SENDER_NUMBER for message in accepted)
    assert all(message.body == body for message in accepted)
    assert [getattr(outcome, "provider_id", None) for outcome in outcomes] == [message.sid for message in accepted]
    assert all(isinstance(outcome, SendResult) and outcome.confirmed for outcome in outcomes)


def test_messaging_service_sender(fake_twilio: FakeTwilio, numbers: list[str]) -> None:
    sender_for(fake_twilio).send_batch([make_sms(1, numbers[0], sender=MESSAGING_SERVICE)])

    [accepted] = fake_twilio.accepted
    assert accepted.messaging_service_sid == MESSAGING_SERVICE
    assert accepted.from_ is None


def test_alphanumeric_sender(fake_twilio: FakeTwilio, numbers: list[str]) -> None:
    sender_for(fake_twilio).send_batch([make_sms(1, numbers[0], sender="MGM Resort")])

    [accepted] = fake_twilio.accepted
    assert accepted.from_ == "MGM Resort"
    assert accepted.messaging_service_sid is None


def test_invalid_number_permanent(fake_twilio: FakeTwilio, numbers: list[str]) -> None:
    fake_twilio.invalid_number(numbers[0])

    [outcome] = sender_for(fake_twilio).send_batch([make_sms(1, numbers[0])])

    assert isinstance(outcome, PermanentFailure)
    assert outcome.code == "21211"
    assert outcome.opted_out is False
    assert outcome.reply == f"400 21211: The 'To' number {numbers[0]} is not a valid phone number."


def test_opted_out_number(fake_twilio: FakeTwilio, numbers: list[str]) -> None:
    fake_twilio.opted_out(numbers[1])

    [outcome] = sender_for(fake_twilio).send_batch([make_sms(1, numbers[1])])

    assert isinstance(outcome, PermanentFailure)
    assert outcome.code == "21610"
    assert outcome.opted_out is True
    assert outcome.reply == "400 21610: Attempt to send to unsubscribed recipient"


def test_throttled_retry_after(fake_twilio: FakeTwilio, numbers: list[str]) -> None:
    fake_twilio.limit_rate(per_second=1, retry_after=5)
    sender = sender_for(fake_twilio)
    sender.send_batch([make_sms(1, numbers[0])])

    with pytest.raises(Throttled) as caught:
        sender.send_batch([make_sms(2, numbers[1])])

    assert caught.value.retry_after == 5.0
    assert caught.value.reply == "429 20429: Too Many Requests"
    assert len(fake_twilio.accepted) == 1


def test_throttled_later_in_batch(fake_twilio: FakeTwilio, numbers: list[str]) -> None:
    fake_twilio.limit_rate(per_second=1, retry_after=2)

    outcomes = sender_for(fake_twilio).send_batch([make_sms(1, numbers[0]), make_sms(2, numbers[1])])

    assert [type(outcome) for outcome in outcomes] == [SendResult, Throttled]
    assert len(fake_twilio.accepted) == 1


def test_wrong_token_unavailable(fake_twilio: FakeTwilio, numbers: list[str]) -> None:
    sender = TwilioSender(fake_twilio.account_sid, "not-the-token", base_url=fake_twilio.url)

    with pytest.raises(ProviderUnavailable, match="20003"):
        sender.send_batch([make_sms(1, numbers[0])])


def test_server_error_temporary(fake_twilio: FakeTwilio, numbers: list[str]) -> None:
    fake_twilio.fail_next(1, status=500)
    sender = sender_for(fake_twilio)

    with pytest.raises(TemporaryFailure) as caught:
        sender.send_batch([make_sms(1, numbers[0])])
    retried = sender.send_batch([make_sms(1, numbers[0])])

    assert type(caught.value) is TemporaryFailure
    assert caught.value.reply.startswith("500 20500")
    assert isinstance(retried[0], SendResult)


def test_refused_connection_lost(numbers: list[str]) -> None:
    sender = TwilioSender("AC" + "ab" * 16, "token", base_url=f"http://127.0.0.1:{unused_port()}", timeout=2)

    with pytest.raises(ConnectionLost, match="could not connect"):
        sender.send_batch([make_sms(1, numbers[0])])


def test_read_timeout_unconfirmed(fake_twilio: FakeTwilio, numbers: list[str]) -> None:
    fake_twilio.slow(1.0)

    [outcome] = sender_for(fake_twilio, timeout=0.3).send_batch([make_sms(1, numbers[0])])

    assert isinstance(outcome, SendResult)
    assert outcome.confirmed is False
    assert outcome.reply == IN_DOUBT_REPLY
    assert len(fake_twilio.request_times) == 1
    assert len(fake_twilio.accepted) == 1


def test_environment_edge_ignored(
    fake_twilio: FakeTwilio, numbers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_EDGE", "sydney")
    monkeypatch.setenv("TWILIO_REGION", "au1")

    [outcome] = sender_for(fake_twilio).send_batch([make_sms(1, numbers[0])])

    assert isinstance(outcome, SendResult)
    assert len(fake_twilio.accepted) == 1


def test_check_passes(fake_twilio: FakeTwilio) -> None:
    steps = sender_for(fake_twilio).check()

    assert [(name, passed) for name, passed, _ in steps] == [
        ("reach the API", True),
        ("credentials accepted", True),
        ("account active", True),
    ]


def test_check_suspended_account(fake_twilio: FakeTwilio) -> None:
    fake_twilio.account_status = "suspended"

    steps = sender_for(fake_twilio).check()

    assert steps[-1][:2] == ("account active", False)
    assert "suspended" in steps[-1][2]


def test_check_wrong_token(fake_twilio: FakeTwilio) -> None:
    steps = TwilioSender(fake_twilio.account_sid, "not-the-token", base_url=fake_twilio.url).check()

    reached, credentials = steps
    assert reached[1] is True
    assert credentials[:2] == ("credentials accepted", False)
    assert "20003" in credentials[2]


def test_check_unreachable() -> None:
    sender = TwilioSender("AC" + "ab" * 16, "token", base_url=f"http://127.0.0.1:{unused_port()}", timeout=2)

    [(name, passed, detail)] = sender.check()

    assert name == "reach the API"
    assert passed is False
    assert "could not reach" in detail


def test_token_not_in_logs_or_errors(
    fake_twilio: FakeTwilio, numbers: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    # MessageHub keeps the SDK to warnings; an operator may still turn its debug lines on.
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="twilio")
    sender = sender_for(fake_twilio, timeout=0.3)
    wrong_token = "wrong-secret-token-value"
    errors: list[SendError] = []

    sender.send_batch([make_sms(1, numbers[0])])
    steps = sender.check()
    fake_twilio.fail_next(1, status=500)
    for failing in (sender, TwilioSender(fake_twilio.account_sid, wrong_token, base_url=fake_twilio.url)):
        with pytest.raises(SendError) as caught:
            failing.send_batch([make_sms(2, numbers[1])])
        errors.append(caught.value)
    fake_twilio.slow(1.0)
    sender.send_batch([make_sms(3, numbers[2])])

    assert "Twilio API Request" in caplog.text
    assert fake_twilio.auth_token not in caplog.text
    assert wrong_token not in caplog.text
    assert all(fake_twilio.auth_token not in str(error) for error in errors)
    assert all(wrong_token not in str(error) for error in errors)
    assert all(fake_twilio.auth_token not in detail for _, _, detail in steps)
    assert fake_twilio.auth_token not in repr(sender)


def test_invalid_account_sid() -> None:
    with pytest.raises(ValueError, match="account SID"):
        TwilioSender("AC123", "token")


@pytest.fixture
def keep_alive_twilio(twilio_description: ApiDescription) -> Iterator[FakeTwilio]:
    """Run the Twilio stand-in on the keep-alive server, failing the test on requests the description rejects."""
    server = FakeTwilio(twilio_description)
    server.keep_alive = True
    with server:
        yield server
    fail_on_violations(server)


def test_connection_kept_open(keep_alive_twilio: FakeTwilio, numbers: list[str]) -> None:
    sender = sender_for(keep_alive_twilio)

    outcomes = [sender.send_batch([make_sms(number, recipient)])[0] for number, recipient in enumerate(numbers)]
    sender.close()

    assert all(isinstance(outcome, SendResult) and outcome.confirmed for outcome in outcomes)
    assert len(keep_alive_twilio.accepted) == len(numbers)
    assert keep_alive_twilio.connections_accepted == 1


def test_idle_connection_closed_by_server(keep_alive_twilio: FakeTwilio, numbers: list[str]) -> None:
    sender = sender_for(keep_alive_twilio)
    sender.send_batch([make_sms(1, numbers[0])])
    keep_alive_twilio.close_idle_connections()

    [outcome] = sender.send_batch([make_sms(2, numbers[1])])
    sender.close()

    # The closed connection is noticed before the request is written, so the
    # message goes out on a new one instead of ending up unconfirmed.
    assert isinstance(outcome, SendResult)
    assert outcome.confirmed is True
    assert [message.to for message in keep_alive_twilio.accepted] == numbers[:2]
    assert keep_alive_twilio.connections_accepted == 2


def test_concurrent_batch_outcomes(keep_alive_twilio: FakeTwilio, numbers: list[str]) -> None:
    sender = sender_for(keep_alive_twilio, rate=1000)
    messages = [make_sms(number, recipient) for number, recipient in enumerate(numbers)]

    outcomes = sender.send_batch(messages)
    again = sender.send_batch(messages)
    sender.close()

    recipient_of_sid = {message.sid: message.to for message in keep_alive_twilio.accepted}
    assert sender.batch_limit == 20
    assert [recipient_of_sid[outcome.provider_id] for outcome in outcomes] == numbers
    assert [recipient_of_sid[outcome.provider_id] for outcome in again] == numbers
    # Each thread of the pool keeps its connection for the next batch.
    assert keep_alive_twilio.connections_accepted <= len(numbers)


def test_throttled_in_concurrent_batch(fake_twilio: FakeTwilio, numbers: list[str]) -> None:
    fake_twilio.limit_rate(per_second=1, retry_after=2, burst=2)
    sender = sender_for(fake_twilio, rate=1000)
    messages = [make_sms(number, recipient) for number, recipient in enumerate(numbers)]

    outcomes = sender.send_batch(messages)
    sender.close()

    accepted = {message.to for message in fake_twilio.accepted}
    throttled = [message.recipient for message, outcome in zip(messages, outcomes) if isinstance(outcome, Throttled)]
    assert len(accepted) == 2
    assert sorted(throttled) == sorted(set(numbers) - accepted)
    assert all(outcome.retry_after == 2 for outcome in outcomes if isinstance(outcome, Throttled))
    # One request at a time for a while, so a burst does not meet the limit again.
    assert sender.batch_limit == 1


def test_proxy_variable_honoured(
    fake_twilio: FakeTwilio, numbers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{unused_port()}")

    with pytest.raises(ConnectionLost, match="could not connect"):
        sender_for(fake_twilio).send_batch([make_sms(1, numbers[0])])

    assert fake_twilio.request_times == []


def test_no_proxy_bypasses_proxy(
    fake_twilio: FakeTwilio, numbers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{unused_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    [outcome] = sender_for(fake_twilio).send_batch([make_sms(1, numbers[0])])

    assert isinstance(outcome, SendResult)
    assert len(fake_twilio.accepted) == 1
