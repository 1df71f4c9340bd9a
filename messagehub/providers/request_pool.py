"""Concurrent requests for the API senders that send one message per request (Twilio, SES, SNS).

The engine hands such a sender a batch of messages at a time, after it
has reserved the batch's slots of the account's rate (``SharedRate``). A batch
leaves at the start of its reserved span, so it is a burst. ``batch_limit_for``
keeps that burst to 20 ms worth of the rate, and ``RequestPool`` sends a
batch's requests at the same time over a few threads. Each thread keeps its own
keep-alive connection.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, Union

from messagehub.providers.base import Outcome, PermanentFailure, SendError, TemporaryFailure, Throttled

# Seconds of the account's rate that one batch may take. The engine sends
# a batch at the start of the span it reserved, so the busiest second of a run
# may see up to rate * (1 + BURST_SECONDS) messages.
BURST_SECONDS = 0.02

# Requests one sender keeps in flight at most.
# NOTE: a guess. Twilio rejects requests beyond an account's concurrency limit
# with 429 (error 20429, "never processed and always safe to retry"), and its
# error page gives no number. AWS throttles SES and SNS by rate, not by
# concurrent requests. One sender's throughput is at most about
# MAX_IN_FLIGHT / latency, as the engine waits for a batch before the next:
# an estimate of 100 requests/s at 200 ms a request.
MAX_IN_FLIGHT = 20

# Seconds after a throttled request before the pool doubles the requests it
# keeps in flight, starting from one.
THROTTLE_RECOVERY = 2.0

HELD_BACK_REPLY = "not sent: the provider throttled a request, so fewer requests go at once; queued again"

Message = TypeVar("Message")


def batch_limit_for(rate: float | None, max_in_flight: int = MAX_IN_FLIGHT) -> int:
    """Return how many messages one batch may take at ``rate`` messages per second (1 when the rate is unknown)."""
    if rate is None or rate <= 0:
        return 1

    return max(1, min(max_in_flight, math.floor(rate * BURST_SECONDS)))


def held_back() -> TemporaryFailure:
    """Return the outcome of a message held back because the window was narrower than its batch.

    A ``TemporaryFailure`` with ``retry_after`` 0 goes back to the queue at
    once and costs the recipient no attempt.
    """
    return TemporaryFailure(HELD_BACK_REPLY, retry_after=0)


def as_later_outcome(error: SendError) -> SendError:
    """Return ``error`` as the outcome of a message that a later request of a batch did not send.

    The outcome of one message is a ``TemporaryFailure`` (``Throttled``
    included) or a ``PermanentFailure``. So a fault of the provider or the
    connection becomes a ``TemporaryFailure`` with the same reply. The next
    batch then meets the fault at its first request, where it raises.
    """
    if isinstance(error, (TemporaryFailure, PermanentFailure)):
        return error
    return TemporaryFailure(f"not sent: {error.reply}")


class RequestPool:
    """Sends each message of a batch in a request of its own, up to ``threads`` at a time.

    ``send_one`` returns the message's outcome, or raises ``SendError`` for a
    fault of the whole request (see ``BatchSender.send_batch``). It runs on
    the pool's threads, so it must be thread-safe.

    A throttled request (``Throttled``, HTTP 429) narrows ``window`` to one
    request at a time, because every request already in flight when the
    first 429 arrives is likely refused too. After THROTTLE_RECOVERY seconds
    without a throttled request the window doubles, and so on up to
    ``threads``. A sender reports the window as its ``batch_limit``, so the
    engine's next batches fit it.
    """

    def __init__(self, threads: int, name: str, clock: Callable[[], float] = time.monotonic):
        if threads < 1:
            raise ValueError(f"invalid thread count {threads}: expected 1 or more")

        self.threads = threads
        self._name = name
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._throttled_at: float | None = None

    @property
    def window(self) -> int:
        """The number of requests the next batch may send, all at once."""
        if self._throttled_at is None:
            return self.threads

        doublings = int((self._clock() - self._throttled_at) // THROTTLE_RECOVERY)
        return min(self.threads, 2 ** min(doublings, 16))

    def send_each(self, messages: Sequence[Message], send_one: Callable[[Message], Outcome]) -> list[Outcome]:
        """Send the first ``window`` messages at once and return every message's outcome, in order.

        When no message got an outcome of its own, because every request
        failed as a whole, the first failure raises, as for a batch of one.
        Otherwise a failed request becomes its message's outcome through
        ``as_later_outcome``. After the first such failure no further request
        starts, and the messages left get the same outcome. Messages beyond
        the window get ``held_back()``, which the engine queues again at once,
        so no call waits for more than one round of requests.

        With one thread, the messages go one after another, all of them.
        """
        watched = self._watching(send_one)
        if self.threads == 1:
            return _send_in_turn(messages, watched)

        window = self.window
        outcomes = self._send_round(messages[:window], watched)
        outcomes.extend(held_back() for _ in messages[window:])
        return outcomes

    def close(self) -> None:
        """Stop the pool's threads once their requests are done."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def _send_round(self, messages: Sequence[Message], send_one: Callable[[Message], Outcome]) -> list[Outcome]:
        """Send ``messages`` all at once, each on a thread of the pool."""
        if len(messages) == 1:
            return _send_in_turn(messages, send_one)

        batch = _Batch()
        futures = [self._pool().submit(batch.send, message, send_one) for message in messages]
        results = [future.result() for future in futures]
        return batch.outcomes(results)

    def _watching(self, send_one: Callable[[Message], Outcome]) -> Callable[[Message], Outcome]:
        """Wrap ``send_one`` so that a throttled request narrows the window."""

        def send(message: Message) -> Outcome:
            try:
                outcome = send_one(message)
            except Throttled:
                self._throttled_at = self._clock()
                raise

            if isinstance(outcome, Throttled):
                self._throttled_at = self._clock()
            return outcome

        return send

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=self._name)
        return self._executor


# The result of one thread for one message: its outcome, or the failure of its
# whole request, or (None, None) when it did not start because an earlier
# request failed.
_Result = tuple[Union[Outcome, None], Union[SendError, None]]


class _Batch:
    """The requests of one round, and the first of them that failed as a whole."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.first_failure: SendError | None = None

    def send(self, message: Message, send_one: Callable[[Message], Outcome]) -> _Result:
        """Send ``message`` on this thread, unless a request of the round already failed as a whole."""
        if self.first_failure is not None:
            return None, None

        try:
            return send_one(message), None
        except SendError as error:
            self._record(error)
            return None, error

    def outcomes(self, results: list[_Result]) -> list[Outcome]:
        """Combine the threads' results: raise when no message got an outcome, else one outcome each."""
        if self.first_failure is None:
            return [outcome for outcome, _ in results]  # type: ignore[misc]

        if all(outcome is None for outcome, _ in results):
            # Nothing reached the provider's acceptance, so the engine may
            # queue the whole batch again. The first failure in message order raises.
            raise next(error for _, error in results if error is not None)

        outcomes: list[Outcome] = []
        for outcome, error in results:
            if outcome is not None:
                outcomes.append(outcome)
            elif error is not None:
                outcomes.append(as_later_outcome(error))
            else:
                outcomes.append(as_later_outcome(self.first_failure))

        return outcomes

    def _record(self, error: SendError) -> None:
        with self._lock:
            if self.first_failure is None:
                self.first_failure = error


def _send_in_turn(messages: Sequence[Message], send_one: Callable[[Message], Outcome]) -> list[Outcome]:
    """Send the messages one after another; a failure of the first request raises, a later one ends the batch."""
    outcomes: list[Outcome] = []
    for number, message in enumerate(messages):
        try:
            outcome = send_one(message)
        except SendError as error:
            if number == 0:
                raise
            later = as_later_outcome(error)
            outcomes.extend(later for _ in messages[number:])
            break

        outcomes.append(outcome)

    return outcomes
