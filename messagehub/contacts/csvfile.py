"""Read a CSV export as spreadsheets write it: find its encoding, delimiter and header.

Only the bytes are interpreted here. What the columns mean is decided in
``messagehub.contacts.importer``. Files are read as a stream, so memory use does
not grow with the number of rows.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from _csv import Reader

# The bytes read to recognise a byte order mark or a binary file.
HEAD_SIZE = 64 * 1024

# The bytes decoded at a time when checking that the whole file decodes.
SCAN_CHUNK_SIZE = 1024 * 1024

# On a tie in the header line, the first of these wins.
DELIMITERS = (",", ";", "\t")

# UTF-32 comes first because its little-endian mark starts with the UTF-16 one.
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

ZIP_SIGNATURE = b"PK\x03\x04"

# Excel writes and reads a first line "sep=;" that names the delimiter.
SEPARATOR_LINE = re.compile(r"sep=(.)", re.IGNORECASE)

SAVE_AS_HINT = "save it again as CSV UTF-8 (in Excel: File > Save As > CSV UTF-8)"
EMPTY_FILE_MESSAGE = "the file is empty: it must start with a header row such as email,first_name,last_name"

# One record: its first physical line, its stripped cells, and the reason it
# could not be parsed (then the cells are empty).
RawRecord = tuple[int, list[str], str | None]


class CsvFileError(ValueError):
    """A problem with the whole file that stops the import, with a message telling the user what to fix."""


class CsvTable:
    """An open CSV file whose encoding, delimiter and header are known.

    ``encoding`` is the Python codec of the text after any byte order mark:
    ``utf-8``, ``utf-8-sig`` (UTF-8 with a byte order mark), ``utf-16-le``,
    ``utf-16-be``, ``utf-32-le``, ``utf-32-be`` or ``cp1252``. ``columns`` are
    the header cells, stripped, in file order. ``header_line`` is the physical
    line the header starts on (1 unless blank lines or a ``sep=`` line precede it).
    """

    def __init__(self, raw: BinaryIO, owned: bool) -> None:
        self._raw = raw
        self._owned = owned
        self._start = raw.tell()
        self.total_bytes = raw.seek(0, io.SEEK_END) - self._start
        self._bytes_done = 0
        self._reading = False

        self.encoding, self._bom_size = detect_encoding(raw, self._start)
        self.delimiter, self.columns, self.header_line, self._header_end = self._read_header()

    @property
    def bytes_read(self) -> int:
        """Bytes of the file consumed so far by ``records()``, for a progress bar."""
        if not self._reading:
            return self._bytes_done

        # The text layer reads ahead in chunks, so this runs up to one chunk early.
        return min(self._raw.tell() - self._start, self.total_bytes)

    def records(self) -> Iterator[RawRecord]:
        """Yield each non-blank record after the header with its first physical line.

        Cells are stripped of surrounding whitespace. A record whose quotes the
        csv module cannot parse is yielded with empty cells and the reason.
        Each call reads the file again from the first record, and only one
        may run at a time because all share the file position.
        """
        if self._reading:
            raise RuntimeError("the rows of this file are being read already: finish or close that iteration first")

        text = self._open_text()
        self._reading = True
        try:
            for _ in range(self._header_end):
                next(text)
            reader = csv.reader(text, delimiter=self.delimiter, strict=True)
            yield from _read_records(reader, self._header_end)
        finally:
            self._reading = False
            # Detached, the text layer leaves the file open when it is garbage-collected.
            if not self._raw.closed:
                self._bytes_done = min(self._raw.tell() - self._start, self.total_bytes)
                text.detach()

    def head(self, count: int) -> list[RawRecord]:
        """Return the first ``count`` records after the header, as ``records()`` yields them."""
        records = self.records()
        try:
            return list(itertools.islice(records, count))
        finally:
            records.close()

    def close(self) -> None:
        """Close the file if this table opened it; a caller's file stays open."""
        if self._owned:
            self._raw.close()

    def __enter__(self) -> CsvTable:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open_text(self) -> io.TextIOWrapper:
        # newline="" hands line breaks inside quoted values to the csv module as typed.
        self._raw.seek(self._start + self._bom_size)
        return io.TextIOWrapper(self._raw, encoding=self.encoding, newline="")

    def _read_header(self) -> tuple[str, list[str], int, int]:
        text = self._open_text()
        try:
            return _parse_header(text)
        finally:
            text.detach()


def open_table(source: str | os.PathLike[str] | BinaryIO) -> CsvTable:
    """Open a CSV file by path or binary file object and read its header.

    A file object is read from its current position and left open. One that
    cannot seek is first copied to a temporary file.

    :raises CsvFileError: the file is empty or binary, or does not decode.
    """
    if isinstance(source, (str, os.PathLike)):
        raw: BinaryIO = open(source, "rb")
        owned = True
    elif isinstance(source, io.TextIOBase):
        raise TypeError("open the CSV file in binary mode ('rb'): its encoding is detected from the bytes")
    elif source.seekable():
        raw, owned = source, False
    else:
        raw, owned = _spool(source), True

    try:
        return CsvTable(raw, owned)
    except BaseException:
        if owned:
            raw.close()
        raise


def detect_encoding(raw: BinaryIO, start: int) -> tuple[str, int]:
    """Return the codec of the file from ``start`` on and the size of its byte order mark.

    A byte order mark names the encoding. Without one, the file is UTF-8 when
    all of it decodes as UTF-8, else Windows-1252, which Excel writes for "CSV
    (Comma delimited)" in Western European locales. Every byte is decoded once
    here, before any row is imported, so an import never stops halfway on a
    bad byte.

    :raises CsvFileError: the file is empty or binary, or a line does not
        decode. The message names the line.
    """
    raw.seek(start)
    head = raw.read(HEAD_SIZE)
    marked = sniff_byte_order_mark(head)
    reject_binary(head, marked)

    if marked is None:
        return _detect_unmarked_encoding(raw, start), 0

    encoding, bom_size = marked
    failure = _first_decode_failure(raw, start + bom_size, encoding)
    if failure is not None:
        raise _undecodable(encoding, failure)

    return marked


def sniff_byte_order_mark(head: bytes) -> tuple[str, int] | None:
    """Return the codec named by the byte order mark ``head`` starts with, and the mark's size."""
    for mark, encoding in BYTE_ORDER_MARKS:
        if head.startswith(mark):
            return encoding, len(mark)

    return None


def reject_binary(head: bytes, marked: tuple[str, int] | None) -> None:
    """Raise CsvFileError when ``head`` is empty, a workbook or another binary file."""
    if not head.strip():
        raise CsvFileError(EMPTY_FILE_MESSAGE)

    if head.startswith(ZIP_SIGNATURE):
        raise CsvFileError(f"the file is an Excel workbook (.xlsx) or another ZIP archive, not CSV; {SAVE_AS_HINT}")

    # In UTF-16 and UTF-32 text most characters contain a NUL byte, in other text none does.
    is_wide = marked is not None and marked[0].startswith(("utf-16", "utf-32"))
    if b"\x00" in head and not is_wide:
        raise CsvFileError(
            "the file contains NUL bytes, so it is binary (such as an .xls workbook) "
            f"or UTF-16 without a byte order mark; {SAVE_AS_HINT}"
        )


def sniff_delimiter(line: str) -> str:
    """Return the delimiter that occurs most often outside quotes in a header line."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for char in line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1

    # max() keeps the first of equal counts, so a one-column header gets ",".
    return max(DELIMITERS, key=counts.__getitem__)


def _detect_unmarked_encoding(raw: BinaryIO, start: int) -> str:
    failure = _first_decode_failure(raw, start, "utf-8")
    if failure is None:
        return "utf-8"

    # Text that was valid UTF-8, and not only ASCII, before the bad byte is
    # UTF-8 with damage: read as Windows-1252 it would garble every name.
    if failure.saw_non_ascii:
        raise _undecodable("utf-8", failure)

    # NOTE: UTF-8 text after the first Windows-1252 byte is not detected: it
    # decodes without error and comes out garbled ("Ã©" for "é").
    failure = _first_decode_failure(raw, start, "cp1252")
    if failure is not None:
        raise _undecodable("cp1252", failure)

    return "cp1252"


class _DecodeFailure:
    """Line and byte offset of the first byte that fails to decode, and whether non-ASCII text came before it."""

    def __init__(self, line: int, offset: int, saw_non_ascii: bool) -> None:
        self.line = line
        self.offset = offset
        self.saw_non_ascii = saw_non_ascii


def _first_decode_failure(raw: BinaryIO, start: int, encoding: str) -> _DecodeFailure | None:
    raw.seek(start)
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    counter = _TextCounter()
    offset = start

    while chunk := raw.read(SCAN_CHUNK_SIZE):
        state = decoder.getstate()
        try:
            counter.add(decoder.decode(chunk))
        except UnicodeDecodeError as error:
            good_bytes = _decode_up_to_error(decoder, state, chunk, error, counter)
            return _DecodeFailure(counter.line, offset + good_bytes, counter.saw_non_ascii)
        offset += len(chunk)

    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        # The file ends inside a character.
        return _DecodeFailure(counter.line, offset, counter.saw_non_ascii)

    return None


def _decode_up_to_error(
    decoder: codecs.IncrementalDecoder,
    state: tuple[bytes, int],
    chunk: bytes,
    error: UnicodeDecodeError,
    counter: _TextCounter,
) -> int:
    # error.start also counts the bytes the decoder still held from the last chunk.
    good_bytes = max(error.start - len(state[0]), 0)
    decoder.setstate(state)
    counter.add(decoder.decode(chunk[:good_bytes]))

    return good_bytes


class _TextCounter:
    """The physical line reached in decoded text, with line breaks counted as the csv module counts them."""

    def __init__(self) -> None:
        self.line = 1
        self.saw_non_ascii = False
        self._after_cr = False

    def add(self, text: str) -> None:
        if not text:
            return

        # "\r\n" is one break, even when a chunk ends between its two characters.
        breaks = text.count("\n") + text.count("\r") - text.count("\r\n")
        if self._after_cr and text.startswith("\n"):
            breaks -= 1
        self.line += breaks
        self._after_cr = text.endswith("\r")
        self.saw_non_ascii = self.saw_non_ascii or not text.isascii()


def _undecodable(encoding: str, failure: _DecodeFailure) -> CsvFileError:
    labels = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "cp1252": "Windows-1252"}
    label = labels.get(encoding, encoding.upper())

    return CsvFileError(
        f"line {failure.line} is not valid {label} text (byte {failure.offset} of the file): "
        f"the file mixes text encodings or is damaged; {SAVE_AS_HINT}"
    )


def _parse_header(text: io.TextIOWrapper) -> tuple[str, list[str], int, int]:
    # Blank lines before the header are skipped, like blank rows after it.
    skipped = 0
    for line in text:
        if line.strip():
            break
        skipped += 1
    else:
        raise CsvFileError(EMPTY_FILE_MESSAGE)

    separator = SEPARATOR_LINE.fullmatch(line.strip())
    if separator:
        reader = csv.reader(text, delimiter=separator[1], strict=True)
        return _header_from(reader, separator[1], skipped + 1)

    delimiter = sniff_delimiter(line)
    reader = csv.reader(itertools.chain([line], text), delimiter=delimiter, strict=True)

    return _header_from(reader, delimiter, skipped)


def _header_from(reader: Reader, delimiter: str, skipped: int) -> tuple[str, list[str], int, int]:
    for line, cells, error in _read_records(reader, skipped):
        if error:
            raise CsvFileError(f"the header row on line {line} cannot be read: {error}")

        return delimiter, cells, line, skipped + reader.line_num

    raise CsvFileError(EMPTY_FILE_MESSAGE)


def _read_records(reader: Reader, line_offset: int) -> Iterator[RawRecord]:
    # This loop runs once per row of an import, so it makes no call it can avoid.
    while True:
        first_line = line_offset + reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield first_line, [], _malformed_reason(error, first_line, line_offset + reader.line_num)
            continue

        cells = [cell.strip() for cell in row]
        if any(cells):
            yield first_line, cells, None


def _malformed_reason(error: csv.Error, first_line: int, last_line: int) -> str:
    message = str(error)
    if message == "unexpected end of data":
        return (
            f"a quoted value opened in this row is not closed before the end of the file, "
            f"so lines {first_line} to {last_line} were read as one row; check its quotes"
        )

    if "expected after" in message:
        return f"text follows the closing quote of a value ({message}); check the row's quotes"

    return f"the row cannot be read as CSV: {message}"


def _spool(source: BinaryIO) -> BinaryIO:
    copy = tempfile.TemporaryFile()
    shutil.copyfileobj(source, copy)
    copy.seek(0)

    return copy
