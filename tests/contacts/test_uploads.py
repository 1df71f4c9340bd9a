"""Tests for the storage of uploads between the steps of the import wizard."""

from __future__ import annotations

import io
import json
import os
import stat
import time
from pathlib import Path

import pytest

from messagehub.contacts import uploads
from messagehub.contacts.uploads import (
    MAX_UPLOAD_AGE_SECONDS,
    claim_upload,
    discard_upload,
    find_upload,
    remove_expired_uploads,
    save_upload,
)

CONTENT = b"email\nann@example.com\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "uploads"


def store(folder: Path, filename: str = "customers.csv") -> uploads.PendingUpload:
    return save_upload(folder, io.BytesIO(CONTENT), list_id=3, user_id=7, filename=filename, default_country="DE")


def test_upload_named_by_token(folder):
    upload = store(folder, filename="../../etc/customers list.csv")

    names = sorted(path.name for path in folder.iterdir())

    assert names == sorted([f"{upload.token}.csv", f"{upload.token}.json"])
    assert upload.csv_path(folder).read_bytes() == CONTENT
    assert upload.filename == "../../etc/customers list.csv"


def test_upload_readable_by_owner_only(folder):
    upload = store(folder)

    mode = stat.S_IMODE(upload.csv_path(folder).stat().st_mode)

    assert mode == 0o600


def test_upload_found_by_token(folder):
    upload = store(folder)

    found = find_upload(folder, upload.token)

    assert found == upload
    assert found.list_id == 3
    assert found.user_id == 7
    assert found.default_country == "DE"


@pytest.mark.parametrize("token", ["", "../uploads/x", "A" * 32, "0" * 31, "0" * 32])
def test_unknown_token_not_found(folder, token):
    store(folder)

    assert find_upload(folder, token) is None


def test_claim_works_once(folder):
    upload = store(folder)

    first = claim_upload(folder, upload.token)
    second = claim_upload(folder, upload.token)

    assert first is True
    assert second is False
    assert find_upload(folder, upload.token) is None
    assert upload.csv_path(folder).is_file()


def test_discard_removes_both_files(folder):
    upload = store(folder)

    discard_upload(folder, upload.token)

    assert list(folder.iterdir()) == []


def test_expired_upload_not_found(folder, monkeypatch):
    upload = store(folder)
    later = time.time() + MAX_UPLOAD_AGE_SECONDS + 60
    monkeypatch.setattr(uploads.time, "time", lambda: later)

    assert find_upload(folder, upload.token) is None


def test_remove_expired_keeps_recent(folder):
    old = store(folder)
    recent = store(folder)
    other = folder / "notes.txt"
    other.write_text("not an upload")
    day_ago = time.time() - MAX_UPLOAD_AGE_SECONDS - 60
    for path in (old.csv_path(folder), folder / f"{old.token}.json", other):
        os.utime(path, (day_ago, day_ago))

    removed = remove_expired_uploads(folder)

    assert removed == 2
    assert find_upload(folder, recent.token) == recent
    assert not old.csv_path(folder).exists()
    assert other.exists()


def test_remove_expired_without_folder(tmp_path):
    assert remove_expired_uploads(tmp_path / "missing") == 0


def test_metadata_written_as_json(folder):
    upload = store(folder)

    fields = json.loads((folder / f"{upload.token}.json").read_text(encoding="utf-8"))

    assert fields["filename"] == "customers.csv"
    assert fields["list_id"] == 3
