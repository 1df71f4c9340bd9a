"""SendGridSender against the SendGrid stand-in, which checks every request against SendGrid's description."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from email.utils import format_datetime
from datetime import datetime, timezone
from pathlib import Path

import pytest

from messagehub.messages.mime import address_for_wire
from messagehub.providers.base import (
    ConnectionLost,
    EmailContent,
    OutgoingMessage,
    PermanentFailure,
    ProviderUnavailable,
    SendError,
    SendResult,
    TemporaryFailure,
    Throttled,
)
from messagehub.providers.sendgrid import (
    IN_DOUBT_REPLY,
    NOT_SENT_AFTER_DOUBT,
    REJECTED_FOR_ANOTHER,
    SendGridSender,
    retry_after_from,
)
from messagehub.providers.request_pool import as_later_outcome
from tests.fakes.sendgrid import INVALID_ADDRESS, FakeSendGrid
from tests.smtpserver import unused_port


@pytest.fixture(scope="module")
def contacts(shared_data: Path) -> list[dict[str, str]]:
    """Return 2,500 contacts of the sample list with valid, distinct, ASCII-local-part addresses."""
    chosen: list[dict[str, str]] = []
    seen: set[str] = set()
    with open(shared_data / "contacts-10k.csv", newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            try:
                wire, needs_smtputf8 = address_for_wire(row["email"].strip())
            except ValueError:
                continue
            if needs_smtputf8 or wire.lower() in seen:
                continue
            seen.add(wire.lower())
            chosen.append({**row, "wire": wire})
            if len(chosen) == 2500:
                break

    return chosen


def make_email(
    number: int,
    recipient: str = "ana@example.com",
    name: str = "Ana",
    text: str | None = None,
    html: str | None = None,
) -> OutgoingMessage:
    """Return a message whose subject, text and HTML are personal to ``number``."""
    content = EmailContent(
        subject=f"Your offer {number}",
        text=text if text is not None else f"Hello {name}, your code is {number}.",
        html=html if html is not None else f"<p>Hello {name}, your code is <b>{number}</b>.</p>",
        from_name="Newsletter",
        from_email="news@example.org",
        reply_to="reply@example.org",
        to_name=name,
        to_email=recipient,
    )
    return OutgoingMessage(
        sender="news@example.org",
        recipient=recipient,
        data=b"",
        message_id=f"<{number}.campaign@messagehub.example>",
        content=content,
    )


def sender_for(fake: FakeSendGrid, **options: object) -> SendGridSender:
    return SendGridSender(fake.api_key, base_url=fake.url, **options)  # type: ignore[arg-type]


def test_batch_2500_in_three_requests(fake_sendgrid: FakeSendGrid, contacts: list[dict[str, str]]) -> None:
    messages = [
        make_email(number, contact["wire"], f"{contact['first_name']} {contact['last_name']}")
        for number, contact in enumerate(contacts)
    ]

    outcomes = sender_for(fake_sendgrid).send_batch(messages)

    request_sizes = sorted(Counter(email.x_message_id for email in fake_sendgrid.accepted).values())
    assert len(fake_sendgrid.request_times) == 3
    assert request_sizes == [500, 1000, 1000]
    assert all(isinstance(outcome, SendResult) and outcome.confirmed for outcome in outcomes)
    assert {outcome.reply for outcome in outcomes} == {"202 Accepted"}
    assert len({outcome.provider_id for outcome in outcomes}) == 2500


def test_batch_every_personalization(fake_sendgrid: FakeSendGrid, contacts: list[dict[str, str]]) -> None:
    messages = [
        make_email(number, contact["wire"], f"{contact['first_name']} {contact['last_name']}")
        for number, contact in enumerate(contacts)
    ]

    sender_for(fake_sendgrid).send_batch(messages)

    delivered = {email.custom_args["messagehub_id"]: email for email in fake_sendgrid.accepted}
    assert len(delivered) == len(messages)
    for message in messages:
        email = delivered[message.message_id]
        assert message.content is not None
        assert email.to_email == message.recipient
        assert email.to_name == message.content.to_name
        assert email.subject == message.content.subject
        assert email.text == message.content.text
        assert email.html == message.content.html
        assert email.from_email == "news@example.org"
        assert email.from_name == "Newsletter"
        assert email.reply_to == "reply@example.org"


def test_oversized_message_alone(fake_sendgrid: FakeSendGrid) -> None:
    big_text = "Ünïcode text. " * 800
    messages = [make_email(1), make_email(2, "ben@example.com", text=big_text), make_email(3, "cy@example.com")]

    outcomes = sender_for(fake_sendgrid).send_batch(messages)

    delivered = {email.to_email: email for email in fake_sendgrid.accepted}
    assert len(fake_sendgrid.request_times) == 2
    assert delivered["ben@example.com"].text == big_text
    assert delivered["ben@example.com"].x_message_id != delivered["ana@example.com"].x_message_id
    assert delivered["cy@example.com"].x_message_id == delivered["ana@example.com"].x_message_id
    assert all(isinstance(outcome, SendResult) for outcome in outcomes)


def test_text_only_message(fake_sendgrid: FakeSendGrid) -> None:
    outcomes = sender_for(fake_sendgrid).send_batch([make_email(1, html=""), make_email(2, "ben@example.com")])

    delivered = {email.to_email: email for email in fake_sendgrid.accepted}
    assert delivered["ana@example.com"].html is None
    assert delivered["ben@example.com"].html == "<p>Hello Ana, your code is <b>2</b>.</p>"
    assert len(fake_sendgrid.request_times) == 2
    assert all(isinstance(outcome, SendResult) for outcome in outcomes)


def test_repeated_address_split(fake_sendgrid: FakeSendGrid) -> None:
    messages = [make_email(1, "ana@example.com"), make_email(2, "ANA@example.com"), make_email(3, "ben@example.com")]

    outcomes = sender_for(fake_sendgrid).send_batch(messages)

    assert len(fake_sendgrid.request_times) == 2
    assert len(fake_sendgrid.accepted) == 3
    assert all(isinstance(outcome, SendResult) for outcome in outcomes)


def test_rejected_address_alone_fails(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.reject_address("cy@example.com")
    messages = [make_email(1), make_email(2, "ben@example.com"), make_email(3, "cy@example.com")]

    first, second, third = sender_for(fake_sendgrid).send_batch(messages)

    assert isinstance(third, PermanentFailure)
    assert third.reply == f"400 {INVALID_ADDRESS}"
    assert third.opted_out is False
    assert type(first) is TemporaryFailure
    assert first.reply == REJECTED_FOR_ANOTHER
    assert first.retry_after == 0
    assert type(second) is TemporaryFailure
    assert fake_sendgrid.accepted == []


def test_wrong_key_unavailable(fake_sendgrid: FakeSendGrid) -> None:
    sender = SendGridSender("SG.not-the-key", base_url=fake_sendgrid.url)

    with pytest.raises(ProviderUnavailable, match="401"):
        sender.send_batch([make_email(1)])

    assert fake_sendgrid.accepted == []


def test_missing_scope_unavailable(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.scopes = ["alerts.read"]

    with pytest.raises(ProviderUnavailable, match="403"):
        sender_for(fake_sendgrid).send_batch([make_email(1)])


def test_throttled_retry_after(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.limit_rate(per_second=0.5, retry_after=7)
    sender = sender_for(fake_sendgrid)
    sender.send_batch([make_email(1)])

    with pytest.raises(Throttled) as caught:
        sender.send_batch([make_email(2, "ben@example.com")])

    assert caught.value.retry_after == 7
    assert "429" in caught.value.reply
    assert len(fake_sendgrid.accepted) == 1


def test_throttled_later_request(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.limit_rate(per_second=0.5, retry_after=3)
    messages = [make_email(number, f"user{number}@example.com") for number in range(4)]

    outcomes = sender_for(fake_sendgrid, batch_limit=2).send_batch(messages)

    assert [type(outcome) for outcome in outcomes] == [SendResult, SendResult, Throttled, Throttled]
    assert outcomes[2].retry_after == 3  # type: ignore[union-attr]
    assert len(fake_sendgrid.accepted) == 2


def test_server_error_temporary(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.fail_next(1, status=503)
    sender = sender_for(fake_sendgrid)

    with pytest.raises(TemporaryFailure) as caught:
        sender.send_batch([make_email(1)])
    retried = sender.send_batch([make_email(1)])

    assert type(caught.value) is TemporaryFailure
    assert caught.value.reply.startswith("503 Service Unavailable")
    assert isinstance(retried[0], SendResult)
    assert len(fake_sendgrid.accepted) == 1


def test_refused_connection_lost() -> None:
    sender = SendGridSender("SG.key", base_url=f"http://127.0.0.1:{unused_port()}", timeout=2)

    with pytest.raises(ConnectionLost, match="could not connect"):
        sender.send_batch([make_email(1)])


def test_slow_reply_unconfirmed(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.slow(1.0)
    messages = [make_email(number, f"user{number}@example.com") for number in range(4)]

    outcomes = sender_for(fake_sendgrid, timeout=0.3, batch_limit=2).send_batch(messages)

    first, second, third, fourth = outcomes
    assert isinstance(first, SendResult)
    assert first.confirmed is False
    assert first.reply == IN_DOUBT_REPLY
    assert isinstance(second, SendResult)
    assert second.confirmed is False
    assert type(third) is TemporaryFailure
    assert third.reply == NOT_SENT_AFTER_DOUBT
    assert type(fourth) is TemporaryFailure
    assert len(fake_sendgrid.request_times) == 1
    assert len(fake_sendgrid.accepted) == 2


def test_check_passes(fake_sendgrid: FakeSendGrid) -> None:
    steps = sender_for(fake_sendgrid).check()

    assert [(name, passed) for name, passed, _ in steps] == [
        ("reach the API", True),
        ("API key accepted", True),
        ("mail.send scope", True),
    ]


def test_check_wrong_key(fake_sendgrid: FakeSendGrid) -> None:
    steps = SendGridSender("SG.not-the-key", base_url=fake_sendgrid.url).check()

    reached, key = steps
    assert reached[1] is True
    assert key[:2] == ("API key accepted", False)
    assert "401" in key[2]


def test_check_missing_scope(fake_sendgrid: FakeSendGrid) -> None:
    fake_sendgrid.scopes = ["alerts.read"]

    steps = sender_for(fake_sendgrid).check()

    assert steps[-1][:2] == ("mail.send scope", False)
    assert "lacks the mail.send scope" in steps[-1][2]


def test_check_unreachable() -> None:
    steps = SendGridSender("SG.key", base_url=f"http://127.0.0.1:{unused_port()}", timeout=2).check()

    [(name, passed, detail)] = steps
    assert name == "reach the API"
    assert passed is False
    assert "could not connect" in detail


def test_key_not_in_logs_or_errors(fake_sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture) -> None:
    # MessageHub keeps the SDK to warnings; an operator may still turn its debug lines on.
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="python_http_client")
    sender = sender_for(fake_sendgrid, timeout=0.3)
    wrong_key = "SG.wrong-secret-value"
    errors: list[SendError] = []

    sender.send_batch([make_email(1)])
    fake_sendgrid.fail_next(1, status=500)
    for failing in (sender, SendGridSender(wrong_key, base_url=fake_sendgrid.url)):
        with pytest.raises(SendError) as caught:
            failing.send_batch([make_email(2)])
        errors.append(caught.value)
    fake_sendgrid.slow(1.0)
    sender.send_batch([make_email(3)])

    assert "Bearer [redacted]" in caplog.text
    assert fake_sendgrid.api_key not in caplog.text
    assert wrong_key not in caplog.text
    assert all(fake_sendgrid.api_key not in str(error) for error in errors)
    assert all(wrong_key not in str(error) for error in errors)
    assert fake_sendgrid.api_key not in repr(sender)


def test_retry_after_seconds() -> None:
    assert retry_after_from({"Retry-After": "12"}, now=1000.0) == 12.0


def test_retry_after_http_date() -> None:
    moment = datetime(2030, 1, 1, 0, 0, 30, tzinfo=timezone.utc)
    now = datetime(2030, 1, 1, 0, 0, 0, tzinfo=timezone.utc).timestamp()

    assert retry_after_from({"Retry-After": format_datetime(moment, usegmt=True)}, now=now) == 30.0


def test_retry_after_rate_limit_reset() -> None:
    assert retry_after_from({"X-RateLimit-Reset": "1045"}, now=1000.0) == 45.0


def test_retry_after_absent() -> None:
    assert retry_after_from({}, now=1000.0) is None


def test_batch_limit_above_1000() -> None:
    with pytest.raises(ValueError, match="batch limit"):
        SendGridSender("SG.key", batch_limit=1001)


def test_message_without_content(fake_sendgrid: FakeSendGrid) -> None:
    message = OutgoingMessage(sender="news@example.org", recipient="ana@example.com", data=b"x", message_id="<1@x>")

    with pytest.raises(ValueError, match="no rendered content"):
        sender_for(fake_sendgrid).send_batch([message])

    assert fake_sendgrid.request_times == []


def test_later_outcome_provider_fault() -> None:
    outcome = as_later_outcome(ProviderUnavailable("401 Unauthorized: key revoked"))

    assert type(outcome) is TemporaryFailure
    assert outcome.reply == "not sent: 401 Unauthorized: key revoked"


def test_later_outcome_keeps_throttled() -> None:
    throttled = Throttled("429 Too Many Requests", retry_after=4)

    assert as_later_outcome(throttled) is throttled
