"""The targets of the benchmark, judged against the figures of one ``bench/run.py`` invocation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


class Figure(Protocol):
    """A table row of bench/run.py: its name and its median."""

    name: str
    median: float


@dataclass(frozen=True)
class Target:
    """One target: its wording, the figure it reads, and the test that figure must pass."""

    wording: str
    measured: Callable[[dict[str, float]], float | None]
    met: Callable[[float], bool]
    unit: str
    # A count, shown without decimals.
    whole: bool = False


def _figure(prefix: str, contains: str = "") -> Callable[[dict[str, float]], float | None]:
    """Return a reader of the median of the first figure whose name starts with ``prefix`` and contains ``contains``."""

    def read(medians: dict[str, float]) -> float | None:
        for name, median in medians.items():
            if name.startswith(prefix) and contains in name:
                return median
        return None

    return read


def _ratio(numerator: Callable, denominator: Callable) -> Callable[[dict[str, float]], float | None]:
    def read(medians: dict[str, float]) -> float | None:
        top, bottom = numerator(medians), denominator(medians)
        if top is None or not bottom:
            return None
        return top / bottom

    return read


def _largest(*readers: Callable) -> Callable[[dict[str, float]], float | None]:
    def read(medians: dict[str, float]) -> float | None:
        values = [value for value in (reader(medians) for reader in readers) if value is not None]
        return max(values) if values else None

    return read


_ENGINE_SENDING = _figure("messagehub: engine,", "first to last message")
_ENGINE_LAUNCH = _figure("messagehub: engine,", "launch to exit")
_CEILING = _figure("ceiling:")
_NAIVE = _figure("naive:")
_RSS_SMALL = _figure("messagehub: engine peak RSS", ", 10000 recipients")
_RSS_LARGE = _figure("messagehub: engine peak RSS", ", 1000000 recipients")

TARGETS = (
    # The rate from launch to exit, start-up included, which is the stricter one.
    Target("SMTP: at least 5,000 msg/s, launch to exit", _ENGINE_LAUNCH, lambda value: value >= 5_000, "msg/s"),
    # Sending phases on both sides (bench/run.py, sender_figures).
    Target(
        "SMTP: at least 0.5 of the smtp-source ceiling, both timed first to last message",
        _ratio(_ENGINE_SENDING, _CEILING),
        lambda value: value >= 0.5,
        "times",
    ),
    Target(
        "SMTP: at least 25 times the naive sender, the engine timed first to last message",
        _ratio(_ENGINE_SENDING, _NAIVE),
        lambda value: value >= 25,
        "times",
    ),
    Target(
        "crash: every recipient exactly once, or unconfirmed, after SIGKILLs at full speed",
        _figure("crash: recipients with a duplicate"),
        lambda value: value == 0,
        "recipients at fault",
        whole=True,
    ),
    Target(
        "API: Twilio at 95 % or more of the account's rate of 1,000 msg/s",
        _figure("API: Twilio", "check off"),
        lambda value: value >= 950,
        "msg/s",
    ),
    Target(
        "API: SendGrid at 95 % or more of the account's rate of 1,000 msg/s",
        _figure("API: SendGrid", "check off"),
        lambda value: value >= 950,
        "msg/s",
    ),
    Target(
        "memory: largest engine process under 150 MB at 1,000,000 recipients",
        _RSS_LARGE,
        lambda value: value < 150 * 1e6 / 2**20,
        "MiB",
    ),
    Target(
        "memory: within 20 % from 10,000 to 1,000,000 recipients",
        _ratio(_RSS_LARGE, _RSS_SMALL),
        lambda value: 0.8 <= value <= 1.2,
        "times",
    ),
    Target(
        "import: 1,000,000 rows under 60 s",
        _figure("import: whole import time, 1000000 rows"),
        lambda value: value < 60,
        "s",
    ),
    Target(
        "launch: request to READY=1 under 1 s, at every size",
        _largest(*(_figure(f"launch: request to READY=1, {size} recipients") for size in (1_000, 10_000, 100_000, 1_000_000))),
        lambda value: value < 1_000,
        "ms",
    ),
    Target(
        "jobs page: under 100 ms with 20 campaigns running",
        _figure("jobs page: GET /jobs/ (whole page)"),
        lambda value: value < 100,
        "ms",
    ),
)


def judge(figures: Sequence[Figure]) -> list[str]:
    """Return Markdown lines: each target, the median it was judged on, and whether it was met."""
    medians = {figure.name: figure.median for figure in figures}
    lines = ["| target | measured | met |", "| --- | ---: | --- |"]
    for target in TARGETS:
        value = target.measured(medians)
        if value is None:
            lines.append(f"| {target.wording} | not measured in this run | |")
            continue
        formatted = f"{value:,.0f}" if value >= 100 or target.whole else f"{value:.2f}"
        lines.append(f"| {target.wording} | {formatted} {target.unit} | {'yes' if target.met(value) else '**no**'} |")
    return lines
