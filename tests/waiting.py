"""Polling helper shared by tests that wait for another process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(read: Callable[[], T], accept: Callable[[T], bool], timeout: float = 10.0, interval: float = 0.1) -> T:
    """Call `read` until `accept` returns true for its value or `timeout` seconds pass, and return the last value."""
    deadline = time.monotonic() + timeout
    value = read()
    while not accept(value) and time.monotonic() < deadline:
        time.sleep(interval)
        value = read()

    return value
