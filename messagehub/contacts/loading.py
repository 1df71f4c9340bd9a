"""Loading an imported CSV file into a contact list, in batches, with a report.

Flask-free: the web app runs it in a thread and the CLI in the foreground.
"""

from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from messagehub.contacts.importer import ContactRecord, CsvFileError, Problem, open_csv
from messagehub.models import Contact, ImportProblem, ImportReport, utcnow

log = logging.getLogger("messagehub.contacts")

BATCH_ROWS = 1000


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
) -> ImportReport:
    """Import ``path`` into the report's list, committing each batch and the counts with it.

    A batch commits its contacts, its problems and the report's counters in one
    transaction, so an import that dies half-way leaves a report that matches
    what was loaded. ``targets`` is the column mapping chosen by the user, as
    ``open_csv`` takes it; without it the header names decide.
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
            try:
                _load_rows(session, report, csv_file, default_country, on_progress)
            except CsvFileError as e:
                return _fail(session, report, str(e))

        return _finish(session, report)


def _load_rows(session: Session, report: ImportReport, csv_file, default_country, on_progress) -> None:
    """Load the file batch by batch, committing each batch with the report's counters."""
    for batch in _batches(csv_file.rows(default_country), BATCH_ROWS):
        _load_batch(session, report, batch)
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


def _load_batch(session: Session, report: ImportReport, batch: list[ContactRecord | Problem]) -> None:
    records = [item for item in batch if isinstance(item, ContactRecord)]
    problems = [item for item in batch if isinstance(item, Problem)]

    existing = _existing_contacts(session, report.list_id, records)
    for record in records:
        contact = existing.get(_key(record))
        if contact is None:
            session.add(_new_contact(report.list_id, record))
            report.added += 1
        else:
            _update_contact(contact, record)
            report.updated += 1

    for problem in problems:
        session.add(
            ImportProblem(
                report_id=report.id,
                line=problem.line,
                kind=problem.kind,
                field=problem.field,
                value=problem.value[:255],
                reason=problem.reason,
            )
        )
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


def _existing_contacts(session: Session, list_id: int, records: list[ContactRecord]) -> dict:
    """Find the contacts of the list that these records update, by email key or phone."""
    keys = [r.email_key for r in records if r.email_key]
    phones = [r.phone for r in records if not r.email_key and r.phone]
    found = {}
    if keys:
        query = select(Contact).where(Contact.list_id == list_id, Contact.email_key.in_(keys))
        found.update({("email", c.email_key): c for c in session.execute(query).scalars()})
    if phones:
        query = select(Contact).where(Contact.list_id == list_id, Contact.email_key.is_(None), Contact.phone.in_(phones))
        found.update({("phone", c.phone): c for c in session.execute(query).scalars()})
    return found


# Longer names are cut to the column size (Contact.first_name and last_name).
NAME_LENGTH = 200


def _new_contact(list_id: int, record: ContactRecord) -> Contact:
    return Contact(
        list_id=list_id,
        email=record.email,
        email_key=record.email_key,
        first_name=record.first_name[:NAME_LENGTH],
        last_name=record.last_name[:NAME_LENGTH],
        phone=record.phone,
        country=record.country,
        attributes=dict(record.attributes),
    )


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
