"""Tests for the CSV file of an import's rejected, skipped and warned rows."""

from __future__ import annotations

import csv
import io

import pytest

from messagehub.contacts.importer import Problem
from messagehub.contacts.problem_csv import HEADER, neutralize_formula, problem_csv_chunks


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("=HYPERLINK(\"http://example.com\")", "'=HYPERLINK(\"http://example.com\")"),
        ("+49 30 1234567", "'+49 30 1234567"),
        ("-2+3", "'-2+3"),
        ("@example.com", "'@example.com"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("ann@example.com", "ann@example.com"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_neutralize_formula(cell, expected):
    assert neutralize_formula(cell) == expected


def test_csv_starts_with_bom():
    text = "".join(problem_csv_chunks([]))

    assert text.startswith("\ufeffline,kind,field,value,reason\r\n")


def test_csv_round_trip():
    problems = [
        Problem(4, "rejected", "email", "=1+1", 'email "=1+1": An email address must have an @-sign.'),
        Problem(9, "skipped", "email", "ann@example.com", "duplicate of line 2"),
        Problem(12, "rejected", "", "", "a quoted value, with \"quotes\"\nand a line break"),
    ]

    text = "".join(problem_csv_chunks(problems))
    rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline="")))

    assert rows[0] == list(HEADER)
    assert rows[1] == ["4", "rejected", "email", "'=1+1", 'email "=1+1": An email address must have an @-sign.']
    assert rows[2] == ["9", "skipped", "email", "ann@example.com", "duplicate of line 2"]
    assert rows[3] == ["12", "rejected", "", "", "a quoted value, with \"quotes\"\nand a line break"]
    assert len(rows) == 4


def test_csv_one_chunk_per_row():
    problems = [Problem(line, "rejected", "email", "x", "invalid") for line in range(2, 7)]

    chunks = list(problem_csv_chunks(problems))

    assert len(chunks) == 6
