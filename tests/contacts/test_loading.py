"""Tests for loading CSV files into contact lists in the database, in one process and with workers."""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timezone
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from messagehub.contacts import loading
from messagehub.contacts.importer import ContactRecord, Problem, open_csv
from messagehub.contacts.loading import PARALLEL_MIN_BYTES, load_file, start_report, validation_workers
from messagehub.database import configure_engine
from messagehub.extensions import db
from messagehub.models import Base, Contact, ContactList, ImportProblem, ImportReport

SAMPLE = "contacts-10k.csv"


def new_list(engine: Engine, name: str) -> int:
    """Create an empty contact list and return its id."""
    with Session(engine) as session:
        contact_list = ContactList(name=name)
        session.add(contact_list)
        session.commit()
        return contact_list.id


def import_into(engine: Engine, list_id: int, path: Path, **options) -> ImportReport:
    """Import ``path`` into the list with load_file and return the closed report."""
    with Session(engine) as session:
        report = start_report(session, list_id, path.name, path.stat().st_size)
        session.commit()
        report_id = report.id

    return load_file(engine, report_id, path, **options)


def stored_contacts(engine: Engine, list_id: int) -> list[tuple]:
    """Return every contact of the list as a tuple of its imported values, in insertion order."""
    with Session(engine) as session:
        contacts = session.execute(select(Contact).where(Contact.list_id == list_id).order_by(Contact.id)).scalars()
        return [
            (c.email, c.email_key, c.first_name, c.last_name, c.phone, c.country, c.attributes, c.unsubscribed)
            for c in contacts
        ]


def stored_problems(engine: Engine, report_id: int) -> list[tuple]:
    """Return every problem of the report as (line, kind, field, value, reason), in file order."""
    with Session(engine) as session:
        query = select(ImportProblem).where(ImportProblem.report_id == report_id).order_by(ImportProblem.id)
        return [(p.line, p.kind, p.field, p.value, p.reason) for p in session.execute(query).scalars()]


def counts(report: ImportReport) -> tuple:
    return (report.status, report.rows, report.added, report.updated, report.skipped, report.rejected, report.warnings)


@pytest.fixture
def engine(app: Flask) -> Engine:
    """Return the engine of the test app's migrated SQLite database."""
    with app.app_context():
        return db.engine


def test_load_stores_what_rows_yields(engine: Engine, shared_data: Path) -> None:
    path = shared_data / SAMPLE
    with open_csv(path) as csv_file:
        items = list(csv_file.rows())
    records = [item for item in items if isinstance(item, ContactRecord)]
    problems = [item for item in items if isinstance(item, Problem)]

    list_id = new_list(engine, "Sample")
    report = import_into(engine, list_id, path)

    expected = [
        (r.email, r.email_key, r.first_name, r.last_name, r.phone, r.country, r.attributes, False) for r in records
    ]
    assert stored_contacts(engine, list_id) == expected
    assert stored_problems(engine, report.id) == [(p.line, p.kind, p.field, p.value, p.reason) for p in problems]
    assert report.added == len(records)
    assert report.status == "finished"


def test_load_timestamps_read_back_aware(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("email,city\nann@example.com,Köln\n", encoding="utf-8")
    list_id = new_list(engine, "One")

    import_into(engine, list_id, path)

    with Session(engine) as session:
        contact = session.execute(select(Contact).where(Contact.list_id == list_id)).scalar_one()
        assert contact.created_at.tzinfo == timezone.utc
        assert contact.updated_at == contact.created_at
        assert contact.attributes == {"city": "Köln"}


@pytest.mark.parametrize("name", [SAMPLE, "contacts-latin-cp1252.csv"])
def test_load_in_worker_same_as_in_process(engine: Engine, shared_data: Path, name: str) -> None:
    path = shared_data / name
    serial_list = new_list(engine, "In process")
    parallel_list = new_list(engine, "In a worker")

    serial = import_into(engine, serial_list, path, default_country="DE", workers=0)
    parallel = import_into(engine, parallel_list, path, default_country="DE", workers=1)

    assert counts(parallel) == counts(serial)
    assert stored_contacts(engine, parallel_list) == stored_contacts(engine, serial_list)
    assert stored_problems(engine, parallel.id) == stored_problems(engine, serial.id)


def test_load_in_worker_from_thread(engine: Engine, shared_data: Path) -> None:
    """Does an import with workers run from a thread, as the web app starts it?"""
    path = shared_data / SAMPLE
    serial_list = new_list(engine, "In process")
    threaded_list = new_list(engine, "From a thread")
    serial = import_into(engine, serial_list, path, workers=0)
    outcome = {}

    thread = threading.Thread(target=lambda: outcome.update(report=import_into(engine, threaded_list, path, workers=1)))
    thread.start()
    thread.join(timeout=120)

    assert not thread.is_alive()
    assert counts(outcome["report"]) == counts(serial)
    assert stored_contacts(engine, threaded_list) == stored_contacts(engine, serial_list)


@pytest.mark.parametrize("workers", [0, 1])
def test_rejected_rows_keep_good_rows(engine: Engine, tmp_path: Path, workers: int) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "email,phone,country\n"
        "ann@example.com,,\n"
        "not-an-address,,\n"
        "bob@example.com,+49 1,DE\n"
        ",12,DE\n"
        "dee@example.com,,\n"
        'cy@example.com,"unclosed\n'
        "eve@example.com,,\n",
        encoding="utf-8",
    )
    list_id = new_list(engine, "Mixed")

    report = import_into(engine, list_id, path, workers=workers)

    emails = [contact[0] for contact in stored_contacts(engine, list_id)]
    assert emails == ["ann@example.com", "bob@example.com", "dee@example.com"]
    problems = stored_problems(engine, report.id)
    assert [(line, kind, field) for line, kind, field, _, _ in problems] == [
        (3, "rejected", "email"),
        (4, "warning", "phone"),
        (5, "rejected", "phone"),
        (7, "rejected", ""),
    ]
    assert problems[0][4].startswith('email "not-an-address": ')
    assert "lines 7 to 8 were read as one row" in problems[3][4]
    assert counts(report) == ("finished", 6, 3, 0, 0, 3, 1)


def test_reimport_updates_existing_contacts(engine: Engine, tmp_path: Path) -> None:
    first = tmp_path / "first.csv"
    first.write_text(
        "email,first_name,phone,city\nann@example.com,Ann,+4930123456,Köln\n,,+4930654321,Bonn\n", encoding="utf-8"
    )
    second = tmp_path / "second.csv"
    second.write_text(
        "email,first_name,phone,tier\nANN@example.com,,+4930111111,gold\n,Phil,+4930654321,\nzoe@example.com,Zoe,,\n",
        encoding="utf-8",
    )
    list_id = new_list(engine, "Twice")

    import_into(engine, list_id, first)
    report = import_into(engine, list_id, second)

    assert counts(report) == ("finished", 3, 1, 2, 0, 0, 0)
    assert stored_contacts(engine, list_id) == [
        ("ANN@example.com", "ann@example.com", "Ann", "", "+4930111111", None, {"city": "Köln", "tier": "gold"}, False),
        (None, None, "Phil", "", "+4930654321", None, {"city": "Bonn"}, False),
        ("zoe@example.com", "zoe@example.com", "Zoe", "", None, None, {}, False),
    ]


def test_progress_reported_per_batch(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "BATCH_ROWS", 100)
    path = tmp_path / "many.csv"
    path.write_text("email\n" + "".join(f"user{number}@example.com\n" for number in range(1000)), encoding="utf-8")
    list_id = new_list(engine, "Many")
    seen = []

    report = import_into(engine, list_id, path, on_progress=lambda current: seen.append((current.rows, current.bytes_done)))

    assert [rows for rows, _ in seen] == list(range(100, 1001, 100))
    assert [done for _, done in seen] == sorted(done for _, done in seen)
    assert 0 < seen[0][1] < path.stat().st_size
    assert report.bytes_done == path.stat().st_size


def test_load_with_named_parameters(tmp_path: Path) -> None:
    """Does the bulk insert work with a driver that takes named parameters, as psycopg does?"""
    engine = create_engine(f"sqlite:///{tmp_path / 'named.db'}", paramstyle="named")
    configure_engine(engine)
    Base.metadata.create_all(engine)
    path = tmp_path / "two.csv"
    path.write_text("email,first_name,city\nann@example.com,Ann,Köln\nbob@example.com,Bob,\n", encoding="utf-8")
    list_id = new_list(engine, "Named")

    report = import_into(engine, list_id, path)

    assert report.added == 2
    assert stored_contacts(engine, list_id) == [
        ("ann@example.com", "ann@example.com", "Ann", "", None, None, {"city": "Köln"}, False),
        ("bob@example.com", "bob@example.com", "Bob", "", None, None, {}, False),
    ]
    engine.dispose()


def test_validation_workers_none_for_small_file() -> None:
    assert validation_workers(PARALLEL_MIN_BYTES - 1) == 0


def test_validation_workers_leave_a_cpu_for_the_loader() -> None:
    workers = validation_workers(PARALLEL_MIN_BYTES)
    assert workers <= loading.MAX_VALIDATION_WORKERS
    assert workers == min(len(os.sched_getaffinity(0)) - 1, loading.MAX_VALIDATION_WORKERS)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="validation workers need a second CPU")
def test_web_import_of_large_file_uses_worker(
    app: Flask, client, auth, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = "".join(f"user{number}@example.com,Ann,+49 30 {1000000 + number},DE,{'x' * 60}\n" for number in range(45000))
    path = tmp_path / "large.csv"
    path.write_text("email,first_name,phone,country,notes\n" + rows + "not-an-address,Bob,,DE,\n", encoding="utf-8")
    assert path.stat().st_size >= PARALLEL_MIN_BYTES
    caplog.set_level(logging.INFO, logger="messagehub.contacts")
    auth.login()
    client.post("/contacts/", data={"name": "Large"})
    with app.app_context():
        list_id = db.session.execute(select(ContactList.id).where(ContactList.name == "Large")).scalar_one()

    with path.open("rb") as file:
        response = client.post(
            f"/contacts/{list_id}/imports", data={"file": (file, path.name)}, content_type="multipart/form-data"
        )
    response.request.environ["wsgi.input"].close()
    report_id = int(response.headers["Location"].rsplit("/", 1)[1])
    with app.app_context():
        report = wait_for_report(report_id)

    assert counts(report) == ("finished", 45001, 45000, 0, 0, 1, 0)
    assert "validating cells in 1 worker processes" in caplog.text


def wait_for_report(report_id: int, timeout: float = 120.0) -> ImportReport:
    """Return the report once its import has ended, polling the database as the report page does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = db.session.get(ImportReport, report_id, populate_existing=True)
        if report.status != "running":
            return report
        time.sleep(0.2)

    pytest.fail(f"import {report_id} still running after {timeout:.0f} s")
