"""How a per-message sender's batches grow with its sending rate."""

from __future__ import annotations

import pytest

from messagehub.engine.runner import BATCH_SECONDS, MAX_BATCH_SIZE, grown_batch_size


@pytest.mark.parametrize(
    ("smallest", "sent", "seconds", "expected"),
    [
        (100, 100, 1.0, 100),  # 100 a second: a quarter second is 25, below the smallest
        (100, 100, 0.05, int(2_000 * BATCH_SECONDS)),  # 2,000 a second
        (100, 1_000, 0.01, MAX_BATCH_SIZE),  # faster than the largest batch allows
        (100, 100, 0.0, MAX_BATCH_SIZE),  # too fast to time
        (5_000, 100, 0.01, 5_000),  # a configured size above the largest stays
    ],
)
def test_batch_grows_toward_quarter_second(smallest, sent, seconds, expected):
    assert grown_batch_size(smallest, sent, seconds) == expected
