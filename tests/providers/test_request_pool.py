"""RequestPool and batch sizing: concurrent requests, outcomes in order, and the window after throttling."""

from __future__ import annotations

import threading
import time

import pytest

from messagehub.providers.base import (
    ConnectionLost,
    PermanentFailure,
    ProviderUnavailable,
    SendResult,
    TemporaryFailure,
    Throttled,
)
from messagehub.providers.request_pool import (
    HELD_BACK_REPLY,
    MAX_IN_FLIGHT,
    THROTTLE_RECOVERY,
    RequestPool,
    batch_limit_for,
)


class FakeClock:
    """A monotonic clock that advances only when a test sets ``now``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def accepted(message: str) -> SendResult:
    return SendResult(reply=f"accepted {message}", provider_id=message)


def together(count: int):
    """Return a ``send_one`` that returns only once ``count`` calls run at the same time."""
    barrier = threading.Barrier(count, timeout=5)

    def send(message: str) -> SendResult:
        barrier.wait()
        return accepted(message)

    return send


@pytest.fixture
def pool():
    pool = RequestPool(4, "test-request")
    yield pool
    pool.close()


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(None, 1), (0.5, 1), (50, 1), (99, 1), (200, 4), (1000, 20), (100_000, MAX_IN_FLIGHT)],
)
def test_batch_limit_for_rate(rate: float | None, expected: int) -> None:
    assert batch_limit_for(rate) == expected


def test_requests_overlap(pool: RequestPool) -> None:
    # The barrier lets no call return before all four have started.
    outcomes = pool.send_each(["a", "b", "c", "d"], together(4))

    assert [outcome.provider_id for outcome in outcomes] == ["a", "b", "c", "d"]


def test_outcomes_in_message_order(pool: RequestPool) -> None:
    delays = {"a": 0.2, "b": 0.0, "c": 0.1, "d": 0.05}

    def send(message: str) -> SendResult:
        time.sleep(delays[message])
        return accepted(message)

    outcomes = pool.send_each(list(delays), send)

    assert [outcome.provider_id for outcome in outcomes] == ["a", "b", "c", "d"]


def test_permanent_failure_alone(pool: RequestPool) -> None:
    def send(message: str) -> SendResult | PermanentFailure:
        return PermanentFailure(f"invalid {message}") if message == "b" else accepted(message)

    outcomes = pool.send_each(["a", "b", "c"], send)

    assert [type(outcome) for outcome in outcomes] == [SendResult, PermanentFailure, SendResult]
    assert outcomes[1].reply == "invalid b"


def test_all_failed_raises_first(pool: RequestPool) -> None:
    barrier = threading.Barrier(3, timeout=5)

    def send(message: str) -> SendResult:
        barrier.wait()
        raise ProviderUnavailable(f"401 for {message}")

    with pytest.raises(ProviderUnavailable) as caught:
        pool.send_each(["a", "b", "c"], send)

    assert caught.value.reply == "401 for a"


def test_failed_request_among_accepted(pool: RequestPool) -> None:
    barrier = threading.Barrier(3, timeout=5)

    def send(message: str) -> SendResult:
        barrier.wait()
        if message == "b":
            raise ConnectionLost("connection refused")
        return accepted(message)

    outcomes = pool.send_each(["a", "b", "c"], send)

    assert [type(outcome) for outcome in outcomes] == [SendResult, TemporaryFailure, SendResult]
    assert outcomes[1].reply == "not sent: connection refused"


def test_no_request_starts_after_failure() -> None:
    pool = RequestPool(2, "test-request")
    started: list[str] = []
    second_started = threading.Event()
    first_failed = threading.Event()

    def send(message: str) -> SendResult:
        started.append(message)
        if message == "a":
            second_started.wait(5)
            first_failed.set()
            raise Throttled("429 Too Many Requests", retry_after=3)
        second_started.set()
        first_failed.wait(5)
        time.sleep(0.05)
        return accepted(message)

    outcomes = pool._send_round(["a", "b", "c"], send)
    pool.close()

    # Two threads for three messages: "c" waits for a free thread, and by
    # then "a" has failed.
    assert started == ["a", "b"]
    assert [type(outcome) for outcome in outcomes] == [Throttled, SendResult, Throttled]
    assert outcomes[2].retry_after == 3


def test_throttle_narrows_window() -> None:
    clock = FakeClock()
    pool = RequestPool(8, "test-request", clock=clock)

    def send(message: str) -> SendResult:
        if message == "b":
            raise Throttled("429 Too Many Requests", retry_after=1)
        return accepted(message)

    outcomes = pool.send_each(["a", "b"], send)
    windows = [pool.window]
    for _ in range(5):
        clock.now += THROTTLE_RECOVERY
        windows.append(pool.window)
    pool.close()

    assert [type(outcome) for outcome in outcomes] == [SendResult, Throttled]
    assert windows == [1, 2, 4, 8, 8, 8]


def test_narrow_window_holds_back() -> None:
    clock = FakeClock()
    pool = RequestPool(4, "test-request", clock=clock)
    sent: list[str] = []

    def send(message: str) -> SendResult:
        sent.append(message)
        if message == "throttled":
            raise Throttled("429 Too Many Requests", retry_after=1)
        return accepted(message)

    with pytest.raises(Throttled):
        pool.send_each(["throttled"], send)
    clock.now += THROTTLE_RECOVERY
    outcomes = pool.send_each(["a", "b", "c", "d"], send)
    pool.close()

    assert sent == ["throttled", "a", "b"]
    assert [type(outcome) for outcome in outcomes] == [SendResult, SendResult, TemporaryFailure, TemporaryFailure]
    assert {outcome.reply for outcome in outcomes[2:]} == {HELD_BACK_REPLY}
    assert {outcome.retry_after for outcome in outcomes[2:]} == {0}


def test_one_thread_sends_in_turn() -> None:
    pool = RequestPool(1, "test-request")
    sent: list[str] = []

    def send(message: str) -> SendResult:
        sent.append(message)
        if message == "b":
            raise TemporaryFailure("500 Internal Server Error")
        return accepted(message)

    outcomes = pool.send_each(["a", "b", "c"], send)

    assert sent == ["a", "b"]
    assert [type(outcome) for outcome in outcomes] == [SendResult, TemporaryFailure, TemporaryFailure]


def test_invalid_thread_count() -> None:
    with pytest.raises(ValueError, match="thread count 0"):
        RequestPool(0, "test-request")
