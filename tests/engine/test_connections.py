"""How many SMTP connections a background campaign opens."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from messagehub.engine.process import MAX_SMTP_CONNECTIONS, connection_count
from messagehub.providers.smtp import SmtpSender


def _smtp_runner() -> SimpleNamespace:
    # connection_count only looks at the kind of sender; no connection is opened.
    return SimpleNamespace(sender=SmtpSender.__new__(SmtpSender))


@pytest.mark.parametrize(("configured", "used"), [(0, 1), (-3, 1), (50, MAX_SMTP_CONNECTIONS)])
def test_connections_out_of_range_moved_in(configured, used, caplog):
    with caplog.at_level(logging.WARNING, logger="messagehub.processor"):
        count = connection_count(_smtp_runner(), {"SMTP_CONNECTIONS": configured}, 7)

    assert count == used
    assert f"SMTP_CONNECTIONS is {configured}, outside 1 to {MAX_SMTP_CONNECTIONS}" in caplog.text
    assert caplog.records[0].campaign_id == 7


def test_connections_in_range_kept(caplog):
    with caplog.at_level(logging.WARNING, logger="messagehub.processor"):
        count = connection_count(_smtp_runner(), {"SMTP_CONNECTIONS": 3}, 7)

    assert count == 3
    assert caplog.text == ""


def test_api_sender_uses_one_connection():
    assert connection_count(SimpleNamespace(sender=object()), {"SMTP_CONNECTIONS": 3}, 7) == 1
