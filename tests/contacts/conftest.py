"""Fixtures for the contact importer tests."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Return the folder of sample contact exports, which CI clones next to the repository."""
    folder = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    if not folder.is_dir():
        pytest.fail(f"sample data folder not found: {folder}")

    return folder
