"""check_smtp against real servers on 127.0.0.1 and a name that never resolves."""

from __future__ import annotations

import email
import email.policy

from messagehub.providers.diagnostics import CheckStep, check_smtp
from messagehub.providers.smtp import SmtpSettings
from tests.smtpserver import Certificate, SilentServer, SmtpTestServer, unused_port

SENDER = "checks@example.org"


def settings_for(port: int, **overrides: object) -> SmtpSettings:
    """Return settings for a server on 127.0.0.1 with a short timeout."""
    values: dict[str, object] = {"host": "127.0.0.1", "port": port, "timeout": 2.0, "local_hostname": "client.test"}
    values.update(overrides)
    return SmtpSettings(**values)  # type: ignore[arg-type]


def names(steps: list[CheckStep]) -> list[str]:
    """Return the step names in order."""
    return [step.name for step in steps]


def test_check_unresolvable_name() -> None:
    steps = check_smtp(SmtpSettings(host="nonexistent.invalid", port=25, timeout=2.0), sender=SENDER)

    [step] = steps
    assert step.name == "name lookup"
    assert step.ok is False
    assert "cannot resolve host name 'nonexistent.invalid'" in step.detail


def test_check_connection_refused() -> None:
    port = unused_port()

    steps = check_smtp(settings_for(port), sender=SENDER)

    assert names(steps) == ["name lookup", "connect"]
    assert steps[0].ok is True
    assert steps[1].ok is False
    assert steps[1].detail == f"connection refused by 127.0.0.1:{port}: is the server running and is the port right?"


def test_check_no_greeting() -> None:
    with SilentServer() as silent:
        steps = check_smtp(settings_for(silent.port, timeout=0.5), sender=SENDER)

    assert names(steps) == ["name lookup", "connect", "greeting"]
    assert steps[1].ok is True
    assert steps[2].ok is False
    assert f"no reply from 127.0.0.1:{silent.port} within 0.5 s" in steps[2].detail
    assert 0.4 < steps[2].seconds < 2.0


def test_check_bad_password() -> None:
    password = "not-the-password-5521"
    with SmtpTestServer(auth=("campaigns", "s3cret-pass"), require_auth=True) as server:
        settings = settings_for(server.port, username="campaigns", password=password)
        steps = check_smtp(settings, test_recipient="bob@example.com", sender=SENDER)

        assert server.messages == []

    assert names(steps) == ["name lookup", "connect", "greeting", "login"]
    assert [step.ok for step in steps] == [True, True, True, False]
    assert "authentication failed" in steps[3].detail
    assert "535 5.7.8" in steps[3].detail
    assert all(password not in step.detail for step in steps)


def test_check_greeting_lists_extensions(smtp_server: SmtpTestServer) -> None:
    steps = check_smtp(settings_for(smtp_server.port), sender=SENDER)

    greeting = steps[-1]
    assert greeting.name == "greeting"
    assert greeting.ok is True
    assert greeting.detail.startswith("220 smtp.test.invalid")
    assert "SMTPUTF8" in greeting.detail
    assert "8BITMIME" in greeting.detail


def test_check_success_with_test_message() -> None:
    with SmtpTestServer(auth=("campaigns", "s3cret-pass"), require_auth=True) as server:
        settings = settings_for(server.port, username="campaigns", password="s3cret-pass")
        steps = check_smtp(settings, test_recipient="bob@example.com", sender=SENDER)
        [received] = server.messages

    assert names(steps) == ["name lookup", "connect", "greeting", "login", "test message"]
    assert all(step.ok for step in steps)
    assert all(step.seconds >= 0 for step in steps)
    assert "accepted the test message to bob@example.com: 250" in steps[-1].detail
    assert received.recipients == ("bob@example.com",)
    assert received.sender == SENDER
    assert received.login == "campaigns"
    parsed = email.message_from_bytes(received.data, policy=email.policy.default)
    assert parsed["Subject"] == "MessageHub SMTP check"
    assert parsed["To"] == "bob@example.com"


def test_check_test_message_rejected(smtp_server: SmtpTestServer) -> None:
    smtp_server.reject("nobody@example.com")

    steps = check_smtp(settings_for(smtp_server.port), test_recipient="nobody@example.com", sender=SENDER)

    assert names(steps) == ["name lookup", "connect", "greeting", "test message"]
    assert steps[-1].ok is False
    assert steps[-1].detail == "550 5.1.1 user unknown"


def test_check_starttls_self_signed(certificate: Certificate) -> None:
    with SmtpTestServer(starttls=certificate) as server:
        steps = check_smtp(settings_for(server.port, security="starttls", verify_tls=True), sender=SENDER)

    assert names(steps) == ["name lookup", "connect", "greeting", "STARTTLS"]
    assert steps[-1].ok is False
    assert "certificate verify failed" in steps[-1].detail
    assert "self-signed" in steps[-1].detail
    assert "set verify TLS off only for a relay you trust" in steps[-1].detail


def test_check_starttls_unverified(certificate: Certificate) -> None:
    with SmtpTestServer(starttls=certificate) as server:
        steps = check_smtp(settings_for(server.port, security="starttls", verify_tls=False), sender=SENDER)

    assert names(steps) == ["name lookup", "connect", "greeting", "STARTTLS"]
    assert steps[-1].ok is True
    assert "certificate not checked" in steps[-1].detail
    assert steps[-1].detail.startswith("TLSv1")


def test_check_starttls_not_offered(smtp_server: SmtpTestServer) -> None:
    steps = check_smtp(settings_for(smtp_server.port, security="starttls"), sender=SENDER)

    assert steps[-1].name == "STARTTLS"
    assert steps[-1].ok is False
    assert "does not offer STARTTLS" in steps[-1].detail


def test_check_implicit_tls(certificate: Certificate) -> None:
    with SmtpTestServer(implicit_tls=certificate) as server:
        settings = settings_for(server.port, security="tls", verify_tls=False)
        steps = check_smtp(settings, test_recipient="bob@example.com", sender=SENDER)
        [received] = server.messages

    assert names(steps) == ["name lookup", "connect", "TLS", "greeting", "test message"]
    assert all(step.ok for step in steps)
    assert received.tls is True


def test_check_tls_against_plain_port(smtp_server: SmtpTestServer) -> None:
    steps = check_smtp(settings_for(smtp_server.port, security="tls", verify_tls=False), sender=SENDER)

    assert names(steps) == ["name lookup", "connect", "TLS"]
    assert steps[-1].ok is False
    assert "TLS handshake with 127.0.0.1" in steps[-1].detail


def test_check_invalid_test_recipient(smtp_server: SmtpTestServer) -> None:
    recipient = "bob@example.com\r\nBcc: eve@example.com"

    steps = check_smtp(settings_for(smtp_server.port), test_recipient=recipient, sender=SENDER)

    assert steps[-1].name == "test message"
    assert steps[-1].ok is False
    assert "invalid test message address" in steps[-1].detail
    assert smtp_server.messages == []
