"""Measure how fast MessageHub imports a large CSV contact list.

The script writes a file of --rows rows into a temporary directory by repeating
the export given by --sample. Each copy after the first gets a copy number in
front of every address and changes the three digits before the last three of
every phone number, so each copy adds new contacts and new numbers. The share
of accepted, rejected, skipped and warned rows stays that of the sample, and
the script checks it. It then times these passes and prints rows per second:

  open      detect the encoding (decodes the whole file once) and read the header
  csv only  split the file into stripped cells, without validation
  import    CsvFile.rows() in this process: validate, normalise, find duplicates
  whole     `messagehub contacts import` on a fresh instance, as a user runs it:
            parse, validate (in worker processes, as the web app does too),
            insert into SQLite in batches and report progress, from process
            start to exit

Peak memory is the process's maximum resident set size after the import pass,
and for the whole import the peak of the command and of its worker processes.
With --trace-memory, a further pass measures the peak of Python allocations
with tracemalloc. Tracing slows that pass down several times.

    .venv/bin/python bench/import_csv.py --rows 1000000
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from messagehub.contacts.csvfile import open_table
from messagehub.contacts.importer import ContactRecord, CsvFile, open_csv
from smtp_throughput import read_vmhwm

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / ".." / "shared" / "data" / "contacts-10k.csv"

# Digits of a phone number that each copy changes, counted from the end: the
# three before the last three. A sample's row number is in its last digits,
# and the leading ones decide the region and the kind of number, so numbers
# keep their verdict (checked against the sample's outcome below).
VARIED_DIGITS = slice(-6, -3)


# The first line `messagehub contacts import` prints about the report.
REPORT_LINE = re.compile(
    r"^(finished|failed): (\d+) rows read, (\d+) added, (\d+) updated, (\d+) skipped, (\d+) rejected, (\d+) warnings",
    re.MULTILINE,
)

# Upper bound for the whole import, so a stuck run cannot hold up `make bench`.
WHOLE_TIMEOUT_SECONDS = 1800.0


def main() -> int:
    """Generate the file, run the passes and print the figures."""
    options = parse_arguments()

    with tempfile.TemporaryDirectory(prefix="messagehub-import-") as directory:
        path = Path(directory) / "contacts.csv"
        write_file(path, options.sample, options.rows, options.without_phones)
        size_mib = path.stat().st_size / 2**20
        phones = "without phone numbers" if options.without_phones else "with phone numbers"
        print(f"file: {options.rows:,} rows {phones}, {size_mib:.0f} MiB, generated from {options.sample.name}")

        counts = measure_passes(path, options.rows)
        expected = expected_outcome(options.sample, options.rows, options.without_phones)
        check_outcome(counts, expected, options.rows)
        if options.trace_memory:
            measure_traced_peak(path)
        if not options.skip_whole:
            measure_whole_import(Path(directory), path, options.rows, expected)

    return 0


def parse_arguments() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="data rows in the generated file (default 1,000,000)")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="CSV export whose rows are repeated (default: %(default)s)")
    parser.add_argument("--trace-memory", action="store_true", help="add a pass that measures peak Python allocations")
    parser.add_argument("--without-phones", action="store_true", help="leave the phone cells empty, as in an email-only list")
    parser.add_argument("--skip-whole", action="store_true", help="leave out the whole import into a database")

    return parser.parse_args()


def write_file(path: Path, sample: Path, rows: int, without_phones: bool) -> None:
    """Write ``rows`` data rows copied from ``sample``, each copy with its own addresses and numbers."""
    header, sample_rows = read_sample(sample, without_phones)
    email = header.index("email")
    phone = header.index("phone")

    with path.open("w", newline="", encoding="utf-8") as target:
        writer = csv.writer(target)
        writer.writerow(header)
        written = 0
        for copy in itertools.count():
            if written >= rows:
                break
            for row in sample_rows[: rows - written]:
                writer.writerow(vary_row(row, copy, email, phone))
            written += min(len(sample_rows), rows - written)


def read_sample(sample: Path, without_phones: bool) -> tuple[list[str], list[list[str]]]:
    """Return the header and the data rows of the sample, with empty phone cells if asked."""
    with sample.open(newline="", encoding="utf-8") as source:
        reader = csv.reader(source)
        header = next(reader)
        sample_rows = list(reader)

    if without_phones:
        phone = header.index("phone")
        sample_rows = [row[:phone] + [""] + row[phone + 1 :] for row in sample_rows]

    return header, sample_rows


def vary_row(row: list[str], copy: int, email: int, phone: int) -> list[str]:
    """Return the row as copy number ``copy`` writes it; copy 0 is the sample's row unchanged."""
    if copy == 0:
        return row

    varied = list(row)
    # An empty address stays empty: with a prefix it would be an invalid one.
    if row[email].strip():
        varied[email] = f"c{copy}.{row[email].lstrip()}"
    varied[phone] = vary_phone(row[phone], copy)

    return varied


def vary_phone(value: str, copy: int) -> str:
    """Add ``copy`` to the VARIED_DIGITS of the number, keeping its spaces, dashes and prefix."""
    positions = [index for index, char in enumerate(value) if char.isdigit()]
    if len(positions) < 6:
        return value

    varied = positions[VARIED_DIGITS]
    digits = "".join(value[index] for index in varied)
    new_digits = str((int(digits) + copy) % 10 ** len(varied)).zfill(len(varied))
    chars = list(value)
    for index, digit in zip(varied, new_digits):
        chars[index] = digit

    return "".join(chars)


def measure_passes(path: Path, rows: int) -> Counter:
    """Time opening, plain CSV reading and the import pass, print the figures and return the outcome."""
    started = time.perf_counter()
    csv_file = open_csv(path)
    opened = time.perf_counter()
    report("open", opened - started, rows)

    with csv_file:
        started = time.perf_counter()
        with open_table(path) as table:
            records = sum(1 for _ in table.records())
        report("csv only", time.perf_counter() - started, records)

        started = time.perf_counter()
        counts = count_outcomes(csv_file)
        report("import", time.perf_counter() - started, rows)

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"outcome: {dict(sorted(counts.items()))}")
    print(f"peak resident memory of the process: {peak_mib:.0f} MiB")

    return counts


def expected_outcome(sample: Path, rows: int, without_phones: bool) -> Counter:
    """Return the outcome counts the generated file must have: the sample's, row by row, over the copies."""
    with tempfile.TemporaryDirectory(prefix="messagehub-sample-") as directory:
        header, sample_rows = read_sample(sample, without_phones)
        path = Path(directory) / "sample.csv"
        write_file(path, sample, len(sample_rows), without_phones)
        with open_csv(path) as csv_file:
            per_row = outcomes_by_row(csv_file, len(sample_rows))

    copies, rest = divmod(rows, len(sample_rows))
    expected: Counter = Counter()
    for index, kinds in enumerate(per_row):
        for kind in kinds:
            expected[kind] += copies + (1 if index < rest else 0)

    return expected


def outcomes_by_row(csv_file: CsvFile, row_count: int) -> list[list[str]]:
    """Return the outcome kinds of each data row, in file order, from one pass of ``rows()``."""
    per_line: dict[int, list[str]] = {}
    for item in csv_file.rows():
        per_line.setdefault(item.line, []).append("accepted" if isinstance(item, ContactRecord) else item.kind)

    # Blank rows yield nothing, so only the lines with items count, in order.
    per_row = [per_line[line] for line in sorted(per_line)]
    if len(per_row) != row_count:
        raise RuntimeError(f"the sample's {row_count} rows gave outcomes on {len(per_row)} lines")

    return per_row


def check_outcome(counts: Counter, expected: Counter, rows: int) -> None:
    """Stop the benchmark when the generated file's outcome differs from the sample's."""
    if counts != expected:
        raise SystemExit(
            f"the generated file's outcome {dict(sorted(counts.items()))} differs from the sample's "
            f"{dict(sorted(expected.items()))} over {rows:,} rows: the copies change what is valid"
        )

    shares = ", ".join(f"{kind} {count / rows:.2%}" for kind, count in sorted(counts.items()))
    print(f"outcome shares equal the sample's: {shares}")


def measure_traced_peak(path: Path) -> None:
    """Run the import again under tracemalloc and print the peak of Python allocations."""
    tracemalloc.start()
    with open_csv(path) as csv_file:
        count_outcomes(csv_file)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"peak Python allocations during open and import (tracemalloc): {peak / 2**20:.0f} MiB")


def count_outcomes(csv_file: CsvFile) -> Counter:
    """Consume ``rows()`` and count accepted rows and problems by kind."""
    counts: Counter = Counter()
    for item in csv_file.rows():
        counts["accepted" if isinstance(item, ContactRecord) else item.kind] += 1

    return counts


def measure_whole_import(directory: Path, path: Path, rows: int, expected: Counter) -> None:
    """Time `messagehub contacts import` of the file into a fresh instance and print its figures."""
    instance_path = create_instance(directory / "instance")
    environment = {**os.environ, "MESSAGEHUB_INSTANCE_PATH": str(instance_path)}
    command = [str(Path(sys.executable).parent / "messagehub"), "contacts", "import", "Benchmark", str(path)]

    with tempfile.TemporaryFile() as output:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT)
        usage = watch_process_tree(process)
        seconds = time.perf_counter() - started
        output.seek(0)
        text = output.read().decode(errors="replace")

    if usage.status != 0:
        raise RuntimeError(f"messagehub contacts import exited with status {usage.status}: {text[-2000:]}")

    check_whole_report(text, rows, expected)
    report("whole", seconds, rows)
    children = max(usage.peak_kib_by_descendant.values(), default=0) / 1024
    print(f"CPU time of the whole import, its worker processes included: {usage.cpu_seconds:.1f} s")
    print(
        f"peak resident memory of the whole import: command {usage.peak_kib / 1024:.0f} MiB, "
        f"largest of its {len(usage.peak_kib_by_descendant)} child processes {children:.0f} MiB"
    )


def create_instance(instance_path: Path) -> Path:
    """Create an instance folder with a migrated SQLite database, as `make run` does."""
    instance_path.mkdir(parents=True)
    environment = {**os.environ, "MESSAGEHUB_INSTANCE_PATH": str(instance_path), "MESSAGEHUB_LOG_LEVEL": "WARNING"}
    command = [str(Path(sys.executable).parent / "messagehub"), "db", "upgrade", "--directory", str(REPO / "migrations")]
    subprocess.run(command, env=environment, check=True, capture_output=True)

    return instance_path


def check_whole_report(text: str, rows: int, expected: Counter) -> None:
    """Raise when the command's report does not account for every row as the import pass did."""
    match = REPORT_LINE.search(text)
    if match is None:
        raise RuntimeError(f"no report line in the output of messagehub contacts import: {text[-2000:]}")

    reported = (match.group(1), *(int(count) for count in match.groups()[1:]))
    wanted = ("finished", rows, expected["accepted"], 0, expected["skipped"], expected["rejected"], expected["warning"])
    if reported != wanted:
        raise RuntimeError(
            f"the whole import reported {match.group(0)!r}; expected (status, rows, added, updated, skipped, "
            f"rejected, warnings) {wanted}"
        )


@dataclass
class ProcessTreeUsage:
    """Exit status and CPU seconds of a command, and peak resident memory in KiB of it and its descendants."""

    status: int = 0
    cpu_seconds: float = 0.0
    peak_kib: int = 0
    peak_kib_by_descendant: dict[int, int] = field(default_factory=dict)


def watch_process_tree(process: subprocess.Popen) -> ProcessTreeUsage:
    """Wait for ``process``, reading the peak memory of it and its descendants every 20 ms."""
    # VmHWM from /proc, not ru_maxrss: Linux carries a parent's high-water
    # mark over into a child across fork and exec (bench/README.md).
    usage = ProcessTreeUsage()
    deadline = time.monotonic() + WHOLE_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        usage.peak_kib = max(usage.peak_kib, read_vmhwm(process.pid))
        for pid in descendants(process.pid):
            usage.peak_kib_by_descendant[pid] = max(usage.peak_kib_by_descendant.get(pid, 0), read_vmhwm(pid))

        pid, wait_status, resources = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            # Popen never saw this wait. The CPU time includes the worker
            # processes, which the command waits for before it exits.
            process.returncode = usage.status = os.waitstatus_to_exitcode(wait_status)
            usage.cpu_seconds = resources.ru_utime + resources.ru_stime
            return usage
        time.sleep(0.02)

    process.kill()
    process.wait()
    raise TimeoutError(f"messagehub contacts import still running after {WHOLE_TIMEOUT_SECONDS:.0f} s")


def descendants(pid: int) -> list[int]:
    """Return the process ids of the children of ``pid``, their children, and so on."""
    found = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found.extend(int(child) for child in children)
        pending.extend(int(child) for child in children)

    return found


def report(step: str, seconds: float, rows: int) -> None:
    """Print one timed pass."""
    print(f"{step:>9}: {seconds:6.1f} s  {rows / seconds:>10,.0f} rows/s")


if __name__ == "__main__":
    sys.exit(main())
