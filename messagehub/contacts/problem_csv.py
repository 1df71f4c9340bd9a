"""The rows an import rejected, skipped or warned about, as a CSV file for spreadsheets.

This module imports no Flask.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Protocol

HEADER = ("line", "kind", "field", "value", "reason")

# A spreadsheet reads a cell that starts with one of the first four as a
# formula (CWE-1236). Tab and carriage return are included as well, as
# common CSV-injection guidance does.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

# Excel reads a CSV file without a byte order mark in the legacy code page
# of the user's locale, which garbles every non-ASCII name.
BYTE_ORDER_MARK = "\ufeff"


class ProblemRow(Protocol):
    """A row of the rejected-rows CSV: an ``ImportProblem`` or an importer ``Problem``."""

    line: int
    kind: str
    field: str
    value: str
    reason: str


def neutralize_formula(cell: str) -> str:
    """Prefix ``cell`` with a single quote when a spreadsheet would run it as a formula.

    Spreadsheets show the quote-prefixed text as typed, without the quote.
    """
    if cell.startswith(FORMULA_PREFIXES):
        return "'" + cell

    return cell


def problem_csv_chunks(problems: Iterable[ProblemRow]) -> Iterator[str]:
    """Yield a UTF-8 CSV file, in pieces, of ``problems`` under the header HEADER.

    The first piece starts with a byte order mark. Each following piece is
    one row, so the file can be streamed however many rows there are.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    writer.writerow(HEADER)
    yield BYTE_ORDER_MARK + _take(buffer)

    for problem in problems:
        cells = (problem.kind, problem.field, problem.value, problem.reason)
        writer.writerow([problem.line, *(neutralize_formula(cell) for cell in cells)])
        yield _take(buffer)


def _take(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()

    return text
