"""Fixtures for the template and MIME tests: the sample contacts as template contexts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from messagehub.messages.templating import build_context


@pytest.fixture(scope="session")
def sample_rows(shared_data: Path) -> list[dict[str, str]]:
    """Return every row of the 10,000-contact sample list, unchanged."""
    with open(shared_data / "contacts-10k.csv", newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="session")
def sample_contexts(sample_rows: list[dict[str, str]]) -> list[dict]:
    """Return a template context for every sample row, with the extra columns as attributes."""
    return [
        build_context(
            row["email"],
            row["first_name"],
            row["last_name"],
            row["phone"],
            row["country"],
            {"language": row["language"], "city": row["city"], "signed_up": row["signed_up"], "tags": row["tags"]},
        )
        for row in sample_rows
    ]
