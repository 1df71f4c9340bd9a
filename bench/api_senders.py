"""Measure the campaign engine sending through the Twilio and SendGrid adapters to their local stand-ins.

Each run starts ``python -m messagehub.engine ID`` on a campaign whose
provider account points at a stand-in on 127.0.0.1 (tests.fakes.twilio and
tests.fakes.sendgrid) with the account's rate set to ``--rate`` messages per
second: an SMS campaign through ``TwilioSender``, one message per request,
and an email campaign through ``SendGridSender``, up to 1,000 personalizations
per request.

The stand-ins check every request against the vendor's OpenAPI description,
which costs milliseconds per request in this process. ``BenchTwilio`` and
``BenchSendGrid`` add a switch that leaves the check out, so the throughput
figures measure MessageHub rather than the checker. ``--check`` turns the
check on, which confirms that the requests are valid and shows its cost.

Rates count the messages of every request but the last, over the time from
the first send request's arrival at the stand-in to the last one's. That
leaves the engine's start-up out. It also matches the account's rate
limiter, which lets a batch leave at the start of its reserved time span.

    .venv/bin/python bench/api_senders.py --rate 1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from werkzeug.wrappers import Request

from instances import create_instance, database_session, insert_contacts, insert_campaigns
from smtp_throughput import REPO, stop_process

sys.path.insert(0, str(REPO))

from tests.fakes.aws import AwsStandIn  # noqa: E402
from tests.fakes.openapi_check import SENDGRID_SPEC, TWILIO_SPEC, ApiDescription, StandInServer  # noqa: E402 - importable once the checkout is on the path
from tests.fakes.sendgrid import FakeSendGrid  # noqa: E402
from tests.fakes.twilio import FakeTwilio  # noqa: E402

SPECS = REPO / ".." / "shared" / "specs"

SMS_SENDER = "+14155550100"
SMS_KINDS = ("twilio", "sns")
SMS_BODY = "Hi {{ first_name | default('there') }}, your reading club code is 1234."

# Seconds one engine run may take before it counts as stuck.
RUN_TIMEOUT = 600.0

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class SwitchableCheck:
    """Mixin for a stand-in: with ``check_requests`` False, requests skip the OpenAPI description check."""

    check_requests = True

    def _wsgi(self, environ, start_response):
        if self.check_requests:
            return super()._wsgi(environ, start_response)

        response = self.respond(Request(environ), [])
        return response(environ, start_response)


class BenchTwilio(SwitchableCheck, FakeTwilio):
    """The Twilio stand-in with a switch for the description check."""


class BenchSendGrid(SwitchableCheck, FakeSendGrid):
    """The SendGrid stand-in with a switch for the description check."""


@dataclass(frozen=True)
class ApiRun:
    """One campaign run through a stand-in: what arrived, how fast, and the CPU time each side spent per message.

    The engine's CPU time counts from the arrival of the first send request,
    so its start-up is left out.
    """

    messages: int
    requests: int
    messages_per_second: float
    requests_per_second: float
    engine_cpu_per_message: float
    stand_in_cpu_per_message: float


def load_description(name: str) -> ApiDescription:
    """Load a vendor's OpenAPI description from the shared specs folder beside the checkout."""
    path = (SPECS / name).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"API description not found: {path} (expected in ../shared/specs beside the checkout)")

    return ApiDescription.load(path)


def prepare_instance(
    directory: Path, kind: str, recipients: int, runs: int, rate: float, account: dict[str, str]
) -> tuple[Path, list[int]]:
    """Create an instance with a provider account of ``kind`` at ``rate`` and ``runs`` draft campaigns through it."""
    instance_path = create_instance(directory, {"SUPERVISOR": "process", "LOG_LEVEL": "WARNING"})
    with database_session(instance_path) as session:
        account_id = insert_account(session, kind, account, rate)
        sms = kind in SMS_KINDS
        list_id = insert_contacts(session, recipients, with_phones=sms)
        fields = {"delivery_method": "account", "provider_account_id": account_id}
        if sms:
            fields.update(channel="sms", subject="", html_body="", text_body=SMS_BODY, sms_sender=SMS_SENDER)
        campaign_ids = insert_campaigns(session, list_id, runs, **fields)

    return instance_path, campaign_ids


def insert_account(session, kind: str, values: dict[str, str], rate: float) -> int:
    """Insert a provider account of ``kind`` with its secret fields encrypted, and return its id."""
    from flask import current_app

    from messagehub.models import ProviderAccount
    from messagehub.provider_accounts import KINDS, store_secrets

    secret_names = {field.name for field in KINDS[kind].secret_fields}
    account = ProviderAccount(
        name=f"Benchmark {kind}",
        kind=kind,
        settings={name: value for name, value in values.items() if name not in secret_names},
        secrets_encrypted="",
        rate_per_second=rate,
    )
    store_secrets(account, current_app.config["SECRET_KEY"], {name: values[name] for name in secret_names})
    session.add(account)
    session.flush()
    return account.id


def run_campaign(
    instance_path: Path,
    campaign_id: int,
    stand_in: StandInServer | AwsSends,
    recipients: int,
    environment: dict[str, str] | None = None,
) -> ApiRun:
    """Run the engine on one campaign, with ``environment`` added to this process's, and measure it."""
    requests_before = len(stand_in.request_times)
    accepted_before = len(stand_in.accepted)
    environment = {**os.environ, **(environment or {}), "MESSAGEHUB_INSTANCE_PATH": str(instance_path)}
    log_path = instance_path / f"engine-{campaign_id}.log"

    with log_path.open("wb") as log:
        cpu_before = time.process_time()
        process = subprocess.Popen(
            [sys.executable, "-m", "messagehub.engine", str(campaign_id)],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            usage = wait_for_engine(process, stand_in, requests_before)
        finally:
            stop_process(process)
        # This process serves the stand-in, and otherwise only waits for the engine.
        stand_in_cpu = time.process_time() - cpu_before

    if usage.status != 0:
        raise RuntimeError(f"engine exited with status {usage.status}: {log_path.read_text(errors='replace')[-2000:]}")

    accepted = stand_in.accepted[accepted_before:]
    check_run(stand_in, accepted, recipients)

    return measure_run(stand_in.request_times[requests_before:], [message.accepted_at for message in accepted], usage, stand_in_cpu)


@dataclass(frozen=True)
class EngineUsage:
    """Exit status of an engine, and its CPU seconds in all and when the first send request arrived."""

    status: int
    cpu_seconds: float
    cpu_at_first_request: float


def wait_for_engine(process: subprocess.Popen, stand_in: StandInServer, requests_before: int) -> EngineUsage:
    """Wait for the engine to exit, reading its CPU time from /proc as the first send request arrives."""
    cpu_at_first_request = None
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        if cpu_at_first_request is None and len(stand_in.request_times) > requests_before:
            cpu_at_first_request = process_cpu_seconds(process.pid)

        pid, wait_status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            # Popen never saw this wait, so tell it the process is gone.
            process.returncode = os.waitstatus_to_exitcode(wait_status)
            return EngineUsage(process.returncode, usage.ru_utime + usage.ru_stime, cpu_at_first_request or 0.0)

        time.sleep(0.005)

    raise TimeoutError(f"engine {process.pid} still running after {RUN_TIMEOUT:.0f} s")


def process_cpu_seconds(pid: int) -> float:
    """Return the user and system CPU seconds a running process has used so far (/proc/PID/stat)."""
    raw = Path(f"/proc/{pid}/stat").read_text()

    # The command name may contain spaces, so count fields after its closing parenthesis:
    # utime and stime are fields 14 and 15 of proc(5), in clock ticks.
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def check_run(stand_in: StandInServer, accepted: list, recipients: int) -> None:
    """Raise unless the stand-in accepted one message per recipient and saw no invalid request."""
    if len(accepted) != recipients:
        raise RuntimeError(f"{type(stand_in).__name__} accepted {len(accepted)} messages, expected {recipients}")

    if stand_in.violations:
        raise RuntimeError(f"{type(stand_in).__name__} saw invalid requests: {stand_in.violations[:3]}")


def measure_run(arrivals: list[float], accepted_at: list[float], usage: EngineUsage, stand_in_cpu: float) -> ApiRun:
    """Compute rates and CPU time per message from the arrivals of the send requests and the acceptance times.

    Every message of one request has the same acceptance time. The rates
    count the messages of every request but the last over the time from the
    first arrival to the last. The engine's CPU time from the first arrival
    on covers the requests after the first, so it is divided by their messages.
    """
    sizes = Counter(accepted_at)
    span = arrivals[-1] - arrivals[0]
    if span <= 0:
        raise RuntimeError("the campaign went out in one request, so no rate can be measured: add recipients")

    messages = len(accepted_at)
    return ApiRun(
        messages=messages,
        requests=len(arrivals),
        messages_per_second=(messages - sizes[max(accepted_at)]) / span,
        requests_per_second=(len(arrivals) - 1) / span,
        engine_cpu_per_message=(usage.cpu_seconds - usage.cpu_at_first_request) / (messages - sizes[min(accepted_at)]),
        stand_in_cpu_per_message=stand_in_cpu / messages,
    )


def measure_twilio(
    directory: Path, recipients: int, runs: int, rate: float, check_requests: bool, keep_alive: bool = True
) -> list[ApiRun]:
    """Send ``runs`` SMS campaigns of ``recipients`` through TwilioSender to the Twilio stand-in."""
    stand_in = BenchTwilio(load_description(TWILIO_SPEC))

    def account() -> dict:
        return {"account_sid": stand_in.account_sid, "auth_token": stand_in.auth_token, "base_url": stand_in.url}

    return measure_stand_in(stand_in, "twilio", account, directory, recipients, runs, rate, check_requests, keep_alive)


def measure_sendgrid(
    directory: Path, recipients: int, runs: int, rate: float, check_requests: bool, keep_alive: bool = True
) -> list[ApiRun]:
    """Send ``runs`` email campaigns of ``recipients`` through SendGridSender to the SendGrid stand-in."""
    stand_in = BenchSendGrid(load_description(SENDGRID_SPEC))

    def account() -> dict:
        return {"api_key": stand_in.api_key, "base_url": stand_in.url}

    return measure_stand_in(stand_in, "sendgrid", account, directory, recipients, runs, rate, check_requests, keep_alive)


def measure_stand_in(
    stand_in: StandInServer,
    kind: str,
    account: Callable[[], dict],
    directory: Path,
    recipients: int,
    runs: int,
    rate: float,
    check_requests: bool,
    keep_alive: bool,
) -> list[ApiRun]:
    """Start ``stand_in``, create ``runs`` campaigns of a ``kind`` account on it, and send each once.

    ``account`` returns the account's fields, which name the stand-in's port
    and so are known only once it runs.
    """
    stand_in.check_requests = check_requests
    stand_in.keep_alive = keep_alive
    with stand_in:
        instance_path, campaign_ids = prepare_instance(directory, kind, recipients, runs, rate, account())
        return [run_campaign(instance_path, campaign_id, stand_in, recipients) for campaign_id in campaign_ids]


@dataclass(frozen=True)
class AcceptedAt:
    """A message the AWS stand-in accepted, and when its request arrived."""

    accepted_at: float


class AwsSends:
    """The send requests of one operation at the AWS stand-in, read the way the HTTP stand-ins offer theirs."""

    def __init__(self, stand_in: AwsStandIn, operation: str):
        self.stand_in = stand_in
        self.operation = operation
        self.violations: list[str] = []

    @property
    def request_times(self) -> list[float]:
        """Return the arrival time of every request of the operation."""
        return [request.received_at for request in self.stand_in.requests(self.operation)]

    @property
    def accepted(self) -> list[AcceptedAt]:
        """Return the requests that got a message id, by arrival time (moto records no reply time)."""
        requests = self.stand_in.requests(self.operation)
        return [AcceptedAt(request.received_at) for request in requests if request.provider_id]


def sealed_aws_environment(directory: Path) -> dict[str, str]:
    """Return variables that keep botocore away from real AWS settings and from the instance metadata service.

    The accounts name their keys and endpoint, so the engine needs none of
    these. They make sure that a mistake cannot reach out either.
    """
    missing = str(directory / "no-aws-config")
    return {
        "AWS_CONFIG_FILE": missing,
        "AWS_SHARED_CREDENTIALS_FILE": missing,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def measure_aws(
    directory: Path, kind: str, recipients: int, runs: int, rate: float, keep_alive: bool = True
) -> list[ApiRun]:
    """Send ``runs`` campaigns of ``recipients`` through SesSender (``kind`` "ses") or SnsSender ("sns") to moto."""
    stand_in = AwsStandIn()
    stand_in.keep_alive = keep_alive
    stand_in.start()
    try:
        stand_in.verify_identity("example.com")
        instance_path, campaign_ids = prepare_instance(directory, kind, recipients, runs, rate, stand_in.account_settings())
        sends = AwsSends(stand_in, "SendEmail" if kind == "ses" else "Publish")
        environment = sealed_aws_environment(directory)
        return [run_campaign(instance_path, campaign_id, sends, recipients, environment) for campaign_id in campaign_ids]
    finally:
        stand_in.stop()


def parse_arguments() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="the provider accounts' rate in messages per second (default 1000)")
    parser.add_argument(
        "--sms", type=int, default=1_000, help="recipients of the Twilio campaign, or 0 to leave it out (default 1000)"
    )
    parser.add_argument(
        "--email", type=int, default=5_000, help="recipients of the SendGrid campaign, or 0 to leave it out (default 5000)"
    )
    parser.add_argument("--runs", type=int, default=1, help="runs of each campaign (default 1)")
    parser.add_argument(
        "--aws", type=int, default=0,
        help="recipients of an SES and an SNS campaign to moto, or 0 to leave them out (default 0)",
    )
    parser.add_argument("--check", action="store_true", help="check every request against the vendor's description")
    parser.add_argument(
        "--close-connections",
        action="store_true",
        help="serve the stand-ins with werkzeug's server, which closes every connection (default: keep-alive)",
    )
    return parser.parse_args()


def main() -> None:
    """Run each campaign and print its rates and CPU use, then the median rate of each provider."""
    options = parse_arguments()
    keep_alive = not options.close_connections
    results: dict[str, list[ApiRun]] = {}
    with tempfile.TemporaryDirectory(prefix="messagehub-bench-") as directory:
        work = Path(directory)
        if options.sms:
            results["twilio"] = measure_twilio(
                work / "twilio", options.sms, options.runs, options.rate, options.check, keep_alive
            )
        if options.email:
            results["sendgrid"] = measure_sendgrid(
                work / "sendgrid", options.email, options.runs, options.rate, options.check, keep_alive
            )
        for kind in ("ses", "sns") if options.aws else ():
            results[kind] = measure_aws(work / kind, kind, options.aws, options.runs, options.rate, keep_alive)

    for name, runs in results.items():
        for run in runs:
            print(
                f"{name:>8}: {run.messages} messages in {run.requests} requests, {run.messages_per_second:,.0f} msg/s, "
                f"{run.requests_per_second:,.0f} requests/s; CPU per message: engine "
                f"{run.engine_cpu_per_message * 1000:.2f} ms, stand-in {run.stand_in_cpu_per_message * 1000:.2f} ms"
            )

    for name, runs in results.items():
        median = statistics.median(run.messages_per_second for run in runs)
        print(f"{name:>8}: median {median:,.0f} msg/s over {len(runs)} run(s) at an account rate of {options.rate:,.0f}")


if __name__ == "__main__":
    main()
