"""Time the Background Jobs page and its htmx rows partial while 20 campaigns run in the background.

The web app runs under werkzeug's threaded server on 127.0.0.1 with the
plain-process supervisor. The script launches each campaign through the
real launch form, logged in as an operator, against Postfix's smtp-sink
with its reply to DATA held back by a second (``smtp-sink -w 1``). The
engines therefore stay running while each sends about one message a second,
and the page is timed with live processes behind every row.

Then it times ``GET /jobs/`` (the whole page) and the same URL with
``HX-Request: true`` (the rows partial that the page polls every two
seconds), one request after the other, after one untimed request of each.
Every response must list every campaign as active, so a page that lost
its processes fails instead of looking fast. The campaigns are stopped at
the end, and each pauses after the message in flight.

    .venv/bin/python bench/jobs_page.py --campaigns 20 --requests 50
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from instances import (
    WebServer,
    create_instance,
    database_session,
    insert_contacts,
    insert_campaigns,
    launch_in_background,
    login,
    stop_campaigns,
    use_smtp_server,
)
from smtp_throughput import SmtpSink

# Recipients of each campaign: far more than the campaigns send while the page is timed.
RECIPIENTS = 1_000

# Seconds smtp-sink waits before it replies to DATA.
DATA_DELAY = 1

# Seconds to wait until every campaign runs and has sent a message.
SETTLE_TIMEOUT = 120.0

ACTIVE_ROW = 'data-active-state="active"'


@dataclass(frozen=True)
class JobsPageTimes:
    """Seconds per request of the whole page and of its rows partial."""

    page: list[float]
    partial: list[float]


def measure_jobs_page(directory: Path, campaigns: int, request_count: int) -> JobsPageTimes:
    """Launch ``campaigns`` background campaigns and time ``request_count`` requests of the page and of the partial."""
    with SmtpSink(directory, data_delay=DATA_DELAY) as sink:
        instance_path = create_instance(directory, {"SUPERVISOR": "process"})
        with database_session(instance_path) as session:
            list_id = insert_contacts(session, RECIPIENTS)
            campaign_ids = insert_campaigns(session, list_id, campaigns)
            use_smtp_server(session, sink.port)

        with WebServer(instance_path) as server:
            try:
                http = login(server.url)
                for campaign_id in campaign_ids:
                    launch_in_background(http, server.url, campaign_id)
                wait_until_sending(instance_path, sink, campaigns)

                page = time_requests(http, f"{server.url}/jobs/", {}, campaigns, request_count)
                partial = time_requests(http, f"{server.url}/jobs/", {"HX-Request": "true"}, campaigns, request_count)
            finally:
                stop_campaigns(instance_path)

    return JobsPageTimes(page, partial)


def wait_until_sending(instance_path: Path, sink: SmtpSink, campaigns: int) -> None:
    """Wait until ``campaigns`` processes run and the sink has accepted at least that many messages."""
    from messagehub.supervisor.process import ProcessSupervisor

    supervisor = ProcessSupervisor(instance_path)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        running = sum(state.is_running for state in supervisor.states())
        if running == campaigns and sink.messages() >= campaigns:
            return
        time.sleep(0.2)

    raise TimeoutError(
        f"after {SETTLE_TIMEOUT:.0f} s, {running} of {campaigns} campaign processes run "
        f"and smtp-sink has accepted {sink.messages()} messages"
    )


def time_requests(
    http: requests.Session, url: str, headers: dict[str, str], campaigns: int, request_count: int
) -> list[float]:
    """Return the seconds each of ``request_count`` GET requests took, after one untimed request."""
    fetch_rows(http, url, headers, campaigns)
    durations = []
    for _ in range(request_count):
        started = time.perf_counter()
        fetch_rows(http, url, headers, campaigns)
        durations.append(time.perf_counter() - started)

    return durations


def fetch_rows(http: requests.Session, url: str, headers: dict[str, str], campaigns: int) -> None:
    """GET the jobs page or partial, and raise unless it lists ``campaigns`` active campaigns."""
    response = http.get(url, headers=headers, timeout=30.0, allow_redirects=False)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} failed with status {response.status_code}")

    active = response.text.count(ACTIVE_ROW)
    if active != campaigns:
        raise RuntimeError(f"GET {url} listed {active} active campaigns, expected {campaigns}")


def parse_arguments() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--campaigns", type=int, default=20, help="campaigns running in the background (default 20)")
    parser.add_argument("--requests", type=int, default=50, help="timed requests of the page and of the partial (default 50)")
    return parser.parse_args()


def main() -> None:
    """Time the page and the partial and print their medians."""
    options = parse_arguments()
    with tempfile.TemporaryDirectory(prefix="messagehub-bench-") as directory:
        times = measure_jobs_page(Path(directory), options.campaigns, options.requests)

    for name, durations in (("page", times.page), ("partial", times.partial)):
        print(
            f"{name:>7}: median {statistics.median(durations) * 1000:.1f} ms, "
            f"max {max(durations) * 1000:.1f} ms over {len(durations)} requests"
        )


if __name__ == "__main__":
    main()
