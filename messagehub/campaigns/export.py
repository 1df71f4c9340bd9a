"""A campaign's results as CSV, streamed row by row so any size fits in memory.

Flask-free: the view wraps ``result_csv`` in a streamed response.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone

from sqlalchemy import Engine, select

from messagehub.models import Contact, Delivery

HEADER = ("address", "first_name", "last_name", "status", "attempts", "provider_reply", "provider_id", "sent_at")

# Rows the database driver fetches at a time while the file streams.
BATCH_SIZE = 2000

# A spreadsheet runs a cell that starts with =, +, - or @ as a formula, even
# in a CSV file ("CSV injection"). OWASP ASVS requirement 1.2.10 adds a leading
# tab and NUL to that list, and this list also covers a leading carriage return.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\x00")

BOM = "\ufeff"

def neutralise(value: str) -> str:
    """Prefix a single quote to a cell a spreadsheet would run as a formula, so it shows as text."""
    if value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def iso_utc(moment: datetime | None) -> str:
    """Format a timestamp as ISO 8601 in UTC with a Z suffix; empty for None."""
    if moment is None:
        return ""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def result_rows(engine: Engine, campaign_id: int, batch_size: int = BATCH_SIZE) -> Iterator[tuple]:
    """Yield one tuple per delivery of the campaign, by status and in queue order within each status.

    One query reads the rows, so the file is a consistent snapshot even while
    the campaign runs. Its order follows the (campaign_id, status, id) index,
    so the database streams rows without sorting them first, and the driver
    fetches ``batch_size`` rows at a time.
    """
    query = (
        select(
            Delivery.address,
            Contact.first_name,
            Contact.last_name,
            Delivery.status,
            Delivery.attempts,
            Delivery.provider_reply,
            Delivery.provider_id,
            Delivery.sent_at,
        )
        .outerjoin(Contact, Contact.id == Delivery.contact_id)
        .where(Delivery.campaign_id == campaign_id)
        .order_by(Delivery.status, Delivery.id)
    )
    with engine.connect() as connection:
        result = connection.execution_options(stream_results=True, yield_per=batch_size).execute(query)
        for row in result:
            yield tuple(row)


def format_row(row: tuple) -> list[str]:
    """Turn one result row into neutralised CSV cells."""
    address, first_name, last_name, status, attempts, reply, provider_id, sent_at = row
    cells = [address, first_name, last_name, status, str(attempts), reply, provider_id]
    return [neutralise(cell or "") for cell in cells] + [iso_utc(sent_at)]


def result_csv(rows: Iterable[tuple], rows_per_chunk: int = 500) -> Iterator[str]:
    """Yield the CSV text in chunks: a byte order mark and header first, then the rows.

    The byte order mark makes Excel read the file as UTF-8 instead of the
    system's legacy code page.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    buffer.write(BOM)
    writer.writerow(HEADER)

    for count, row in enumerate(rows, start=1):
        writer.writerow(format_row(row))
        if count % rows_per_chunk == 0:
            yield _drain(buffer)

    yield _drain(buffer)


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text
