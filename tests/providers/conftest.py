"""Fixtures for the sender tests: sample data, a certificate, the SMTP test server."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from messagehub.providers.base import OutgoingMessage
from tests.smtpserver import Certificate, SmtpTestServer, make_self_signed_cert


@pytest.fixture(scope="session")
def sample_addresses(shared_data: Path) -> list[str]:
    """Return the first 50 plain ASCII addresses of the sample contact list."""
    addresses = []
    with open(shared_data / "contacts-10k.csv", newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            email = row["email"].strip()
            if email.isascii() and email.count("@") == 1 and " " not in email:
                addresses.append(email)
            if len(addresses) == 50:
                break

    return addresses


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """Return a self-signed certificate for localhost and 127.0.0.1."""
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=[True, False], ids=["pipelining", "one-by-one"])
def smtp_server(request: pytest.FixtureRequest) -> Iterator[SmtpTestServer]:
    """Run a plain SMTP test server with SMTPUTF8 for one test, with and without PIPELINING."""
    with SmtpTestServer(pipelining=request.param) as server:
        yield server


@pytest.fixture
def make_message() -> Callable[..., OutgoingMessage]:
    """Return a factory of small valid messages; keyword arguments override fields."""
    counter = 0

    def make(recipient: str = "alice@example.com", **fields: object) -> OutgoingMessage:
        nonlocal counter
        counter += 1
        message_id = f"<test-{counter}@messagehub.example>"
        data = (
            f"From: News <news@example.org>\r\n"
            f"To: {recipient}\r\n"
            f"Subject: Test {counter}\r\n"
            f"Message-ID: {message_id}\r\n"
            f"\r\n"
            f"Hello number {counter}.\r\n"
        ).encode()
        values: dict[str, object] = {
            "sender": "news@example.org",
            "recipient": recipient,
            "data": data,
            "message_id": message_id,
        }
        values.update(fields)
        return OutgoingMessage(**values)  # type: ignore[arg-type]

    return make
