"""Tests of the send rate shared through the database."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from messagehub.database import create_db_engine
from messagehub.engine.rate import SharedRate
from messagehub.extensions import db
from messagehub.models import ProviderAccount
from tests.conftest import make_app


@pytest.fixture
def account(instance_path: Path) -> tuple[str, int]:
    """Return the database URL and the id of an account on a migrated database."""
    app = make_app(instance_path)
    with app.app_context():
        account = ProviderAccount(name="Twilio", kind="twilio", settings={}, secrets_encrypted="", rate_per_second=1)
        db.session.add(account)
        db.session.commit()
        account_id = account.id
        db.engine.dispose()
    return app.config["SQLALCHEMY_DATABASE_URI"], account_id


def _send_times(engine: Engine, account_id: int, per_second: float, count: int, batch: int, out: list[float]) -> None:
    rate = SharedRate(engine, account_id, per_second)
    for _ in range(count):
        rate.acquire(batch)
        out.extend([time.monotonic()] * batch)


def test_rate_shared_by_senders(account: tuple[str, int]):
    url, account_id = account
    times: list[float] = []
    senders = [
        threading.Thread(target=_send_times, args=(create_db_engine(url), account_id, 200.0, 60, 1, times))
        for _ in range(3)
    ]

    started = time.monotonic()
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    elapsed = time.monotonic() - started

    # 180 messages at 200 a second take at least 0.895 s however many senders share them.
    assert len(times) == 180
    assert elapsed >= 179 / 200 - 0.02
    assert elapsed < 3.0


def test_rate_spaces_batches(account: tuple[str, int]):
    url, account_id = account
    engine = create_db_engine(url)
    times: list[float] = []

    before = time.monotonic()
    _send_times(engine, account_id, 100.0, 5, 20, times)

    # Five batches of 20 at 100 a second: batch k leaves at least k * 0.2 s
    # after the first one's slot began. That is after ``before``, and not
    # after the first batch left: a busy machine may record the first batch
    # late, while every later one leaves on time.
    starts = sorted(set(times))
    assert len(starts) == 5
    for index, start in enumerate(starts):
        assert start - before >= index * 0.2 - 0.01


def test_hold_delays_every_sender(account: tuple[str, int]):
    url, account_id = account
    first = SharedRate(create_db_engine(url), account_id, 1000.0)
    second = SharedRate(create_db_engine(url), account_id, 1000.0)

    first.hold(0.5)
    waited = second.acquire(1)

    assert waited == pytest.approx(0.5, abs=0.05)


def test_idle_account_does_not_burst(account: tuple[str, int]):
    url, account_id = account
    rate = SharedRate(create_db_engine(url), account_id, 50.0)
    rate.acquire(1)
    time.sleep(0.3)

    started = time.monotonic()
    waits = [rate.acquire(1) for _ in range(5)]
    elapsed = time.monotonic() - started

    # After idling, the first message leaves at once and the next four are
    # spaced again: 4 / 50 s in all, not a burst.
    assert waits[0] == 0.0
    assert elapsed >= 4 / 50 - 0.005


def test_rate_must_be_positive(account: tuple[str, int]):
    url, account_id = account

    with pytest.raises(ValueError, match="above zero"):
        SharedRate(create_db_engine(url), account_id, 0)
