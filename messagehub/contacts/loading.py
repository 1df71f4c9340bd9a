"""Loading an imported CSV file into a contact list, in batches, with a report.

Flask-free: the web app runs it in a thread and the CLI in the foreground.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from sqlalchemy import Dialect, Engine, bindparam, insert, select
from sqlalchemy.orm import Session

from messagehub.contacts.bulk import (
    DriverStatement,
    bind_processor,
    in_list,
    in_list_names,
    in_list_values,
    insert_statement,
)
from messagehub.contacts.importer import ContactRecord, CsvFile, CsvFileError, Problem, open_csv
from messagehub.models import Contact, ImportProblem, ImportReport, utcnow

log = logging.getLogger("messagehub.contacts")

# Rows per transaction, and so per progress report. On SQLite each commit
# writes the batch's pages to the write-ahead log once.
BATCH_ROWS = 2000

# Smaller files (about 40,000 rows) are validated in the importing process.
# Starting a worker and its first phone number took 0.4 to 0.9 s on a busy
# 2-core machine, more than a worker saves on a small file.
PARALLEL_MIN_BYTES = 4 * 2**20

# One process reads the file, finds duplicates and writes to the database, at
# about the speed of one worker validating the cells, so more than two workers
# would mostly wait.
MAX_VALIDATION_WORKERS = 2

# Longer names are cut to the column size (Contact.first_name and last_name).
NAME_LENGTH = 200

CONTACT_COLUMNS = (
    "list_id",
    "email",
    "email_key",
    "first_name",
    "last_name",
    "phone",
    "country",
    "attributes",
    "unsubscribed",
    "created_at",
    "updated_at",
)


def start_report(session: Session, list_id: int, filename: str, size: int) -> ImportReport:
    """Create the report row an import fills in; the caller commits."""
    report = ImportReport(list_id=list_id, filename=filename[:255], bytes_total=size, status="running")
    session.add(report)
    return report


def load_file(
    engine: Engine,
    report_id: int,
    path: Path,
    default_country: str | None = None,
    on_progress: Callable[[ImportReport], None] | None = None,
    targets: Sequence[str] | None = None,
    workers: int | None = None,
) -> ImportReport:
    """Import ``path`` into the report's list, committing each batch and the counts with it.

    A batch commits its contacts, its problems and the report's counters in one
    transaction, so an import that dies half-way leaves a report that matches
    what was loaded. ``targets`` is the column mapping chosen by the user, as
    ``open_csv`` takes it; without it the header names decide. ``workers`` is
    the number of processes that validate cells, as ``CsvFile.rows`` takes it;
    None chooses by the file's size and the CPUs this process may use.
    """
    with Session(engine, expire_on_commit=False) as session:
        report = session.get(ImportReport, report_id)
        try:
            csv_file = open_csv(path, targets)
        except CsvFileError as e:
            return _fail(session, report, str(e))

        with csv_file:
            report.encoding = csv_file.encoding
            report.delimiter = csv_file.delimiter
            session.commit()
            if workers is None:
                workers = validation_workers(csv_file.total_bytes)
            try:
                _load_rows(session, report, csv_file, default_country, on_progress, workers)
            except CsvFileError as e:
                return _fail(session, report, str(e))

        return _finish(session, report)


def validation_workers(total_bytes: int) -> int:
    """Return how many worker processes should validate a file of ``total_bytes``, 0 for none."""
    if total_bytes < PARALLEL_MIN_BYTES:
        return 0

    # The CPUs this process may run on. NOTE: a cgroup CPU quota (a container
    # limited to one CPU of many) is not seen, so workers may then share a CPU.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cpus - 1, MAX_VALIDATION_WORKERS)


def _load_rows(
    session: Session,
    report: ImportReport,
    csv_file: CsvFile,
    default_country: str | None,
    on_progress: Callable[[ImportReport], None] | None,
    workers: int,
) -> None:
    """Load the file batch by batch, committing each batch with the report's counters."""
    contacts = _ContactWriter(session.get_bind().dialect, BATCH_ROWS)
    if workers:
        log.info("import %s into list %s: validating cells in %d worker processes", report.id, report.list_id, workers)

    for batch in _batches(csv_file.rows(default_country, workers), BATCH_ROWS):
        _load_batch(session, report, batch, contacts)
        report.bytes_done = csv_file.bytes_read
        report.updated_at = utcnow()
        session.commit()
        if on_progress is not None:
            on_progress(report)


def _batches(items: Iterable, size: int) -> Iterable[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _load_batch(
    session: Session, report: ImportReport, batch: list[ContactRecord | Problem], contacts: _ContactWriter
) -> None:
    records = [item for item in batch if isinstance(item, ContactRecord)]
    problems = [item for item in batch if isinstance(item, Problem)]

    # Contacts already on the list are updated through the ORM. New ones,
    # nearly every row of a first import, go in with one executemany.
    existing = contacts.existing(session, report.list_id, records)
    new_records = []
    for record in records:
        contact = existing.get(_key(record))
        if contact is None:
            new_records.append(record)
        else:
            _update_contact(contact, record)
    contacts.insert(session, report.list_id, new_records)
    report.added += len(new_records)
    report.updated += len(records) - len(new_records)

    _insert_problems(session, report.id, problems)
    for problem in problems:
        if problem.kind == "rejected":
            report.rejected += 1
        elif problem.kind == "skipped":
            report.skipped += 1
        else:
            report.warnings += 1

    # Each row yields one record or one rejected/skipped problem; warnings come on top.
    report.rows += len(records) + sum(1 for problem in problems if problem.kind != "warning")


def _key(record: ContactRecord) -> tuple[str, str]:
    return ("email", record.email_key) if record.email_key else ("phone", record.phone or "")


class _ContactWriter:
    """The lookups and inserts of one import's contacts, through statements compiled once per import."""

    def __init__(self, dialect: Dialect, batch_rows: int) -> None:
        table = Contact.__table__
        self._batch_rows = batch_rows
        self._insert = insert_statement(dialect, table, CONTACT_COLUMNS)
        self._serialize = bind_processor(dialect, table.c.attributes)
        self._converters = {
            name: bind_processor(dialect, table.c[name]) for name in ("unsubscribed", "created_at", "updated_at")
        }

        # One IN list as long as a batch, padded with NULL, so the SQL never changes.
        email_query = select(Contact.id).where(
            Contact.list_id == bindparam("list_id"), in_list(Contact.email_key, "key", batch_rows)
        )
        self._by_email = DriverStatement(dialect, email_query, ["list_id", *in_list_names("key", batch_rows)])
        phone_query = select(Contact.id).where(
            Contact.list_id == bindparam("list_id"),
            Contact.email_key.is_(None),
            in_list(Contact.phone, "phone", batch_rows),
        )
        self._by_phone = DriverStatement(dialect, phone_query, ["list_id", *in_list_names("phone", batch_rows)])

    def existing(self, session: Session, list_id: int, records: list[ContactRecord]) -> dict:
        """Return the list's contacts that these records update, by ``_key``."""
        keys = [record.email_key for record in records if record.email_key]
        phones = [record.phone for record in records if not record.email_key and record.phone]
        connection = session.connection()
        ids = []
        if keys:
            values = (list_id, *in_list_values(keys, self._batch_rows))
            ids += [row[0] for row in self._by_email.fetch_all(connection, values)]
        if phones:
            values = (list_id, *in_list_values(phones, self._batch_rows))
            ids += [row[0] for row in self._by_phone.fetch_all(connection, values)]
        if not ids:
            return {}

        found = session.execute(select(Contact).where(Contact.id.in_(ids))).scalars()
        return {("email", c.email_key) if c.email_key else ("phone", c.phone): c for c in found}

    def insert(self, session: Session, list_id: int, records: list[ContactRecord]) -> None:
        """Insert a new contact for each record."""
        if not records:
            return

        # The values that are the same for the whole batch are converted once.
        now = utcnow()
        unsubscribed = self._converters["unsubscribed"](False)
        created_at = self._converters["created_at"](now)
        updated_at = self._converters["updated_at"](now)
        serialize = self._serialize
        rows = [
            (
                list_id,
                record.email,
                record.email_key,
                record.first_name[:NAME_LENGTH],
                record.last_name[:NAME_LENGTH],
                record.phone,
                record.country,
                serialize(record.attributes),
                unsubscribed,
                created_at,
                updated_at,
            )
            for record in records
        ]
        self._insert.execute_many(session.connection(), rows)


def _insert_problems(session: Session, report_id: int, problems: list[Problem]) -> None:
    if not problems:
        return

    rows = [
        {
            "report_id": report_id,
            "line": problem.line,
            "kind": problem.kind,
            "field": problem.field,
            "value": problem.value[:255],
            "reason": problem.reason,
        }
        for problem in problems
    ]
    session.execute(insert(ImportProblem.__table__), rows)


def _update_contact(contact: Contact, record: ContactRecord) -> None:
    """Overwrite the contact with the imported values; empty cells keep what was there."""
    contact.email = record.email or contact.email
    contact.first_name = record.first_name[:NAME_LENGTH] or contact.first_name
    contact.last_name = record.last_name[:NAME_LENGTH] or contact.last_name
    contact.phone = record.phone or contact.phone
    contact.country = record.country or contact.country
    contact.attributes = {**(contact.attributes or {}), **record.attributes}


def fail_report(engine: Engine, report_id: int, error: str) -> None:
    """Close a report as failed after an error outside the import's own checks."""
    with Session(engine) as session:
        _fail(session, session.get(ImportReport, report_id), error)


def _fail(session: Session, report: ImportReport, error: str) -> ImportReport:
    session.rollback()
    report.status = "failed"
    report.error = error
    report.finished_at = utcnow()
    session.commit()
    log.warning("import %s into list %s failed: %s", report.id, report.list_id, error)
    return report


def _finish(session: Session, report: ImportReport) -> ImportReport:
    """Close the report; an import that loaded no contact is a failure, whatever the file held."""
    if report.added + report.updated == 0:
        report.status = "failed"
        report.error = (
            f"No contact was loaded: {report.rejected} rows rejected, {report.skipped} skipped. "
            "See the rows below for the reasons."
            if report.rows
            else "The file has a header but no data rows."
        )
    else:
        report.status = "finished"
    report.bytes_done = report.bytes_total
    report.finished_at = utcnow()
    session.commit()
    log.info(
        "import %s into list %s %s: %d rows, %d added, %d updated, %d skipped, %d rejected",
        report.id, report.list_id, report.status, report.rows, report.added,
        report.updated, report.skipped, report.rejected,
    )
    return report
