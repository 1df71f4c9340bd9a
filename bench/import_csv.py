"""Measure how fast the CSV contact importer parses and validates a large file.

The script writes a file of --rows rows into a temporary directory by repeating
the export given by --sample, with a copy number put in front of every address
so each copy adds new contacts. It then times three passes over that file and
prints rows per second:

  open      detect the encoding (decodes the whole file once) and read the header
  csv only  split the file into stripped cells, without validation
  import    CsvFile.rows(): validate, normalise, find duplicates

Peak memory is the process's maximum resident set size after the import pass.
With --trace-memory, a further pass measures the peak of Python allocations
with tracemalloc. Tracing slows that pass down several times.

    .venv/bin/python bench/import_csv.py --rows 1000000
"""

from __future__ import annotations

import argparse
import csv
import itertools
import resource
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

from messagehub.contacts.csvfile import open_table
from messagehub.contacts.importer import ContactRecord, CsvFile, open_csv

SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "contacts-10k.csv"


def main() -> None:
    """Generate the file, run the passes and print the figures."""
    options = parse_arguments()

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "contacts.csv"
        write_file(path, options.sample, options.rows, options.without_phones)
        size_mib = path.stat().st_size / 2**20
        phones = "without phone numbers" if options.without_phones else "with phone numbers"
        print(f"file: {options.rows:,} rows {phones}, {size_mib:.0f} MiB, generated from {options.sample.name}")

        measure_passes(path, options.rows)
        if options.trace_memory:
            measure_traced_peak(path)


def parse_arguments() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="data rows in the generated file (default 1,000,000)")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="CSV export whose rows are repeated (default: %(default)s)")
    parser.add_argument("--trace-memory", action="store_true", help="add a pass that measures peak Python allocations")
    parser.add_argument("--without-phones", action="store_true", help="leave the phone cells empty, as in an email-only list")

    return parser.parse_args()


def write_file(path: Path, sample: Path, rows: int, without_phones: bool) -> None:
    """Write ``rows`` data rows copied from ``sample``, with copy numbers in the addresses."""
    with sample.open(newline="", encoding="utf-8") as source:
        reader = csv.reader(source)
        header = next(reader)
        sample_rows = list(reader)

    if without_phones:
        phone = header.index("phone")
        sample_rows = [row[:phone] + [""] + row[phone + 1 :] for row in sample_rows]

    with path.open("w", newline="", encoding="utf-8") as target:
        writer = csv.writer(target)
        writer.writerow(header)
        copies = itertools.count()
        written = 0
        while written < rows:
            copy = next(copies)
            for row in sample_rows[: rows - written]:
                writer.writerow([f"c{copy}.{row[0].lstrip()}", *row[1:]])
            written += min(len(sample_rows), rows - written)


def measure_passes(path: Path, rows: int) -> None:
    """Time opening, plain CSV reading and the full import, and print the figures."""
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
    print(f"outcome: {dict(counts)}")
    print(f"peak resident memory of the process: {peak_mib:.0f} MiB")


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


def report(step: str, seconds: float, rows: int) -> None:
    """Print one timed pass."""
    print(f"{step:>9}: {seconds:6.1f} s  {rows / seconds:>10,.0f} rows/s")


if __name__ == "__main__":
    sys.exit(main())
