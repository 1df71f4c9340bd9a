"""Tests for CsvFile.rows() with worker processes validating the cells."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from messagehub.contacts import importer, validation_pool
from messagehub.contacts.importer import ContactRecord, open_csv

SAMPLES = ["contacts-10k.csv", "contacts-10k-excel-bom.csv", "contacts-10k-utf16.txt", "contacts-latin-cp1252.csv"]


@pytest.mark.parametrize("name", SAMPLES)
def test_workers_yield_same_items(shared_data: Path, name: str) -> None:
    with open_csv(shared_data / name) as csv_file:
        in_process = list(csv_file.rows("DE"))
        in_workers = list(csv_file.rows("DE", workers=2))

    assert len(in_workers) == len(in_process)
    assert in_workers == in_process


def test_workers_one_chunk_smaller_than_pool() -> None:
    data = b"email,phone\nann@example.com,+49 30 1234567\nnot-an-address,\n"
    with open_csv(io.BytesIO(data)) as csv_file:
        record, problem = csv_file.rows(workers=2)

    assert isinstance(record, ContactRecord)
    assert record.phone == "+49301234567"
    assert problem.line == 3
    assert problem.field == "email"


def test_workers_progress_reaches_end() -> None:
    rows = "".join(f"user{number}@example.com,+49 30 {1000000 + number}\n" for number in range(5000))
    data = ("email,phone\n" + rows).encode()
    with open_csv(io.BytesIO(data)) as csv_file:
        items = csv_file.rows(workers=1)
        next(items)
        early = csv_file.bytes_read
        remaining = sum(1 for _ in items)

        assert 0 < early < csv_file.total_bytes
        assert remaining == 4999
        assert csv_file.bytes_read == csv_file.total_bytes


def test_workers_stopped_early_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "WORKER_CHUNK_ROWS", 100)
    data = ("email\n" + "".join(f"user{number}@example.com\n" for number in range(5000))).encode()
    before = set(multiprocessing.active_children())
    with open_csv(io.BytesIO(data)) as csv_file:
        items = csv_file.rows(workers=2)
        first = next(items)
        started = set(multiprocessing.active_children()) - before
        items.close()
        after = set(multiprocessing.active_children()) - before
        again = [record.email for record in csv_file.rows()]

    assert first.email == "user0@example.com"
    assert started
    assert not after
    assert len(again) == 5000


def test_workers_killed_rows_checked_here(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(importer, "WORKER_CHUNK_ROWS", 100)
    rows = "".join(f"user{number}@example.com,+49 30 {1000000 + number},DE\n" for number in range(3000))
    data = ("email,phone,country\n" + rows + "not-an-address,,\n").encode()
    before = set(multiprocessing.active_children())
    with open_csv(io.BytesIO(data)) as csv_file:
        in_process = list(csv_file.rows())
        items = csv_file.rows(workers=1)
        first = next(items)
        for worker in set(multiprocessing.active_children()) - before:
            os.kill(worker.pid, signal.SIGKILL)
        in_workers = [first, *items]

    assert in_workers == in_process
    assert "validation workers failed, validating in the importing process" in caplog.text


def test_workers_unavailable_rows_checked_here(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_semaphores(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", "/dev/shm")

    monkeypatch.setattr(validation_pool, "ProcessPoolExecutor", no_semaphores)
    data = b"email,phone,country\nann@example.com,030 1234567,DE\nbob@example.com,12,DE\n"
    with open_csv(io.BytesIO(data)) as csv_file:
        in_process = list(csv_file.rows())
        in_workers = list(csv_file.rows(workers=2))

    assert len(in_workers) == 3
    assert in_workers == in_process
    assert "validation workers could not start" in caplog.text
    assert "Permission denied" in caplog.text
