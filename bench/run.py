"""Run every MessageHub benchmark in one go and print one table (``make bench``).

Figures, each the median of several runs in this same invocation, so the
ratios compare runs that shared the machine's load:

  ceiling     Postfix smtp-source into smtp-sink, 8 persistent sessions
  naive       Python smtplib, one connection and one EmailMessage per message
  messagehub  the campaign engine sending a personalised multipart campaign
  peak RSS    of the engine's largest process, and of all its processes added
              up, for 10,000 and 1,000,000 recipients
  crash       SIGKILL to the engine while it sends at full speed, then resume:
              what every recipient got (bench/crash_check.py)
  import      bench/import_csv.py on a generated file
  launch      web app launch request to the engine's READY=1 and first message
  jobs page   GET /jobs/ and its htmx partial with 20 campaigns running
  API         the engine through TwilioSender and SendGridSender to local stand-ins

BENCH_FULL=1 adds 1,000,000-recipient launches, and lets every peak-RSS run
finish however long it takes. The table also goes to bench/results/latest.md, with
the date and the machine.

    .venv/bin/python bench/run.py [--recipients N] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_senders import ApiRun, measure_sendgrid, measure_twilio  # noqa: E402 - found through the path set above
from crash_check import describe, run_crash_check  # noqa: E402
from jobs_page import measure_jobs_page  # noqa: E402
from launch_latency import LaunchTimes, measure_launches  # noqa: E402
from targets import judge  # noqa: E402
from smtp_throughput import (  # noqa: E402
    CEILING_SESSIONS,
    MESSAGE_BYTES,
    Measurement,
    SmtpSink,
    campaign_message_bytes,
    measure_engine,
    naive_message,
    run_ceiling,
    run_naive,
    stop_process,
    wait_with_usage,
)

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "latest.md"
# The output of a run with other sizes or counts, unless --output names a
# file, so that a quick look does not replace the figures the docs quote.
CUSTOM_OUTPUT = BENCH_DIR / "results" / "custom.md"

IMPORT_LINE = re.compile(r"^\s*import:\s+([\d.]+) s\s+([\d,]+) rows/s", re.MULTILINE)
WHOLE_LINE = re.compile(r"^\s*whole:\s+([\d.]+) s\s+([\d,]+) rows/s", re.MULTILINE)
WHOLE_CPU_LINE = re.compile(r"^CPU time of the whole import, its worker processes included: ([\d.]+) s$", re.MULTILINE)
WHOLE_PEAK_LINE = re.compile(
    r"^peak resident memory of the whole import: command (\d+) MiB, largest of its \d+ child processes (\d+) MiB$",
    re.MULTILINE,
)

# A figure with more runs than this lists only their range in the table.
LISTED_RUNS = 10


@dataclass
class Figure:
    """One row of the table: a name, the value of every run and how to compare it."""

    name: str
    unit: str
    values: list[float]
    is_rate: bool = False
    note: str = ""

    @property
    def median(self) -> float:
        """Return the median over the runs."""
        return statistics.median(self.values)


@dataclass
class Report:
    """The figures of one invocation with the facts needed to read them."""

    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_arguments() -> argparse.Namespace:
    """Read the command line; BENCH_FULL=1 in the environment enlarges the defaults."""
    full = os.environ.get("BENCH_FULL") == "1"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=50_000, help="recipients of the throughput campaign (default 50000)")
    parser.add_argument("--runs", type=int, default=5, help="runs of the ceiling and the naive sender (default 5)")
    parser.add_argument("--engine-runs", type=int, default=3, help="runs of the throughput campaign (default 3)")
    parser.add_argument("--ceiling-messages", type=int, default=50_000, help="messages per smtp-source run (default 50000)")
    parser.add_argument("--naive-messages", type=int, default=2_000, help="messages per naive run (default 2000)")
    parser.add_argument(
        "--rss-recipients",
        type=int,
        nargs="+",
        default=[10_000, 1_000_000],
        help="campaign sizes whose peak RSS is measured (default 10000 1000000)",
    )
    parser.add_argument(
        "--rss-seconds",
        type=float,
        default=0.0 if full else 120.0,
        help="stop each peak-RSS run after this many seconds, 0 for never (default 120, 0 with BENCH_FULL=1)",
    )
    parser.add_argument(
        "--import-rows",
        type=int,
        default=1_000_000,
        help="rows of the import benchmark (default 1000000)",
    )
    parser.add_argument(
        "--crash-recipients", type=int, default=30_000, help="recipients of the campaign killed while it sends (default 30000)"
    )
    parser.add_argument("--crash-kills", type=int, default=3, help="SIGKILLs to that campaign's engine (default 3)")
    parser.add_argument("--import-runs", type=int, default=3, help="runs of the import benchmark (default 3)")
    parser.add_argument(
        "--launch-recipients",
        type=int,
        nargs="+",
        default=[1_000, 10_000, 100_000, 1_000_000] if full else [1_000, 10_000, 100_000],
        help="campaign sizes whose launch latency is measured (default 1000 10000 100000, and 1000000 with BENCH_FULL=1)",
    )
    parser.add_argument(
        "--launch-cold-recipients",
        type=int,
        nargs="*",
        default=[10_000],
        help="campaign sizes also launched without loading the page's audience check first (default 10000)",
    )
    parser.add_argument("--launch-runs", type=int, default=5, help="launches per campaign size (default 5)")
    parser.add_argument("--jobs-campaigns", type=int, default=20, help="campaigns running while the jobs page is timed (default 20)")
    parser.add_argument("--jobs-requests", type=int, default=50, help="timed requests of the jobs page and of its partial (default 50)")
    parser.add_argument("--api-rate", type=float, default=1000.0, help="rate of the provider accounts in messages per second (default 1000)")
    parser.add_argument("--api-runs", type=int, default=3, help="runs of each API campaign without the stand-ins' request check (default 3)")
    parser.add_argument("--sms-recipients", type=int, default=1_000, help="recipients of the Twilio campaign (default 1000)")
    parser.add_argument("--email-recipients", type=int, default=5_000, help="recipients of the SendGrid campaign (default 5000)")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"Markdown file for the table (default: {DEFAULT_OUTPUT} with every other option at its default, else {CUSTOM_OUTPUT})",
    )

    options = parser.parse_args()
    if options.output is None:
        defaults = vars(parser.parse_args([]))
        options.output = DEFAULT_OUTPUT if vars(options) == defaults else CUSTOM_OUTPUT
    return options


def main() -> int:
    """Measure everything, print the table and write it to the output file."""
    options = parse_arguments()
    # SIGTERM (from make or a CI timeout) must unwind through the finally
    # blocks that stop smtp-sink and the engine, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    started = time.monotonic()
    load_before = os.getloadavg()
    report = Report()
    measure_senders(options, report)
    measure_crash(options, report)
    measure_import(options, report)
    measure_launch(options, report)
    measure_jobs(options, report)
    measure_api(options, report)

    report.notes.append(
        f"load average (1 min) {load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
        f"whole run {time.monotonic() - started:.0f} s"
    )
    text = render_markdown(report)
    print(text)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(text, encoding="utf-8")
    print(f"written to {options.output}", file=sys.stderr)

    return 0


def measure_senders(options: argparse.Namespace, report: Report) -> None:
    """Run the SMTP senders and the peak-RSS campaigns against one smtp-sink."""
    with tempfile.TemporaryDirectory(prefix="messagehub-bench-") as directory, SmtpSink(Path(directory)) as sink:
        work = Path(directory)

        rounds = max(options.runs, options.engine_runs)
        progress(
            f"{rounds} rounds: {options.runs} runs each of the ceiling ({options.ceiling_messages} messages) and the "
            f"naive sender ({options.naive_messages}), {options.engine_runs} campaigns of {options.recipients} recipients"
        )
        ceiling, naive, engine = [], [], []
        with_senders = spread_runs(options.runs, rounds)
        with_engine = spread_runs(options.engine_runs, rounds)
        for run in range(rounds):
            if run in with_senders:
                ceiling.append(run_ceiling(sink, options.ceiling_messages))
                naive.append(run_naive(sink, options.naive_messages))
            if run in with_engine:
                engine.append(measure_engine(work / f"throughput-{run}", sink, options.recipients))

        report.figures += sender_figures(options, ceiling, naive, engine)
        report.notes += size_notes(options)

        stop_after = options.rss_seconds or None
        rss_runs = {}
        for recipients in options.rss_recipients:
            progress(f"peak RSS: one campaign of {recipients} recipients")
            rss_runs[recipients] = measure_engine(work / f"rss-{recipients}", sink, recipients, stop_after, tree=True)
        report.figures += rss_figures(rss_runs, stop_after)


def spread_runs(runs: int, rounds: int) -> set[int]:
    """Return ``runs`` of the rounds 0 to ``rounds`` - 1, spread evenly, first and last included.

    The machine's speed drifts over minutes when other jobs share it, so the
    senders take turns, round after round, and the ratios compare runs that
    saw the same load.
    """
    if runs >= rounds:
        return set(range(rounds))
    if runs == 1:
        return {rounds // 2}
    return {round(index * (rounds - 1) / (runs - 1)) for index in range(runs)}


def progress(text: str) -> None:
    """Tell the person waiting which step runs now."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def engine_layout() -> str:
    """Return how the engine spreads its SMTP connections here, e.g. "6 SMTP connections in 2 processes".

    The connections are SMTP_CONNECTIONS from the environment, else the default.
    """
    from messagehub.config import default_config
    from messagehub.engine.process import process_shares, usable_cpus

    connections = int(os.environ.get("MESSAGEHUB_SMTP_CONNECTIONS") or default_config(Path("."))["SMTP_CONNECTIONS"])
    processes = len(process_shares(connections, usable_cpus()))
    return f"{connections} SMTP connections in {processes} {'process' if processes == 1 else 'processes'}"


def sender_figures(
    options: argparse.Namespace, ceiling: list[Measurement], naive: list[Measurement], engine: list[Measurement]
) -> list[Figure]:
    """Turn the sender runs into table rows.

    The ratios are taken between the sending phases: the naive sender's timer
    covers only its send loop, so smtp-source and the engine are timed from their
    first message at the sink to their last. Launch to exit stays in a row of its own.
    """
    layout = engine_layout()
    return [
        Figure(
            f"ceiling: smtp-source, {CEILING_SESSIONS} sessions, {options.ceiling_messages} messages, first to last message",
            "msg/s",
            [run.sending_rate for run in ceiling if run.sending_rate],
            is_rate=True,
            note=f"start to exit {statistics.median(run.rate for run in ceiling):,.0f} msg/s",
        ),
        Figure(
            f"naive: smtplib, a connection per message, {options.naive_messages} messages",
            "msg/s",
            [run.rate for run in naive],
            is_rate=True,
            note="timed around its send loop",
        ),
        Figure(
            f"messagehub: engine, {layout}, {options.recipients} recipients, first to last message",
            "msg/s",
            [run.sending_rate for run in engine if run.sending_rate],
            is_rate=True,
            note=f"the first message reached the sink {statistics.median(run.first_message_after or 0 for run in engine):.2f} s "
            "after launch (median)",
        ),
        Figure(
            f"messagehub: engine, {layout}, {options.recipients} recipients, launch to exit",
            "msg/s",
            [run.rate for run in engine],
            is_rate=True,
            note="start-up included: interpreter, imports, queueing the audience, forking the workers",
        ),
        Figure(
            "messagehub: engine CPU time per message",
            "ms",
            [run.cpu_seconds / run.messages * 1000 for run in engine],
            note="user + system time of the engine process, start-up included",
        ),
    ]


def size_notes(options: argparse.Namespace) -> list[str]:
    """Describe the messages each sender sent, so the rates can be compared fairly."""
    naive_bytes = len(naive_message(0).as_bytes())
    return [
        f"message size: smtp-source {MESSAGE_BYTES} bytes of payload plus its headers, "
        f"naive {naive_bytes} bytes (multipart/alternative, text and HTML, personalised, an EmailMessage), "
        f"messagehub {campaign_message_bytes()} bytes (multipart/alternative, text and HTML, personalised)",
        "the engine uses SQLite (WAL, synchronous=NORMAL) in a temporary folder, freshly migrated for every campaign",
    ]


def rss_figures(runs: dict[int, Measurement], stop_after: float | None) -> list[Figure]:
    """Turn the peak-RSS runs into table rows, each larger campaign compared with the smallest."""
    smallest = min(runs)
    figures = []
    for recipients, run in runs.items():
        figure = rss_figure(recipients, run, stop_after)
        whole = whole_campaign_figure(recipients, run)
        if recipients != smallest:
            ratio = run.peak_rss_kib / runs[smallest].peak_rss_kib
            figure.note += f"; {ratio:.2f} times the peak at {smallest} recipients"
            whole_ratio = run.tree.summed_pss_kib / runs[smallest].tree.summed_pss_kib
            whole.note += f"; {whole_ratio:.2f} times the sum at {smallest} recipients"
        figures += [figure, whole]

    return figures


def whole_campaign_figure(recipients: int, run: Measurement) -> Figure:
    """Turn one peak-RSS run into the row of its processes' memory added up."""
    return Figure(
        f"messagehub: whole campaign, main process and workers, peak summed PSS, {recipients} recipients",
        "MiB",
        [run.tree.summed_pss_kib / 1024],
        note=f"summed RSS {run.tree.summed_rss_kib / 1024:.1f} MiB, which counts pages the workers share after fork once per process",
    )


def rss_figure(recipients: int, run: Measurement, stop_after: float | None) -> Figure:
    """Turn one peak-RSS run into a table row, saying so when it was stopped early."""
    if run.complete:
        note = f"all sent in {run.seconds:.0f} s ({run.rate:.0f} msg/s)"
    else:
        note = f"stopped after {stop_after:.0f} s with {run.messages} sent ({run.rate:.0f} msg/s); BENCH_FULL=1 runs it to the end"

    return Figure(
        f"messagehub: engine peak RSS, largest of its processes, {recipients} recipients",
        "MiB",
        [run.peak_rss_kib / 1024],
        note=note,
    )


def measure_import(options: argparse.Namespace, report: Report) -> None:
    """Run bench/import_csv.py and add its import rates, the whole import's time and the peak memory to the report."""
    progress(f"import: {options.import_runs} runs of {options.import_rows} rows")
    runs = [run_import(options.import_rows) for _ in range(options.import_runs)]
    rows = options.import_rows

    report.figures += [
        Figure(f"import: bench/import_csv.py, {rows} rows", "rows/s", [run.pass_rate for run in runs], note="the import pass only"),
        Figure(
            f"import: whole import, {rows} rows",
            "rows/s",
            [run.whole_rate for run in runs],
            note="`messagehub contacts import` into a fresh SQLite database, start to exit, progress reported per batch",
        ),
        Figure(
            f"import: whole import time, {rows} rows",
            "s",
            [run.whole_seconds for run in runs],
            note=f"target under 60 s for 1,000,000 rows; CPU time with its workers {format_runs([run.whole_cpu for run in runs])} s",
        ),
        Figure(
            f"import: peak RSS of the whole import, {rows} rows",
            "MiB",
            [run.whole_peak_mib for run in runs],
            note=import_memory_note(runs),
        ),
        Figure(
            f"import: peak RSS of import_csv.py, {rows} rows",
            "MiB",
            [run.script_peak_kib / 1024 for run in runs],
            note="the script: file generation and its passes in one process, the whole import not included",
        ),
    ]


@dataclass(frozen=True)
class ImportRun:
    """The figures of one run of bench/import_csv.py."""

    pass_rate: float
    whole_rate: float
    whole_seconds: float
    whole_cpu: float
    whole_peak_mib: float
    worker_peak_mib: float
    script_peak_kib: int


def run_import(rows: int) -> ImportRun:
    """Run import_csv.py once and return its figures."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "import_csv.py"), "--rows", str(rows)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            usage = wait_with_usage(process)
        finally:
            stop_process(process)
        output.seek(0)
        text = output.read().decode(errors="replace")

    if usage.status != 0:
        raise RuntimeError(f"import_csv.py exited with status {usage.status}: {text[-2000:]}")

    whole = search_output(WHOLE_LINE, text)
    peaks = search_output(WHOLE_PEAK_LINE, text)
    return ImportRun(
        pass_rate=float(search_output(IMPORT_LINE, text).group(2).replace(",", "")),
        whole_rate=float(whole.group(2).replace(",", "")),
        whole_seconds=float(whole.group(1)),
        whole_cpu=float(search_output(WHOLE_CPU_LINE, text).group(1)),
        whole_peak_mib=float(peaks.group(1)),
        worker_peak_mib=float(peaks.group(2)),
        # The script's own VmHWM: the whole import runs in a child process of its own.
        script_peak_kib=usage.peak_rss_kib,
    )


def search_output(pattern: re.Pattern, output: str) -> re.Match:
    """Return the match of ``pattern`` in the output of import_csv.py, or raise when it printed no such line."""
    match = pattern.search(output)
    if match is None:
        raise RuntimeError(f"no line matching {pattern.pattern!r} in the output of import_csv.py: {output[-1000:]}")

    return match


def measure_launch(options: argparse.Namespace, report: Report) -> None:
    """Time background launches through the web app, for each campaign size, after the page's check and without it."""
    sizes = [(recipients, False) for recipients in options.launch_recipients]
    sizes += [(recipients, True) for recipients in options.launch_cold_recipients]
    for recipients, cold in sizes:
        progress(f"launch latency: {options.launch_runs} launches of {recipients} recipients{' without the check first' if cold else ''}")
        with tempfile.TemporaryDirectory(prefix="messagehub-bench-") as directory:
            launches = measure_launches(Path(directory), recipients, options.launch_runs, cold)
        report.figures += launch_figures(recipients, launches, cold)


def launch_figures(recipients: int, launches: list[LaunchTimes], cold: bool = False) -> list[Figure]:
    """Turn the launches of one campaign size into table rows, in milliseconds."""
    response = statistics.median(launch.response for launch in launches) * 1000
    # Without the page's check first, the launch request checks every recipient itself.
    condition = ", no check first" if cold else ""
    return [
        Figure(
            f"launch: request to READY=1, {recipients} recipients{condition}",
            "ms",
            [launch.ready * 1000 for launch in launches],
            note=f"target under 1,000 ms; the response to the request arrived after {response:,.0f} ms (median)",
        ),
        Figure(
            f"launch: request to first message at the SMTP server, {recipients} recipients{condition}",
            "ms",
            [launch.first_message * 1000 for launch in launches],
            note="plain-process supervisor, aiosmtpd server in the benchmark process",
        ),
    ]


def measure_crash(options: argparse.Namespace, report: Report) -> None:
    """Kill the engine at full speed, resume it, and count the recipients who got other than one message."""
    progress(f"crash: {options.crash_kills} SIGKILLs to a campaign of {options.crash_recipients} recipients")
    with tempfile.TemporaryDirectory(prefix="messagehub-bench-") as directory:
        run = run_crash_check(Path(directory), options.crash_recipients, options.crash_kills)

    report.figures.append(
        Figure(
            f"crash: recipients with a duplicate, lost, unrecorded or unsent message, "
            f"{options.crash_kills} SIGKILLs at full speed, {options.crash_recipients} recipients",
            "recipients",
            [run.faults],
            note=describe(run),
        )
    )


def measure_jobs(options: argparse.Namespace, report: Report) -> None:
    """Time the Background Jobs page and its partial with campaigns running."""
    progress(f"jobs page: {options.jobs_requests} requests each with {options.jobs_campaigns} campaigns running")
    with tempfile.TemporaryDirectory(prefix="messagehub-bench-") as directory:
        times = measure_jobs_page(Path(directory), options.jobs_campaigns, options.jobs_requests)

    for name, durations in (("GET /jobs/ (whole page)", times.page), ("GET /jobs/ with HX-Request (rows partial)", times.partial)):
        report.figures.append(
            Figure(
                f"jobs page: {name}, {options.jobs_campaigns} campaigns running",
                "ms",
                [duration * 1000 for duration in durations],
                note="target under 100 ms; werkzeug threaded server, one request at a time",
            )
        )


def measure_api(options: argparse.Namespace, report: Report) -> None:
    """Send through the Twilio and SendGrid adapters to their stand-ins, with and without the request check."""
    rate = options.api_rate
    for name, measure, recipients in (
        ("Twilio SMS", measure_twilio, options.sms_recipients),
        ("SendGrid email", measure_sendgrid, options.email_recipients),
    ):
        for check_requests, runs in ((False, options.api_runs), (True, 1)):
            check = "on" if check_requests else "off"
            progress(f"API: {runs} {name} campaigns of {recipients} recipients, request check {check}")
            with tempfile.TemporaryDirectory(prefix="messagehub-bench-") as directory:
                results = measure(Path(directory), recipients, runs, rate, check_requests)
            report.figures.append(api_figure(name, recipients, rate, check, results))


def api_figure(name: str, recipients: int, rate: float, check: str, runs: list[ApiRun]) -> Figure:
    """Turn the runs of one API campaign into a table row with the CPU time each side spent."""
    requests_per_second = statistics.median(run.requests_per_second for run in runs)
    engine_cpu = statistics.median(run.engine_cpu_per_message * 1000 for run in runs)
    stand_in_cpu = statistics.median(run.stand_in_cpu_per_message * 1000 for run in runs)
    messages_per_request = statistics.median(run.messages_per_second for run in runs) / max(requests_per_second, 1e-9)
    return Figure(
        f"API: {name}, {recipients} recipients, stand-in request check {check}",
        "msg/s",
        [run.messages_per_second for run in runs],
        note=(
            f"account rate {rate:,.0f} msg/s; {requests_per_second:,.1f} requests/s of "
            f"{messages_per_request:,.0f} messages each; "
            f"CPU per message: engine {engine_cpu:.2f} ms, stand-in {stand_in_cpu:.2f} ms"
        ),
    )


def render_markdown(report: Report) -> str:
    """Render the machine, the table and the notes as Markdown."""
    ceiling, naive = (next(f for f in report.figures if f.name.startswith(prefix)) for prefix in ("ceiling", "naive"))
    lines = [
        "# MessageHub benchmark",
        "",
        *machine_lines(),
        "",
        "Other jobs shared this machine during the run, so single runs vary; compare the ratios of one run.",
        "",
        "| figure | median | unit | ratio to ceiling | ratio to naive | runs | note |",
        "| --- | ---: | --- | ---: | ---: | --- | --- |",
    ]
    for figure in report.figures:
        to_ceiling = f"{figure.median / ceiling.median:.3f}" if figure.is_rate else ""
        to_naive = f"{figure.median / naive.median:.2f}" if figure.is_rate else ""
        runs = format_runs(figure.values)
        lines.append(
            f"| {figure.name} | {format_value(figure.median)} | {figure.unit} | {to_ceiling} | {to_naive} | {runs} | {figure.note} |"
        )

    lines += ["", "## Targets", "", "Each judged on the medians above.", "", *judge(report.figures)]
    lines += ["", *(f"- {note}" for note in report.notes), ""]
    return "\n".join(lines)


def import_memory_note(runs: list) -> str:
    """Describe the import's worker processes, which a file under 4 MiB does without."""
    if not any(run.worker_peak_mib for run in runs):
        return "the command; no worker process: the file was too small to need one"
    return f"the command; its largest child process {format_runs([run.worker_peak_mib for run in runs])} MiB"


def format_runs(values: list[float]) -> str:
    """List every run's value, or only their count and range when there are many."""
    if len(values) <= LISTED_RUNS:
        return ", ".join(format_value(value) for value in values)

    return f"{len(values)} runs from {format_value(min(values))} to {format_value(max(values))}"


def format_value(value: float) -> str:
    """Format a figure with precision that suits its size; a count has no decimals."""
    return f"{value:,.0f}" if isinstance(value, int) or value >= 100 else f"{value:.2f}"


def machine_lines() -> list[str]:
    """Describe when and where the figures were taken."""
    return [
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()} (uname -m), {len(os.sched_getaffinity(0))} CPUs (nproc), {cpu_model()}",
        f"- Python {platform.python_version()}, {platform.system()} {platform.release()}",
    ]


def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo, or "unknown CPU"."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"

    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
