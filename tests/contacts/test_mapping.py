"""Tests for the explicit column mapping of the importer and the preview of a file's first rows."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from messagehub.contacts.csvfile import open_table
from messagehub.contacts.importer import (
    ATTRIBUTE,
    IGNORE,
    ColumnMappingError,
    ContactRecord,
    CsvFileError,
    attribute_names,
    default_targets,
    map_columns_as,
    open_csv,
)

SAMPLE = b"email,first_name,last_name,city\nann@example.com,Ann,Lee,Paris\nbob@example.com,Bob,Roe,Oslo\n"


def records(data: bytes, targets: list[str] | None) -> list[ContactRecord]:
    with open_csv(io.BytesIO(data), targets) as csv_file:
        return [item for item in csv_file.rows() if isinstance(item, ContactRecord)]


def test_mapping_ignore_drops_column():
    imported = records(SAMPLE, ["email", "first_name", "last_name", IGNORE])

    assert [record.attributes for record in imported] == [{}, {}]
    assert [record.first_name for record in imported] == ["Ann", "Bob"]


def test_mapping_swaps_names():
    imported = records(SAMPLE, ["email", "last_name", "first_name", ATTRIBUTE])

    assert [(record.first_name, record.last_name) for record in imported] == [("Lee", "Ann"), ("Roe", "Bob")]
    assert imported[0].attributes == {"city": "Paris"}


def test_mapping_unknown_header_as_email():
    data = b"Courriel;Nom\nann@example.com;Ann\n"

    with pytest.raises(CsvFileError, match="no email or phone column"):
        open_csv(io.BytesIO(data))
    imported = records(data, ["email", "first_name"])

    assert [record.email for record in imported] == ["ann@example.com"]
    assert imported[0].first_name == "Ann"


def test_mapping_field_twice_rejected():
    with pytest.raises(ColumnMappingError, match="more than one column is mapped to first_name") as raised:
        map_columns_as(["email", "first", "second"], ["email", "first_name", "first_name"])

    assert raised.value.positions == (1, 2)
    assert '"first", "second"' in str(raised.value)


def test_mapping_without_contact_column_rejected():
    with pytest.raises(ColumnMappingError, match="no column is mapped to email or phone") as raised:
        map_columns_as(["email", "name"], [IGNORE, "first_name"])

    assert raised.value.positions == ()


def test_mapping_error_stops_open():
    with pytest.raises(ColumnMappingError):
        open_csv(io.BytesIO(SAMPLE), [IGNORE, "first_name", "last_name", IGNORE])


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (["email", "first_name"], "2 targets given for 3 columns"),
        (["email", "first_name", "town"], "unknown column targets"),
    ],
)
def test_mapping_malformed_targets_raise(targets, message):
    with pytest.raises(ValueError, match=message):
        map_columns_as(["email", "name", "city"], targets)


def test_attribute_names_unique():
    names = attribute_names(["Email", "City", "city", "", "Signed up"])

    assert names == ["email_2", "city", "city_2", "column_4", "signed_up"]


def test_attribute_name_independent_of_choices():
    mapping = map_columns_as(["City", "city", "email"], [IGNORE, ATTRIBUTE, "email"])

    assert mapping == [("City", None), ("city", "city_2"), ("email", "email")]


def test_default_targets_from_aliases():
    targets = default_targets(["E-Mail", "Given name", "Surname", "Mobile", "Country code", "City", "email"])

    assert targets == ["email", "first_name", "last_name", "phone", "country", ATTRIBUTE, ATTRIBUTE]


def test_head_returns_first_rows(shared_data: Path):
    path = shared_data / "contacts-10k-excel-bom.csv"
    with path.open(encoding="utf-8-sig", newline="") as text:
        expected = list(csv.reader(text, delimiter=";"))[1:6]

    with open_table(path) as table:
        head = table.head(5)

    assert [cells for _, cells, _ in head] == [[cell.strip() for cell in row] for row in expected]
    assert [line for line, _, _ in head] == [2, 3, 4, 5, 6]
    assert all(error is None for _, _, error in head)


def test_head_allows_records_after():
    with open_table(io.BytesIO(SAMPLE)) as table:
        head = table.head(1)
        rest = list(table.records())

    assert len(head) == 1
    assert len(rest) == 2
