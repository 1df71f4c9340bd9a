"""Turn the rows of a CSV export into validated contact records and a problem report.

``open_csv`` reads the header and maps its columns to contact fields, by the
header names or by an explicit choice per column. ``CsvFile.rows`` then
streams one ``ContactRecord`` per accepted row and one ``Problem`` per
rejected, skipped or doubtful row, so the caller can write batches and show
progress. Only the keys of the contacts seen so far are kept in memory, to
find duplicates within the file. For large files, worker processes can
validate the cells while the calling process reads the file (``workers``).

This module imports no Flask and no database code.
"""

from __future__ import annotations

import itertools
import os
import re
import unicodedata
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO, NamedTuple

import phonenumbers
from email_validator import EmailNotValidError, validate_email

# email-validator 2.x lower-cases these role names (RFC 2142) in the local part.
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from messagehub.contacts import phone_validity
from messagehub.contacts.csvfile import CsvFileError, CsvTable, RawRecord, open_table
from messagehub.contacts.validation_pool import PendingChunk, ValidationPool

__all__ = [
    "ATTRIBUTE",
    "COLUMN_TARGETS",
    "ColumnMappingError",
    "ContactRecord",
    "CsvFile",
    "CheckedValues",
    "CsvFileError",
    "FIELDS",
    "IGNORE",
    "InvalidPhoneNumber",
    "Problem",
    "REJECTED",
    "SKIPPED",
    "WARNING",
    "attribute_names",
    "check_values",
    "check_values_chunk",
    "default_targets",
    "map_columns",
    "map_columns_as",
    "normalize_email",
    "normalize_header",
    "normalize_phone",
    "open_csv",
]

REJECTED = "rejected"
SKIPPED = "skipped"
WARNING = "warning"

FIELDS = ("email", "first_name", "last_name", "phone", "country")

# Column targets besides the fields. ATTRIBUTE stores a column as an attribute
# named after its header, and IGNORE drops it.
ATTRIBUTE = "attribute"
IGNORE = "ignore"
COLUMN_TARGETS = (*FIELDS, ATTRIBUTE, IGNORE)

# Header names as normalize_header() returns them, mapped to the field they fill.
FIELD_ALIASES = {
    "email": "email",
    "e_mail": "email",
    "email_address": "email",
    "mail": "email",
    "first_name": "first_name",
    "firstname": "first_name",
    "given_name": "first_name",
    "last_name": "last_name",
    "lastname": "last_name",
    "surname": "last_name",
    "family_name": "last_name",
    "phone": "phone",
    "mobile": "phone",
    "phone_number": "phone",
    "tel": "phone",
    "telephone": "phone",
    "country": "country",
    "country_code": "country",
}

# Names that Jinja reads as operators or constants, or binds itself, so
# {{ name }} could not show an attribute stored under them.
JINJA_RESERVED = frozenset({"and", "or", "not", "in", "is", "if", "else", "true", "false", "none", "loop", "self"})

# ISO 3166-1 alpha-2 codes: the regions in the phonenumbers metadata, plus the
# territories without a numbering plan of their own. The metadata also contains
# XK (Kosovo), AC (Ascension) and TA (Tristan da Cunha), which are in use too.
COUNTRY_CODES = frozenset(phonenumbers.SUPPORTED_REGIONS) | {"AQ", "BV", "GS", "HM", "PN", "TF", "UM"}

MAX_VALUE_LENGTH = 200

# An address whose local part is plain ASCII dot-atom text, the form almost
# every address in a contact list has.
SIMPLE_ADDRESS = re.compile(r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)@([^@]+)")

# RFC 5321 limit, which email-validator applies to the address as typed,
# normalised and with an IDNA-encoded domain, each counted in UTF-8 bytes.
MAX_ADDRESS_BYTES = 254

NO_CONTACT_REASON = "no email address or valid phone number"

# Rows a validation worker checks per task. Bigger chunks cost less pickling
# and fewer round trips, smaller ones let the first results arrive sooner.
WORKER_CHUNK_ROWS = 1000

# Chunks sent to each worker ahead of the one whose results are awaited, so
# a worker seldom waits for the reading process. With the chunk size this
# bounds the rows in flight, and so the memory, whatever the file's size.
WORKER_CHUNKS_AHEAD = 3


@dataclass(slots=True)
class ContactRecord:
    """One accepted row, with normalised values ready to store.

    ``email`` is email-validator's normalised address and ``email_key`` its
    case-folded form that duplicates are found by. Both are None for a row with
    a phone number only. ``phone`` is in E.164 form. ``country`` is an upper-case
    ISO 3166 alpha-2 code. ``attributes`` contains the other columns under their
    normalised header names, without empty values.
    """

    line: int
    email: str | None
    email_key: str | None
    first_name: str
    last_name: str
    phone: str | None
    country: str | None
    attributes: dict[str, str]


@dataclass(slots=True)
class Problem:
    """A rejected or skipped row, or a value dropped from an accepted row, with the reason.

    ``kind`` is REJECTED, SKIPPED or WARNING. ``field`` is the contact field or
    attribute name, or "" when the whole row is concerned. ``value`` is the
    offending cell, cut to 200 characters.
    """

    line: int
    kind: str
    field: str
    value: str
    reason: str


class ColumnMappingError(CsvFileError):
    """A chosen column mapping that cannot be imported, with a message telling the user what to change.

    ``positions`` are the 0-based positions of the columns concerned, empty
    when the mapping as a whole is at fault.
    """

    def __init__(self, message: str, positions: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.positions = positions


class InvalidPhoneNumber(ValueError):
    """A phone number that cannot be parsed or is not valid, with the reason as message."""


class CheckedValues(NamedTuple):
    """The verdict of check_values() on a row's email, phone and country cells.

    ``problems`` contains (kind, field, value, reason) tuples. A row is rejected
    when ``rejected`` is true, and then ``problems`` contains only the reason.
    """

    email: str | None
    phone: str | None
    country: str | None
    problems: tuple[tuple[str, str, str, str], ...]
    rejected: bool


class CsvFile:
    """A CSV contact list opened for import; close it or use it in a ``with`` block.

    ``mapping`` pairs each header cell, in file order, with the contact field or
    attribute name its values go to, or None for a column that is ignored.
    Header cells may repeat or be empty, so it is a list and not a dict.
    """

    def __init__(self, table: CsvTable, targets: Sequence[str] | None = None) -> None:
        self._table = table
        if targets is None:
            self.mapping: list[tuple[str, str | None]] = list(map_columns(table.columns))
            _require_contact_column(table.columns, self.mapping)
        else:
            self.mapping = map_columns_as(table.columns, targets)

    @property
    def encoding(self) -> str:
        """The codec the file was decoded with, as ``CsvTable.encoding`` lists them."""
        return self._table.encoding

    @property
    def delimiter(self) -> str:
        """The delimiter found in the header line: ",", ";" or a tab."""
        return self._table.delimiter

    @property
    def columns(self) -> list[str]:
        """The header cells as written, stripped, in file order."""
        return self._table.columns

    @property
    def header_line(self) -> int:
        """The physical line the header starts on, 1 unless blank lines or a ``sep=`` line precede it."""
        return self._table.header_line

    @property
    def bytes_read(self) -> int:
        """Bytes consumed by the running ``rows()``, for a progress bar."""
        return self._table.bytes_read

    @property
    def total_bytes(self) -> int:
        """Size of the file in bytes."""
        return self._table.total_bytes

    def rows(self, default_country: str | None = None, workers: int = 0) -> Iterator[ContactRecord | Problem]:
        """Validate each row and yield its record, its problems, or both, in file order.

        An accepted row yields its ContactRecord followed by a WARNING Problem
        for each value dropped from it. A rejected row or a duplicate of an
        earlier row yields one Problem. ``default_country`` (ISO 3166 alpha-2)
        is the region for national phone numbers in rows without a country.
        Each call reads the file again from the first row.

        With ``workers`` above 0, that many worker processes validate the
        email, phone and country cells while this process reads the file and
        finds duplicates. The items are the same, in the same order, but
        ``bytes_read`` runs ahead of the last item by up to
        ``(workers * WORKER_CHUNKS_AHEAD + 1) * WORKER_CHUNK_ROWS`` rows.
        The workers are started with the "spawn" method, which imports the
        caller's main module again in each of them: a script that calls this
        must guard its entry point with ``if __name__ == "__main__":``. When
        the workers fail, this process validates the rest of the rows.

        :raises ValueError: ``default_country`` is not a known region code.
        """
        checker = _RowChecker(self.mapping, _check_default_country(default_country))
        if workers > 0:
            return checker.check_all_in_workers(self._table.records(), workers)

        return checker.check_all(self._table.records())

    def close(self) -> None:
        """Close the file if ``open_csv`` opened it by path."""
        self._table.close()

    def __enter__(self) -> CsvFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_csv(source: str | os.PathLike[str] | BinaryIO, targets: Sequence[str] | None = None) -> CsvFile:
    """Open a CSV contact list by path or binary file object and map its columns.

    Without ``targets`` the header names decide, as ``map_columns`` does.
    Otherwise ``targets`` gives one of COLUMN_TARGETS per column, in file
    order, as ``map_columns_as`` takes them.

    :raises CsvFileError: the file is empty, binary or does not decode, or
        has no email or phone column.
    :raises ColumnMappingError: ``targets`` cannot be imported (a subclass
        of CsvFileError).
    """
    table = open_table(source)
    try:
        return CsvFile(table, targets)
    except BaseException:
        table.close()
        raise


def normalize_header(name: str, position: int) -> str:
    """Turn a header cell into an identifier usable as {{ name }} in a Jinja template.

    The name is stripped and lower-cased, and runs of characters that cannot be
    part of an identifier (spaces, dashes, a stray byte order mark) become "_".
    ``position`` (1-based) names a column whose header has no usable character.
    """
    lowered = name.replace("\ufeff", "").strip().lower()
    chars = [char if ("_" + char).isidentifier() else " " for char in lowered]
    identifier = "_".join("".join(chars).split())

    if not identifier:
        return f"column_{position}"
    if not identifier.isidentifier():
        # Starts with a digit or another character that may only follow.
        identifier = "_" + identifier
    if identifier in JINJA_RESERVED:
        identifier += "_"

    return identifier


def map_columns(columns: list[str]) -> list[tuple[str, str]]:
    """Pair each header cell with the field or attribute name its values go to.

    The first column that names a field fills it. A later column naming the
    same field, and every other column, becomes an attribute. An attribute
    name that is taken already gets a suffix "_2", "_3" and so on.
    """
    filled: set[str] = set()
    taken: set[str] = set(FIELDS)
    mapping = []
    for position, column in enumerate(columns, start=1):
        name = normalize_header(column, position)
        field = FIELD_ALIASES.get(name)
        if field is not None and field not in filled:
            key = field
            filled.add(field)
        else:
            key = _unique_name(name, taken)
            taken.add(key)
        mapping.append((column, key))

    return mapping


def map_columns_as(columns: list[str], targets: Sequence[str]) -> list[tuple[str, str | None]]:
    """Pair each header cell with the key its values go to, as chosen by the user.

    ``targets`` contains one of COLUMN_TARGETS per column. A field may be
    chosen for one column only. ATTRIBUTE stores the column under its name
    from ``attribute_names``, and IGNORE drops it (None in the mapping).

    :raises ValueError: ``targets`` has the wrong length or an unknown target.
    :raises ColumnMappingError: a field is chosen twice, or no column is
        mapped to email or phone.
    """
    if len(targets) != len(columns):
        raise ValueError(f"{len(targets)} targets given for {len(columns)} columns")

    unknown = sorted(set(targets) - set(COLUMN_TARGETS))
    if unknown:
        raise ValueError(f"unknown column targets {unknown}: use one of {', '.join(COLUMN_TARGETS)}")

    _reject_repeated_fields(columns, targets)
    if "email" not in targets and "phone" not in targets:
        raise ColumnMappingError(
            "no column is mapped to email or phone: choose one of them for the column with the addresses or numbers"
        )

    names = attribute_names(columns)
    mapping: list[tuple[str, str | None]] = []
    for column, target, name in zip(columns, targets, names):
        if target == IGNORE:
            key = None
        elif target == ATTRIBUTE:
            key = name
        else:
            key = target
        mapping.append((column, key))

    return mapping


def attribute_names(columns: list[str]) -> list[str]:
    """Return the name each column's values get when it is mapped to an attribute.

    The name is the normalised header, with a suffix "_2", "_3" and so on
    when a field or an earlier column has it. It does not depend on what the
    other columns are mapped to, so a form can show it before the choice.
    """
    taken: set[str] = set(FIELDS)
    names = []
    for position, column in enumerate(columns, start=1):
        name = _unique_name(normalize_header(column, position), taken)
        taken.add(name)
        names.append(name)

    return names


def default_targets(columns: list[str]) -> list[str]:
    """Return the target ``map_columns`` gives each column, as one of COLUMN_TARGETS."""
    return [key if key in FIELDS else ATTRIBUTE for _, key in map_columns(columns)]


def check_values(email_cell: str, phone_cell: str, country_cell: str, default_country: str | None) -> CheckedValues:
    """Validate and normalise the email, phone and country cells of one row.

    An invalid address rejects the row, even when a phone number is present.
    An invalid phone number rejects a row without an address and is dropped
    with a warning otherwise, and so is a country that is not an ISO code.
    """
    email = None
    if email_cell:
        try:
            email = normalize_email(email_cell)
        except EmailNotValidError as error:
            shown = _cut(email_cell)
            return _rejection("email", shown, f'email "{shown}": {error}')

    problems: list[tuple[str, str, str, str]] = []
    country = _read_country(country_cell, problems)

    phone = None
    if phone_cell:
        region = country if country in phonenumbers.SUPPORTED_REGIONS else default_country
        try:
            phone = normalize_phone(phone_cell, region)
        except InvalidPhoneNumber as error:
            if email is None:
                return _rejection("phone", _cut(phone_cell), f'{NO_CONTACT_REASON} (phone "{_cut(phone_cell)}": {error})')
            reason = f'phone "{_cut(phone_cell)}": {error}; the contact is stored without a phone number'
            problems.append((WARNING, "phone", _cut(phone_cell), reason))

    if email is None and phone is None:
        return _rejection("", "", NO_CONTACT_REASON)

    return CheckedValues(email, phone, country, tuple(problems), False)


def normalize_email(value: str) -> str:
    """Return email-validator's normalised form of ``value`` without a DNS check.

    :raises EmailNotValidError: the address is invalid, and the message gives the reason.
    """
    fast = _normalize_simple_email(value)
    if fast is not None:
        return fast

    return validate_email(value, check_deliverability=False).normalized


def normalize_phone(value: str, region: str | None) -> str:
    """Return the E.164 form of a phone number written in any usual form.

    ``region`` is the ISO 3166 alpha-2 code that national numbers are read in.
    A leading "00" is read as "+" in every region, because users write it so
    whatever the region's own international prefix is (011 in the US, 810 in
    Russia).

    :raises InvalidPhoneNumber: the value is not a valid number.
    """
    # NOTE: parse() takes about 12 µs a number on an idle 2-core AMD EPYC,
    # and several times that while other jobs share it (phonenumbers 9.0 is
    # pure Python). That is most of the validation time of a list with phone
    # numbers, hence the worker processes of CsvFile.rows().
    text = "+" + value[2:] if value.startswith("00") else value
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as error:
        raise InvalidPhoneNumber(_parse_error_reason(error, text, region)) from None

    if not phone_validity.is_valid_number(number):
        raise InvalidPhoneNumber(_invalid_number_reason(number, text, region))

    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class _RowChecker:
    """Check rows in file order and remember the key of each accepted contact.

    The first row with a contact key wins, and later ones are skipped as
    duplicates of it.
    """

    def __init__(self, mapping: list[tuple[str, str | None]], default_country: str | None) -> None:
        _keep_phone_patterns()
        keys = [key for _, key in mapping]
        self._default_country = default_country
        self._width = len(keys)
        self._email = _index(keys, "email")
        self._first_name = _index(keys, "first_name")
        self._last_name = _index(keys, "last_name")
        self._phone = _index(keys, "phone")
        self._country = _index(keys, "country")
        self._attributes = [
            (position, key) for position, key in enumerate(keys) if key is not None and key not in FIELDS
        ]
        # The only state that grows with the file: each contact key and the line it was first seen on.
        # NOTE: about 130 MiB for 1,000,000 contacts (tracemalloc, addresses of 30 characters).
        self._first_lines: dict[str, int] = {}

    def check_all(self, records: Iterator[RawRecord]) -> Iterator[ContactRecord | Problem]:
        """Yield the records and problems of each row in turn."""
        for record in records:
            split = self.split(record)
            if isinstance(split, Problem):
                yield split
                continue

            cells, values = split
            yield from self.conclude(record[0], cells, check_values(*values, self._default_country))

    def check_all_in_workers(self, records: Iterator[RawRecord], workers: int) -> Iterator[ContactRecord | Problem]:
        """Yield what ``check_all`` yields, with check_values() run by ``workers`` processes."""
        pool = ValidationPool(workers, check_values_chunk)
        pending: deque[tuple[list[RawRecord], list, PendingChunk]] = deque()
        try:
            for chunk in _chunks(records, WORKER_CHUNK_ROWS):
                splits = [self.split(record) for record in chunk]
                values = [split[1] for split in splits if not isinstance(split, Problem)]
                pending.append((chunk, splits, pool.submit(values, self._default_country)))
                if len(pending) > workers * WORKER_CHUNKS_AHEAD:
                    yield from self._conclude_chunk(pool, *pending.popleft())

            while pending:
                yield from self._conclude_chunk(pool, *pending.popleft())
        finally:
            # Reached also when the caller stops early: queued chunks are dropped.
            pool.close()

    def _conclude_chunk(
        self, pool: ValidationPool, chunk: list[RawRecord], splits: list, checking: PendingChunk
    ) -> Iterator[ContactRecord | Problem]:
        verdicts = iter(pool.result(checking))
        for record, split in zip(chunk, splits):
            if isinstance(split, Problem):
                yield split
            else:
                yield from self.conclude(record[0], split[0], next(verdicts))

    def split(self, record: RawRecord) -> tuple[list[str], tuple[str, str, str]] | Problem:
        """Return the row's cells and its email, phone and country cells, or the Problem that rejects it."""
        line, cells, error = record
        if error is not None:
            return Problem(line, REJECTED, "", "", error)

        if len(cells) != self._width:
            cells = self._fit_width(cells)
            if cells is None:
                return self._too_many_cells(line)

        return cells, (self._cell(cells, self._email), self._cell(cells, self._phone), self._cell(cells, self._country))

    def conclude(self, line: int, cells: list[str], checked: CheckedValues) -> list[ContactRecord | Problem]:
        """Return the row's record and warnings, or the Problem that rejects or skips it."""
        if checked.rejected:
            return [Problem(line, *checked.problems[0])]

        email_key = checked.email.casefold() if checked.email is not None else None
        key = email_key if email_key is not None else checked.phone
        first_line = self._first_lines.setdefault(key, line)
        if first_line != line:
            return [self._duplicate(line, cells, email_key is not None, first_line)]

        record = ContactRecord(
            line=line,
            email=checked.email,
            email_key=email_key,
            first_name=_name(cells, self._first_name),
            last_name=_name(cells, self._last_name),
            phone=checked.phone,
            country=checked.country,
            attributes={key: cells[position] for position, key in self._attributes if cells[position]},
        )

        return [record, *(Problem(line, *problem) for problem in checked.problems)]

    def _duplicate(self, line: int, cells: list[str], by_email: bool, first_line: int) -> Problem:
        field, position = ("email", self._email) if by_email else ("phone", self._phone)
        return Problem(line, SKIPPED, field, _cut(cells[position]), f"duplicate of line {first_line}")

    def _fit_width(self, cells: list[str]) -> list[str] | None:
        # Missing cells are empty. Extra cells are dropped only when empty, as
        # some spreadsheets end rows with delimiters.
        if len(cells) < self._width:
            return cells + [""] * (self._width - len(cells))
        if any(cells[self._width :]):
            return None

        return cells[: self._width]

    def _too_many_cells(self, line: int) -> Problem:
        reason = (
            f"the row has more values than the header has columns ({self._width}); "
            "quote values that contain the delimiter"
        )
        return Problem(line, REJECTED, "", "", reason)

    @staticmethod
    def _cell(cells: list[str], position: int | None) -> str:
        return cells[position] if position is not None else ""


def check_values_chunk(values: list[tuple[str, str, str]], default_country: str | None) -> list[CheckedValues]:
    """Return check_values() of each (email, phone, country) triple; the task of a validation worker."""
    _keep_phone_patterns()
    return [check_values(email, phone, country, default_country) for email, phone, country in values]


def _keep_phone_patterns() -> None:
    # phonenumbers compiles its patterns through the re module's cache (512
    # entries in Python 3.11), which a list from many countries can overflow.
    # Keeping them all cut validation from 20.1 to 18.8 µs a row (bench rows,
    # 2-core AMD EPYC). phonenumbers 9.0.43
    # has the function, and older releases may lack it.
    if hasattr(phonenumbers, "enable_pattern_cache"):
        phonenumbers.enable_pattern_cache()


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _rejection(field: str, value: str, reason: str) -> CheckedValues:
    return CheckedValues(None, None, None, ((REJECTED, field, value, reason),), True)


def _read_country(value: str, problems: list[tuple[str, str, str, str]]) -> str | None:
    if not value:
        return None

    code = value.upper()
    if code in COUNTRY_CODES:
        return code

    reason = f'country "{_cut(value)}" is not an ISO 3166 alpha-2 code such as DE; the contact is stored without a country'
    problems.append((WARNING, "country", _cut(value), reason))
    return None


def _reject_repeated_fields(columns: list[str], targets: Sequence[str]) -> None:
    for field in FIELDS:
        positions = tuple(position for position, target in enumerate(targets) if target == field)
        if len(positions) > 1:
            names = ", ".join(f'"{_column_label(columns, position)}"' for position in positions)
            message = f"more than one column is mapped to {field} ({names}): choose {field} for one column only"
            raise ColumnMappingError(message, positions)


def _column_label(columns: list[str], position: int) -> str:
    return columns[position] or f"column {position + 1}"


def _require_contact_column(columns: list[str], mapping: list[tuple[str, str | None]]) -> None:
    keys = {key for _, key in mapping}
    if "email" in keys or "phone" in keys:
        return

    listed = ", ".join(columns)
    raise CsvFileError(
        f"no email or phone column found; columns are: {listed}. "
        'The first row must name the columns, with one named "email" or "phone".'
    )


def _check_default_country(country: str | None) -> str | None:
    if country is None:
        return None

    code = country.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(
            f"default country {country!r} is not an ISO 3166 alpha-2 code with a phone numbering plan, such as DE"
        )

    return code


def _unique_name(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name

    suffix = 2
    while f"{name}_{suffix}" in taken:
        suffix += 1

    return f"{name}_{suffix}"


def _index(keys: list[str | None], field: str) -> int | None:
    return keys.index(field) if field in keys else None


def _name(cells: list[str], position: int | None) -> str:
    if position is None:
        return ""

    value = cells[position]
    if value.isascii() or unicodedata.is_normalized("NFC", value):
        return value

    return unicodedata.normalize("NFC", value)


def _cut(value: str) -> str:
    return value[:MAX_VALUE_LENGTH]


def _normalize_simple_email(value: str) -> str | None:
    # A shortcut that returns exactly what validate_email() would, or None to
    # let validate_email() decide and word the error. It covers addresses
    # whose local part validate_email() returns unchanged: ASCII dot-atom text
    # that is not an RFC 2142 role name. The domain verdict is cached because
    # a list repeats few domains. With email-validator 2.4 this takes about
    # 3 µs an address instead of 50 (bench/import_csv.py).
    # Longer values are invalid, and they must not fill the domain cache.
    if len(value) > MAX_ADDRESS_BYTES:
        return None

    match = SIMPLE_ADDRESS.fullmatch(value)
    if match is None:
        return None

    local_part, domain = match.groups()
    checked = _check_domain(domain)
    if checked is None or local_part.lower() in CASE_INSENSITIVE_MAILBOX_NAMES:
        return None

    normalized_domain, max_domain_bytes = checked
    if len(local_part) + 1 + max_domain_bytes > MAX_ADDRESS_BYTES:
        return None

    return f"{local_part}@{normalized_domain}"


@lru_cache(maxsize=4096)
def _check_domain(domain: str) -> tuple[str, int] | None:
    # validate_email() checks the domain apart from the local part, so a
    # probe address with a one-letter local part gets the same verdict and
    # normalised domain.
    try:
        probe = validate_email("x@" + domain, check_deliverability=False)
    except EmailNotValidError:
        return None

    forms = (domain, probe.domain, probe.ascii_domain)
    return probe.domain, max(len(form.encode("utf-8")) for form in forms)


def _parse_error_reason(error: phonenumbers.NumberParseException, text: str, region: str | None) -> str:
    kinds = phonenumbers.NumberParseException
    if error.error_type == kinds.INVALID_COUNTRY_CODE:
        if region is None and not text.startswith("+"):
            return "a national number needs a country: fill in the country column or choose a default country"
        return "the international calling code is unknown"
    if error.error_type == kinds.NOT_A_NUMBER:
        return "not a phone number"
    if error.error_type == kinds.TOO_LONG:
        return "too long for a phone number"

    return "too short for a phone number"


def _invalid_number_reason(number: phonenumbers.PhoneNumber, text: str, region: str | None) -> str:
    if text.startswith("+") or region is None:
        where = f"+{number.country_code}"
    else:
        where = region

    return f"not a valid number for {where}"
