"""SmtpSender against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from messagehub.providers.base import (
    ConnectionLost,
    OutgoingMessage,
    PermanentFailure,
    ProviderUnavailable,
    TemporaryFailure,
)
from messagehub.providers.smtp import IN_DOUBT_REPLY, SmtpSender, SmtpSettings, encode_data
from tests.smtpserver import Certificate, SilentServer, SmtpTestServer, unused_port

MakeMessage = Callable[..., OutgoingMessage]


def settings_for(port: int, **overrides: object) -> SmtpSettings:
    """Return settings for a test server on 127.0.0.1 with a short timeout."""
    values: dict[str, object] = {"host": "127.0.0.1", "port": port, "timeout": 2.0, "local_hostname": "client.test"}
    values.update(overrides)
    return SmtpSettings(**values)  # type: ignore[arg-type]


def no_handover() -> None:
    """Stand in for the engine's commit when a test does not look at it."""


class HandoverProbe:
    """An on_handover callback that records what the server had stored at each call."""

    def __init__(self, server: SmtpTestServer):
        self.server = server
        self.stored_at_call: list[int] = []

    def __call__(self) -> None:
        self.stored_at_call.append(len(self.server.messages))


@pytest.fixture
def sender(smtp_server: SmtpTestServer) -> Iterator[SmtpSender]:
    """Return a sender connected to the plain test server, closed after the test."""
    with SmtpSender(settings_for(smtp_server.port)) as smtp_sender:
        yield smtp_sender


def test_send_delivers_exact_bytes(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    message = make_message("bob@example.com")

    result = sender.send(message, no_handover)

    [received] = smtp_server.messages
    assert received.data == message.data
    assert received.sender == "news@example.org"
    assert received.recipients == ("bob@example.com",)
    assert result.confirmed is True
    assert result.reply == "250 2.0.0 OK: queued as Q000001"
    assert result.provider_id == "2.0.0 OK: queued as Q000001"


def test_send_dot_stuffing(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    data = b"Subject: dots\r\n\r\n.\r\n..two\r\n.leading\r\nlast line without CRLF"
    message = make_message(data=data)

    sender.send(message, no_handover)

    [received] = smtp_server.messages
    assert received.data == data + b"\r\n"


def test_encode_data_bare_line_ends() -> None:
    encoded = encode_data(b"a\n.\rb\r\n.c")

    assert encoded == b"a\r\n..\r\nb\r\n..c\r\n"


def test_send_announces_size(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    message = make_message()

    sender.send(message, no_handover)

    [received] = smtp_server.messages
    assert f"SIZE={len(message.data)}" in received.mail_options


def test_connection_reused(
    smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage, sample_addresses: list[str]
) -> None:
    started = time.monotonic()
    for address in sample_addresses:
        sender.send(make_message(address), no_handover)
    elapsed = time.monotonic() - started

    counts = smtp_server.count_by_recipient()
    assert len(sample_addresses) == 50
    assert smtp_server.connection_count == 1
    assert set(counts) == set(sample_addresses)
    assert set(counts.values()) == {1}
    # With Nagle's algorithm on, each final dot waits about 40 ms for a
    # delayed ACK, so 50 messages take over 2 s. Without it they take about 0.1 s.
    assert elapsed < 1.5


def test_deferred_recipient(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    smtp_server.defer("later@example.com", times=1)

    with pytest.raises(TemporaryFailure) as failure:
        sender.send(make_message("later@example.com"), no_handover)
    sender.send(make_message("later@example.com"), no_handover)

    assert failure.value.reply == "451 4.3.0 try again later"
    assert len(smtp_server.messages_to("later@example.com")) == 1
    assert smtp_server.connection_count == 1


def test_rejected_recipient(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    smtp_server.reject("gone@example.com")
    probe = HandoverProbe(smtp_server)

    with pytest.raises(PermanentFailure) as failure:
        sender.send(make_message("gone@example.com"), probe)
    sender.send(make_message("next@example.com"), no_handover)

    assert failure.value.reply == "550 5.1.1 user unknown"
    assert probe.stored_at_call == []
    assert smtp_server.messages_to("gone@example.com") == []
    assert len(smtp_server.messages_to("next@example.com")) == 1
    assert smtp_server.connection_count == 1


def test_multiline_reply_joined(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    multiline = "550-5.1.1 The account does not exist.\r\n550 5.1.1 Check the address."
    smtp_server.reject("gone@example.com", reply=multiline)

    with pytest.raises(PermanentFailure) as failure:
        sender.send(make_message("gone@example.com"), no_handover)

    assert failure.value.reply == "550 5.1.1 The account does not exist. Check the address."


@pytest.mark.parametrize("at", ["RCPT", "DATA"])
def test_drop_before_handover(
    smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage, at: str
) -> None:
    smtp_server.drop_connection_once(at)
    probe = HandoverProbe(smtp_server)

    with pytest.raises(ConnectionLost):
        sender.send(make_message("first@example.com"), probe)
    result = sender.send(make_message("second@example.com"), no_handover)

    assert probe.stored_at_call == []
    assert result.confirmed is True
    assert smtp_server.messages_to("first@example.com") == []
    assert len(smtp_server.messages_to("second@example.com")) == 1
    assert smtp_server.connection_count == 2


def test_idle_drop_reconnects(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    sender.send(make_message("first@example.com"), no_handover)
    smtp_server.drop_connection_once("MAIL")

    result = sender.send(make_message("second@example.com"), no_handover)

    assert result.confirmed is True
    assert len(smtp_server.messages_to("second@example.com")) == 1
    assert smtp_server.connection_count == 2


def test_idle_421_reconnects(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    sender.send(make_message("first@example.com"), no_handover)
    smtp_server.reply_to_mail("421 4.4.2 idle timeout exceeded")

    result = sender.send(make_message("second@example.com"), no_handover)

    assert result.confirmed is True
    assert len(smtp_server.messages_to("second@example.com")) == 1
    assert smtp_server.connection_count == 2


def test_drop_at_mail_of_fresh_connection(
    smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage
) -> None:
    smtp_server.drop_connection_once("MAIL")

    with pytest.raises(ConnectionLost):
        sender.send(make_message(), no_handover)

    assert smtp_server.connection_count == 1


@pytest.mark.parametrize(("at", "stored"), [("after_data", 0), ("after_data_accepted", 1)])
def test_drop_after_handover(
    smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage, at: str, stored: int
) -> None:
    smtp_server.drop_connection_once(at)
    probe = HandoverProbe(smtp_server)

    result = sender.send(make_message("first@example.com"), probe)
    sender.send(make_message("second@example.com"), no_handover)

    assert result.confirmed is False
    assert result.reply == IN_DOUBT_REPLY
    assert probe.stored_at_call == [0]
    assert len(smtp_server.messages_to("first@example.com")) == stored
    assert smtp_server.connection_count == 2


def test_handover_before_final_dot(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    probe = HandoverProbe(smtp_server)

    sender.send(make_message(), probe)

    assert probe.stored_at_call == [0]
    assert len(smtp_server.messages) == 1


def test_handover_error_cancels_message(
    smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage
) -> None:
    def failing_commit() -> None:
        raise RuntimeError("database is locked")

    with pytest.raises(RuntimeError, match="database is locked"):
        sender.send(make_message("first@example.com"), failing_commit)
    sender.send(make_message("second@example.com"), no_handover)

    smtp_server.wait_for_messages(1)
    assert smtp_server.messages_to("first@example.com") == []
    assert smtp_server.connection_count == 2


@pytest.mark.parametrize(
    ("reply", "error"),
    [("554 5.7.1 rejected as spam", PermanentFailure), ("452 4.3.1 insufficient system storage", TemporaryFailure)],
)
def test_data_rejected_after_dot(
    smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage, reply: str, error: type
) -> None:
    smtp_server.reply_to_data(reply)
    probe = HandoverProbe(smtp_server)

    with pytest.raises(error) as failure:
        sender.send(make_message("first@example.com"), probe)
    sender.send(make_message("second@example.com"), no_handover)

    assert failure.value.reply == reply
    assert probe.stored_at_call == [0]
    assert smtp_server.messages_to("first@example.com") == []
    assert smtp_server.connection_count == 1


def test_sender_rejected_at_mail(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    smtp_server.reply_to_mail("550 5.7.1 sender address not allowed")

    with pytest.raises(ProviderUnavailable) as failure:
        sender.send(make_message(), no_handover)

    assert "550 5.7.1 sender address not allowed" in failure.value.reply
    assert "MAIL FROM" in failure.value.reply


def test_size_rejected_at_mail(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    smtp_server.reply_to_mail("552 5.3.4 message size exceeds fixed limit")

    with pytest.raises(PermanentFailure) as failure:
        sender.send(make_message(), no_handover)

    assert failure.value.reply == "552 5.3.4 message size exceeds fixed limit"


def test_deferred_at_mail(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    smtp_server.reply_to_mail("451 4.7.1 rate limited, slow down")

    with pytest.raises(TemporaryFailure) as failure:
        sender.send(make_message(), no_handover)

    assert failure.value.reply == "451 4.7.1 rate limited, slow down"


def test_starttls_self_signed(certificate: Certificate, make_message: MakeMessage) -> None:
    with SmtpTestServer(starttls=certificate, require_starttls=True) as server:
        settings = settings_for(server.port, security="starttls", verify_tls=False)
        with SmtpSender(settings) as sender:
            sender.send(make_message(), no_handover)

        [received] = server.messages
        assert received.tls is True


def test_starttls_verify_fails(certificate: Certificate, make_message: MakeMessage) -> None:
    with SmtpTestServer(starttls=certificate) as server:
        settings = settings_for(server.port, security="starttls", verify_tls=True)
        with SmtpSender(settings) as sender, pytest.raises(ProviderUnavailable) as failure:
            sender.send(make_message(), no_handover)

        assert "certificate verify failed" in failure.value.reply
        assert "self-signed" in failure.value.reply
        assert f"127.0.0.1:{server.port}" in failure.value.reply
        assert server.messages == []


def test_starttls_not_offered(smtp_server: SmtpTestServer, make_message: MakeMessage) -> None:
    settings = settings_for(smtp_server.port, security="starttls")

    with SmtpSender(settings) as sender, pytest.raises(ProviderUnavailable) as failure:
        sender.send(make_message(), no_handover)

    assert "does not offer STARTTLS" in failure.value.reply
    assert smtp_server.messages == []


def test_implicit_tls(certificate: Certificate, make_message: MakeMessage) -> None:
    with SmtpTestServer(implicit_tls=certificate) as server:
        settings = settings_for(server.port, security="tls", verify_tls=False)
        message = make_message()
        with SmtpSender(settings) as sender:
            sender.send(message, no_handover)

        [received] = server.messages
        assert received.tls is True
        assert received.data == message.data


def test_auth_success(make_message: MakeMessage) -> None:
    with SmtpTestServer(auth=("campaigns", "s3cret-pass"), require_auth=True) as server:
        settings = settings_for(server.port, username="campaigns", password="s3cret-pass")
        with SmtpSender(settings) as sender:
            sender.send(make_message(), no_handover)

        [received] = server.messages
        assert received.login == "campaigns"


def test_auth_failure(make_message: MakeMessage) -> None:
    password = "wrong-pass-7731"
    with SmtpTestServer(auth=("campaigns", "s3cret-pass"), require_auth=True) as server:
        settings = settings_for(server.port, username="campaigns", password=password)
        with SmtpSender(settings) as sender, pytest.raises(ProviderUnavailable) as failure:
            sender.send(make_message(), no_handover)

        assert "535 5.7.8" in failure.value.reply
        assert "authentication failed" in failure.value.reply
        assert password not in str(failure.value)
        assert password not in repr(failure.value)
        assert password not in repr(settings)
        assert failure.value.__cause__ is None
        assert server.messages == []


def test_auth_required_without_login(make_message: MakeMessage) -> None:
    with SmtpTestServer(auth=("campaigns", "s3cret-pass"), require_auth=True) as server:
        with SmtpSender(settings_for(server.port)) as sender, pytest.raises(ProviderUnavailable) as failure:
            sender.send(make_message(), no_handover)

        assert "530 5.7.0 Authentication required" in failure.value.reply


def test_auth_not_offered(smtp_server: SmtpTestServer, make_message: MakeMessage) -> None:
    settings = settings_for(smtp_server.port, username="campaigns", password="s3cret-pass")

    with SmtpSender(settings) as sender, pytest.raises(ProviderUnavailable) as failure:
        sender.send(make_message(), no_handover)

    assert "does not offer AUTH" in failure.value.reply


def test_smtputf8_unsupported(make_message: MakeMessage) -> None:
    message = make_message("jörg@xn--bcher-kva.example", needs_smtputf8=True)
    with SmtpTestServer(smtputf8=False) as server:
        with SmtpSender(settings_for(server.port)) as sender, pytest.raises(PermanentFailure) as failure:
            sender.send(message, no_handover)

        assert failure.value.reply.startswith("server does not support SMTPUTF8")
        assert server.messages == []


def test_smtputf8_supported(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    message = make_message("jörg@xn--bcher-kva.example", needs_smtputf8=True)

    sender.send(message, no_handover)

    [received] = smtp_server.messages
    assert received.recipients == ("jörg@xn--bcher-kva.example",)
    assert "SMTPUTF8" in received.mail_options
    assert "BODY=8BITMIME" in received.mail_options
    assert received.data == message.data


def test_non_ascii_without_smtputf8_flag(
    smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage
) -> None:
    with pytest.raises(PermanentFailure) as failure:
        sender.send(make_message("jörg@example.com"), no_handover)

    assert "not ASCII" in failure.value.reply
    assert smtp_server.connection_count == 0


@pytest.mark.parametrize("recipient", ["bob@example.com\r\nRCPT TO:<eve@example.com>", "bob@example.com>", ""])
def test_invalid_recipient(
    smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage, recipient: str
) -> None:
    with pytest.raises(PermanentFailure):
        sender.send(make_message(recipient), no_handover)

    assert smtp_server.connection_count == 0


def test_invalid_sender(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    with pytest.raises(ProviderUnavailable) as failure:
        sender.send(make_message(sender="news@example.org\nX"), no_handover)

    assert "invalid envelope sender" in failure.value.reply


def test_greeting_timeout(make_message: MakeMessage) -> None:
    with SilentServer() as silent:
        settings = settings_for(silent.port, timeout=0.5)
        started = time.monotonic()
        with SmtpSender(settings) as sender, pytest.raises(ProviderUnavailable) as failure:
            sender.send(make_message(), no_handover)
        elapsed = time.monotonic() - started

    assert f"no reply from 127.0.0.1:{silent.port} within 0.5 s" in failure.value.reply
    assert 0.4 < elapsed < 2.0


def test_reply_timeout_after_handover(
    smtp_server: SmtpTestServer, make_message: MakeMessage
) -> None:
    smtp_server.stall_once(seconds=3.0)
    probe = HandoverProbe(smtp_server)

    with SmtpSender(settings_for(smtp_server.port, timeout=0.5)) as sender:
        started = time.monotonic()
        result = sender.send(make_message("first@example.com"), probe)
        elapsed = time.monotonic() - started
        sender.send(make_message("second@example.com"), no_handover)

    assert result.confirmed is False
    assert result.reply == IN_DOUBT_REPLY
    assert probe.stored_at_call == [0]
    assert 0.4 < elapsed < 2.0
    assert smtp_server.messages_to("first@example.com") == []
    assert smtp_server.connection_count == 2


def test_connection_refused(make_message: MakeMessage) -> None:
    port = unused_port()

    with SmtpSender(settings_for(port)) as sender, pytest.raises(ProviderUnavailable) as failure:
        sender.send(make_message(), no_handover)

    expected = f"connection refused by 127.0.0.1:{port}: is the server running and is the port right?"
    assert failure.value.reply == expected


def test_unavailable_then_recovers(make_message: MakeMessage) -> None:
    port = unused_port()

    with SmtpSender(settings_for(port)) as sender:
        with pytest.raises(ProviderUnavailable):
            sender.send(make_message(), no_handover)
        with SmtpTestServer(port=port) as server:
            result = sender.send(make_message(), no_handover)

            assert result.confirmed is True
            assert len(server.messages) == 1


def test_close_then_send_reconnects(smtp_server: SmtpTestServer, sender: SmtpSender, make_message: MakeMessage) -> None:
    sender.send(make_message(), no_handover)
    sender.close()
    sender.send(make_message(), no_handover)

    assert len(smtp_server.messages) == 2
    assert smtp_server.connection_count == 2


def test_was_delivered_unknown(sender: SmtpSender) -> None:
    assert sender.was_delivered("<test-1@messagehub.example>") is None


@pytest.mark.parametrize(
    ("field", "value"), [("security", "ssl"), ("port", 0), ("port", 70000), ("timeout", 0)]
)
def test_settings_invalid(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        SmtpSettings(host="127.0.0.1", **{field: value})  # type: ignore[arg-type]


def test_settings_repr_hides_password() -> None:
    settings = SmtpSettings(host="mail.example.com", username="u", password="hunter2-secret")

    assert "hunter2-secret" not in repr(settings)


def test_server_record_folder(tmp_path: Path, make_message: MakeMessage) -> None:
    message = make_message("bob@example.com")

    with SmtpTestServer(record_dir=tmp_path) as server:
        with SmtpSender(settings_for(server.port)) as sender:
            sender.send(message, no_handover)

    envelope = json.loads((tmp_path / "000001.json").read_text())
    assert sorted(os.listdir(tmp_path)) == ["000001.eml", "000001.json"]
    assert (tmp_path / "000001.eml").read_bytes() == message.data
    assert envelope["recipients"] == ["bob@example.com"]
    assert envelope["sender"] == "news@example.org"
