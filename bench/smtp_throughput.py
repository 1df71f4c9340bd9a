"""Measure SMTP sending rates into Postfix's smtp-sink on 127.0.0.1.

Three senders, each timed from its start to its end, and smtp-source and the
engine also from their first message at the sink to their last (``SendingPhase``):

  ceiling     Postfix's smtp-source: 8 parallel sessions that stay open, ~2 KB messages
  naive       Python: per message the same campaign message built as an EmailMessage
              (text and HTML), a new smtplib connection, send, QUIT
  messagehub  the campaign engine (``python -m messagehub.engine ID``) sending a
              personalised multipart campaign from a fresh SQLite database

The sink counts every message it accepts, and each measurement checks that
count, so a sender that silently dropped messages fails instead of looking fast.
``bench/run.py`` repeats these measurements and prints the table; run alone,
this script measures each sender once.

    .venv/bin/python bench/smtp_throughput.py --recipients 2000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from html import escape as html_escape
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]

# Debian installs the Postfix test tools outside a normal user's PATH.
POSTFIX_TOOL_DIRS = ("/usr/sbin", "/usr/lib/postfix/sbin")

# smtp-sink -c rewrites one counter line per event, e.g. "sess=8 quit=8 mesg=20000".
SINK_COUNTER = re.compile(rb"mesg=(\d+)")
# The file grows by a line per event, so only its end is read: far more
# than one whole line, which contains the latest count.
SINK_COUNTER_TAIL = 4096
# Seconds between two reads of the counter while a sending phase is timed:
# within 0.2 % of a 5-second run, for an estimated 1 % of a core.
SINK_POLL_SECONDS = 0.005

VMHWM_LINE = re.compile(r"^VmHWM:\s+(\d+) kB$", re.MULTILINE)
VMRSS_LINE = re.compile(r"^VmRSS:\s+(\d+) kB$", re.MULTILINE)
PSS_LINE = re.compile(r"^Pss:\s+(\d+) kB$", re.MULTILINE)

# Reading smaps_rollup walks the page tables, so PSS is sampled every tenth poll.
PSS_EVERY = 10

# Payload of smtp-source and of the naive sender, in bytes, headers not included.
MESSAGE_BYTES = 2048

CEILING_SESSIONS = 8

# Upper bound for one sender run, so a stuck sender cannot hold up the benchmark
# for ever. A 1,000,000-recipient campaign (BENCH_FULL=1) must fit in it.
RUN_TIMEOUT_SECONDS = 4 * 3600.0

# Contacts inserted per executemany while preparing a campaign.
INSERT_CHUNK = 50_000

SUBJECT = "{{ first_name | default('Hello') }}, the {{ city | default('local') }} reading list"
PARAGRAPH = (
    "This week the shop has new novels, travel guides and children's books, "
    "and the reading circle meets on Thursday evening as usual."
)
TEXT_BODY = (
    "Hello {{ first_name | default('there') }},\n\n"
    + "\n\n".join([PARAGRAPH] * 4)
    + "\n\nYour shop in {{ city | default('your city') }}.\n"
    "Unsubscribe: https://news.example.com/u/{{ email }}\n"
)
HTML_BODY = (
    "<html><body><p>Hello {{ first_name | default('there') }},</p>\n"
    + "\n".join(f"<p>{PARAGRAPH}</p>" for _ in range(4))
    + "\n<p>Your shop in {{ city | default('your city') }}.</p>\n"
    '<p><a href="https://news.example.com/u/{{ email | urlencode }}">Unsubscribe</a></p>\n'
    "</body></html>\n"
)
FIRST_NAMES = ("Anna", "Björn", "Chloé", "Dmitri", "Emeka", "Fatima", "Grace", "Hiroshi", "Inés", "Jonas")
CITIES = ("Berlin", "Lyon", "Porto", "Kraków", "Dublin", "Turin", "Ghent")


@dataclass(frozen=True)
class Measurement:
    """One timed run: messages the sink accepted and wall time, plus the engine's own usage.

    ``complete`` is False when the run was stopped at its time limit before
    every recipient was sent.
    """

    messages: int
    seconds: float
    peak_rss_kib: int | None = None
    cpu_seconds: float | None = None
    complete: bool = True
    tree: TreeMemory | None = None
    # From the sink's first message of the run to its last (SendingPhase).
    sending_seconds: float | None = None
    # From the start of the run to the sink's first message.
    first_message_after: float | None = None

    @property
    def rate(self) -> float:
        """Return messages per second."""
        return self.messages / self.seconds

    @property
    def sending_rate(self) -> float | None:
        """Return messages per second between the first and the last message, or None if not timed."""
        if not self.sending_seconds:
            return None
        return (self.messages - 1) / self.sending_seconds


@dataclass(frozen=True)
class CampaignInstance:
    """A MessageHub instance folder holding one draft campaign ready to send."""

    path: Path
    campaign_id: int
    recipients: int


def postfix_tool(name: str) -> str:
    """Return the path of smtp-sink or smtp-source, or raise with the install command."""
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *POSTFIX_TOOL_DIRS])
    found = shutil.which(name, path=search_path)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found: install Debian's postfix package "
            "(apt-get install --no-install-recommends postfix) or run `make bench`"
        )

    return found


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop ``process`` by its pid: SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if process.poll() is not None:
        return

    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class SmtpSink:
    """Postfix's smtp-sink on a free port of 127.0.0.1, counting the messages it accepts.

    ``data_delay`` holds back the reply to every DATA command by that many
    whole seconds (smtp-sink -w), which keeps senders busy while they send little.
    With ``dump``, every completed transaction is appended to that file with
    its envelope (smtp-sink -D).
    """

    def __init__(self, directory: Path, data_delay: int = 0, dump: Path | None = None):
        self.port = free_port()
        self.data_delay = data_delay
        self.dump = dump
        self.counter_file = directory / "smtp-sink.out"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the sink and wait until it accepts connections."""
        command = [postfix_tool("smtp-sink"), "-c"]
        # smtp-sink(1): -u is required when it runs with super-user privileges.
        if os.geteuid() == 0:
            command += ["-u", "nobody"]
        if self.data_delay:
            command += ["-w", str(self.data_delay)]
        if self.dump is not None:
            command += ["-D", str(self.dump)]
        command += [f"127.0.0.1:{self.port}", "1000"]
        with self.counter_file.open("wb") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        self._wait_until_listening()

    def _wait_until_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"smtp-sink exited with status {self.process.returncode}: {self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return
            except OSError:
                time.sleep(0.05)

        raise TimeoutError(f"smtp-sink did not listen on 127.0.0.1:{self.port} within {timeout:.0f} s")

    def messages(self) -> int:
        """Return how many messages the sink has accepted since it started."""
        with self.counter_file.open("rb") as output:
            size = output.seek(0, os.SEEK_END)
            output.seek(max(size - SINK_COUNTER_TAIL, 0))
            counts = SINK_COUNTER.findall(output.read())
        return int(counts[-1]) if counts else 0

    def wait_for_count(self, expected: int, timeout: float = 5.0) -> int:
        """Wait until the counter reaches ``expected``, since the sink may update it after its reply to the sender."""
        deadline = time.monotonic() + timeout
        count = self.messages()
        while count < expected and time.monotonic() < deadline:
            time.sleep(0.02)
            count = self.messages()

        return count

    def output(self) -> str:
        """Return the sink's output without the counter lines, for error messages."""
        text = self.counter_file.read_bytes().decode(errors="replace")
        return " ".join(line for line in text.replace("\r", "\n").splitlines() if "mesg=" not in line)

    def stop(self) -> None:
        """Stop the sink by its pid."""
        if self.process is not None:
            stop_process(self.process)


class SendingPhase:
    """The time from the sink's first message of a run to its last, read off the sink's counter in a thread.

    A process's start-up would otherwise count as sending time: the engine's
    imports and the queueing of its audience, smtp-source's connections. The
    naive sender needs none of this, because its own timer covers only its send loop.
    """

    def __init__(self, sink: SmtpSink, before: int, expected: int):
        self.sink = sink
        self.before = before
        self.expected = expected
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sending-phase", daemon=True)

    def __enter__(self) -> SendingPhase:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float | None:
        """Return the seconds from the first message to the last, or None if the run did not send them all."""
        if self.first_at is None or self.last_at is None:
            return None
        return self.last_at - self.first_at

    def _watch(self) -> None:
        stopping = False
        while True:
            sent = self.sink.messages() - self.before
            now = time.perf_counter()
            if sent > 0 and self.first_at is None:
                self.first_at = now
            if sent >= self.expected:
                self.last_at = now
                return
            if stopping:
                return
            # After a stop, one more read: the last messages may have come meanwhile.
            stopping = self._stop.wait(SINK_POLL_SECONDS)


def check_count(sink: SmtpSink, before: int, expected: int, sender: str) -> int:
    """Return the messages the sink accepted since ``before``, raising when it is not ``expected``."""
    accepted = sink.wait_for_count(before + expected) - before
    if accepted != expected:
        raise RuntimeError(f"{sender}: smtp-sink accepted {accepted} messages, expected {expected}")

    return accepted


def run_ceiling(sink: SmtpSink, messages: int) -> Measurement:
    """Time smtp-source sending ``messages`` over 8 persistent sessions."""
    command = [
        postfix_tool("smtp-source"),
        "-s", str(CEILING_SESSIONS),
        "-m", str(messages),
        "-l", str(MESSAGE_BYTES),
        "-d",
        "-f", "news@example.com",
        "-t", "reader@example.com",
        f"127.0.0.1:{sink.port}",
    ]
    before = sink.messages()
    with SendingPhase(sink, before, messages) as phase:
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=RUN_TIMEOUT_SECONDS)
        seconds = time.perf_counter() - started
        accepted = check_count(sink, before, messages, "smtp-source")

    return Measurement(accepted, seconds, sending_seconds=phase.seconds)


def naive_message(index: int) -> EmailMessage:
    """Build the campaign's message for one reader the way a Python user would: an EmailMessage, text and HTML."""
    name = FIRST_NAMES[index % len(FIRST_NAMES)]
    city = CITIES[index % len(CITIES)]
    address = f"reader{index}@example.com"
    text = (
        f"Hello {name},\n\n" + "\n\n".join([PARAGRAPH] * 4)
        + f"\n\nYour shop in {city}.\nUnsubscribe: https://news.example.com/u/{address}\n"
    )
    html = (
        f"<html><body><p>Hello {html_escape(name)},</p>\n"
        + "\n".join(f"<p>{PARAGRAPH}</p>" for _ in range(4))
        + f"\n<p>Your shop in {html_escape(city)}.</p>\n"
        f'<p><a href="https://news.example.com/u/{quote(address)}">Unsubscribe</a></p>\n</body></html>\n'
    )

    message = EmailMessage()
    message["From"] = "Reading Club <news@example.com>"
    message["To"] = f"{name} Reader {index} <{address}>"
    message["Subject"] = f"{name}, the {city} reading list"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def run_naive(sink: SmtpSink, messages: int) -> Measurement:
    """Time Python sending ``messages``, each over a connection of its own."""
    before = sink.messages()
    started = time.perf_counter()
    for index in range(messages):
        message = naive_message(index)
        # Without local_hostname smtplib looks up this host's FQDN on every
        # connection, which costs milliseconds here and is no part of SMTP.
        with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="bench.example.com", timeout=30) as smtp:
            smtp.send_message(message)
    seconds = time.perf_counter() - started

    return Measurement(check_count(sink, before, messages, "naive smtplib"), seconds)


def prepare_campaign(directory: Path, recipients: int, port: int) -> CampaignInstance:
    """Create an instance with a migrated SQLite database, a list of ``recipients`` and a draft campaign."""
    from flask_migrate import upgrade

    from messagehub import create_app
    from messagehub.extensions import db

    instance_path = directory / "instance"
    app = create_app({"INSTANCE_PATH": str(instance_path), "LOG_LEVEL": "WARNING"})
    with app.app_context():
        upgrade(directory=str(REPO / "migrations"))
        list_id = _insert_contacts(db.session, recipients)
        campaign_id = _insert_campaign(db.session, list_id)
        _use_sink(db.session, app.config["SECRET_KEY"], port)
        db.session.commit()
        db.engine.dispose()

    return CampaignInstance(instance_path, campaign_id, recipients)


def _insert_contacts(session, recipients: int) -> int:
    """Insert a list of synthetic contacts, one executemany per ``INSERT_CHUNK`` rows, and return the list's id."""
    from sqlalchemy import insert

    from messagehub.models import Contact, ContactList

    contact_list = ContactList(name=f"Benchmark {recipients}")
    session.add(contact_list)
    session.flush()

    for start in range(0, recipients, INSERT_CHUNK):
        rows = [
            {
                "list_id": contact_list.id,
                "email": f"reader{index}@example.com",
                "email_key": f"reader{index}@example.com",
                "first_name": FIRST_NAMES[index % len(FIRST_NAMES)],
                "last_name": f"Reader {index}",
                "attributes": {"city": CITIES[index % len(CITIES)]},
            }
            for index in range(start, min(start + INSERT_CHUNK, recipients))
        ]
        session.execute(insert(Contact), rows)

    return contact_list.id


def _insert_campaign(session, list_id: int) -> int:
    from messagehub.models import Campaign

    campaign = Campaign(
        name="Benchmark",
        list_id=list_id,
        subject=SUBJECT,
        from_name="Reading Club",
        from_email="news@example.com",
        text_body=TEXT_BODY,
        html_body=HTML_BODY,
        delivery_method="smtp",
    )
    session.add(campaign)
    session.flush()
    return campaign.id


def _use_sink(session, secret_key: str, port: int) -> None:
    from messagehub.delivery_settings import save_smtp_settings
    from messagehub.providers.smtp import SmtpSettings

    settings = SmtpSettings(host="127.0.0.1", port=port, security="none", local_hostname="bench.example.com")
    save_smtp_settings(session, secret_key, settings, keep_password=False)


def campaign_message_bytes() -> int:
    """Return the size of one campaign message as the engine builds it, headers included."""
    from messagehub.messages.mime import build_message, make_message_id
    from messagehub.messages.templating import CampaignTemplates, build_context

    context = build_context("reader7@example.com", "Hiroshi", "Reader 7", attributes={"city": "Porto"})
    content = CampaignTemplates.compile(SUBJECT, TEXT_BODY, HTML_BODY).render(context)
    message = build_message(
        subject=content.subject,
        text=content.text,
        html=content.html,
        from_name="Reading Club",
        from_email="news@example.com",
        reply_to="",
        to_name="Hiroshi Reader 7",
        to_email="reader7@example.com",
        message_id=make_message_id(1, 7, "example.com", "bench"),
    )
    return len(message.data)


def run_engine(
    instance: CampaignInstance, sink: SmtpSink, stop_after: float | None = None, tree: bool = False
) -> Measurement:
    """Time ``python -m messagehub.engine ID`` from launch to exit, with its peak RSS and CPU time.

    With ``stop_after`` the engine gets SIGTERM after that many seconds, so it
    pauses the campaign after the message in flight and exits.
    """
    environment = {**os.environ, "MESSAGEHUB_INSTANCE_PATH": str(instance.path)}
    log_path = instance.path / "engine.log"
    before = sink.messages()

    with log_path.open("wb") as log, SendingPhase(sink, before, instance.recipients) as phase:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "messagehub.engine", str(instance.campaign_id)],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            usage = wait_with_usage(process, stop_after, tree)
        finally:
            stop_process(process)
        seconds = time.perf_counter() - started
        # The sink may count the last messages just after the engine exits.
        accepted = sink.wait_for_count(before + instance.recipients, timeout=1.0) - before

    # A SIGTERM that lands after the engine's own handlers are gone (the
    # campaign finished just then) ends the process with -SIGTERM instead of 0.
    stopped_late = stop_after is not None and usage.status == -signal.SIGTERM
    if usage.status != 0 and not stopped_late:
        raise RuntimeError(f"engine exited with status {usage.status}: {log_path.read_text(errors='replace')[-2000:]}")

    complete = accepted == instance.recipients
    if not complete and stop_after is None:
        raise RuntimeError(f"messagehub engine: smtp-sink accepted {accepted} messages, expected {instance.recipients}")

    peak_kib = usage.tree.largest_kib if tree else usage.peak_rss_kib
    first_after = phase.first_at - started if phase.first_at is not None else None
    return Measurement(accepted, seconds, peak_kib, usage.cpu_seconds, complete, usage.tree, phase.seconds, first_after)


@dataclass(frozen=True)
class ProcessUsage:
    """Exit status, CPU seconds and peak resident memory of a child process."""

    status: int
    cpu_seconds: float
    peak_rss_kib: int
    tree: TreeMemory


@dataclass
class TreeMemory:
    """Peak memory of a process and its descendants (a campaign's workers), sampled while they run."""

    # The highest VmHWM of any one process of the tree.
    largest_kib: int = 0
    # The highest sum of VmRSS over the tree at one sample. Pages shared
    # after fork count once per process here.
    summed_rss_kib: int = 0
    # The same for PSS, which splits each shared page between its processes.
    summed_pss_kib: int = 0
    samples: int = 0

    def sample(self, pid: int) -> None:
        """Read the memory of ``pid`` and of every process below it."""
        pids = process_tree(pid)
        self.largest_kib = max([self.largest_kib, *(read_vmhwm(member) for member in pids)])
        self.summed_rss_kib = max(self.summed_rss_kib, sum(read_kib(member, "status", VMRSS_LINE) for member in pids))
        if self.samples % PSS_EVERY == 0:
            pss = sum(read_kib(member, "smaps_rollup", PSS_LINE) for member in pids)
            self.summed_pss_kib = max(self.summed_pss_kib, pss)
        self.samples += 1


def process_tree(pid: int) -> list[int]:
    """Return ``pid`` and its living descendants, from /proc's lists of children."""
    tree = [pid]
    for member in tree:
        try:
            children = Path(f"/proc/{member}/task/{member}/children").read_text().split()
        except OSError:
            continue
        tree.extend(int(child) for child in children)
    return tree


def read_kib(pid: int, name: str, pattern: re.Pattern) -> int:
    """Return the KiB figure that ``pattern`` finds in /proc/PID/NAME, or 0 once the process has exited."""
    try:
        text = Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return 0

    match = pattern.search(text)
    return int(match.group(1)) if match else 0


def wait_with_usage(process: subprocess.Popen, stop_after: float | None = None, tree: bool = False) -> ProcessUsage:
    """Wait for ``process``, polling its peak RSS, and send SIGTERM after ``stop_after`` seconds.

    The peak is VmHWM from /proc, not ``ru_maxrss``: Linux carries the
    parent's high-water mark over into a child across fork and exec, so
    ``ru_maxrss`` of a child of this big driver would report the driver's
    memory. VmHWM is read every 10 ms, so a peak in the last 10 ms of the
    process's life can be missed. With ``tree`` the processes it forks are
    sampled as well (``TreeMemory``). That costs the machine CPU time, so the
    throughput runs leave it off. The CPU time includes the forked processes
    either way, once the process has reaped them.
    """
    started = time.monotonic()
    stop_sent = False
    peak_kib = 0
    memory = TreeMemory()
    while time.monotonic() - started < RUN_TIMEOUT_SECONDS:
        peak_kib = max(peak_kib, read_vmhwm(process.pid))
        if tree:
            memory.sample(process.pid)
        pid, wait_status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            # Popen never saw this wait, so tell it the process is gone.
            process.returncode = os.waitstatus_to_exitcode(wait_status)
            return ProcessUsage(process.returncode, usage.ru_utime + usage.ru_stime, peak_kib, memory)

        if stop_after is not None and not stop_sent and time.monotonic() - started >= stop_after:
            process.send_signal(signal.SIGTERM)
            stop_sent = True
        time.sleep(0.01)

    raise TimeoutError(f"process {process.pid} ({process.args[0]}) still running after {RUN_TIMEOUT_SECONDS:.0f} s")


def read_vmhwm(pid: int) -> int:
    """Return the process's peak resident set size in KiB, or 0 once it has exited."""
    return read_kib(pid, "status", VMHWM_LINE)


def measure_engine(
    directory: Path, sink: SmtpSink, recipients: int, stop_after: float | None = None, tree: bool = False
) -> Measurement:
    """Prepare a fresh instance of ``recipients`` contacts in ``directory`` and send its campaign once."""
    directory.mkdir(parents=True)
    instance = prepare_campaign(directory, recipients, sink.port)
    try:
        return run_engine(instance, sink, stop_after, tree)
    finally:
        # The database grows with the recipients, so drop it before the next run fills the disk further.
        shutil.rmtree(directory, ignore_errors=True)


def parse_arguments() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ceiling-messages", type=int, default=20_000, help="messages smtp-source sends (default 20000)")
    parser.add_argument("--naive-messages", type=int, default=2_000, help="messages the naive sender sends (default 2000)")
    parser.add_argument("--recipients", type=int, default=20_000, help="recipients of the campaign (default 20000)")
    return parser.parse_args()


def main() -> None:
    """Measure each sender once and print its rate."""
    options = parse_arguments()
    with tempfile.TemporaryDirectory(prefix="messagehub-bench-") as directory, SmtpSink(Path(directory)) as sink:
        for name, measure in (
            ("ceiling", lambda: run_ceiling(sink, options.ceiling_messages)),
            ("naive", lambda: run_naive(sink, options.naive_messages)),
            ("messagehub", lambda: measure_engine(Path(directory) / "engine", sink, options.recipients)),
        ):
            result = measure()
            sending = f", {result.sending_rate:8.0f} msg/s from first to last message" if result.sending_rate else ""
            print(f"{name:>10}: {result.messages:>7} messages in {result.seconds:6.2f} s = {result.rate:8.0f} msg/s{sending}")


if __name__ == "__main__":
    main()
