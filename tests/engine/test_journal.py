"""Log handler choice, journal fields and the native journal protocol, against a real datagram socket."""

from __future__ import annotations

import array
import io
import logging
import os
import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from messagehub.engine.journal import (
    CampaignFilter,
    JournalHandler,
    campaign_log_handler,
    encode_fields,
    journal_fields,
    stderr_is_journal,
    syslog_priority,
)


def decode_entry(data: bytes) -> dict[str, str]:
    """Parse a native-protocol datagram, independently of the code under test."""
    fields = {}
    position = 0
    while position < len(data):
        line_end = data.index(b"\n", position)
        line = data[position:line_end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            position = line_end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[line_end + 1 : line_end + 9])
            value = data[line_end + 9 : line_end + 9 + size]
            assert data[line_end + 9 + size : line_end + 10 + size] == b"\n"
            position = line_end + 10 + size
        fields[name.decode()] = value.decode()
    return fields


class JournalSocket:
    """A stand-in for journald's socket that reads datagrams and memfd entries."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(path)
        self.socket.settimeout(2.0)

    def receive(self) -> dict[str, str]:
        fds = array.array("i")
        data, ancillary, _, _ = self.socket.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if fds:
            with os.fdopen(fds[0], "rb") as memfd:
                memfd.seek(0)
                data = memfd.read()
        return decode_entry(data)

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def journal_socket() -> Iterator[JournalSocket]:
    with tempfile.TemporaryDirectory(prefix="mh-journal-") as directory:
        server = JournalSocket(str(Path(directory) / "socket"))
        yield server
        server.close()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own, without propagation, emptied after the test."""
    logger = logging.getLogger("messagehub.test_journal")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def journal_stream_of(stream) -> str:
    stat = os.fstat(stream.fileno())
    return f"{stat.st_dev}:{stat.st_ino}"


def test_stderr_not_journal_without_variable(tmp_path):
    with open(tmp_path / "stderr", "w") as stream:
        assert stderr_is_journal({}, stream) is False


def test_stderr_is_journal_when_stat_matches(tmp_path):
    with open(tmp_path / "stderr", "w") as stream:
        assert stderr_is_journal({"JOURNAL_STREAM": journal_stream_of(stream)}, stream) is True


def test_stderr_redirected_not_journal(tmp_path):
    with open(tmp_path / "journal", "w") as journal, open(tmp_path / "redirected", "w") as stream:
        assert stderr_is_journal({"JOURNAL_STREAM": journal_stream_of(journal)}, stream) is False


def test_stderr_malformed_variable(tmp_path):
    with open(tmp_path / "stderr", "w") as stream:
        assert stderr_is_journal({"JOURNAL_STREAM": "journal"}, stream) is False
        assert stderr_is_journal({"JOURNAL_STREAM": "12:"}, stream) is False


def test_stderr_without_file_descriptor():
    assert stderr_is_journal({"JOURNAL_STREAM": "1:2"}, io.StringIO()) is False


def test_handler_is_stderr_without_journal(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)

    handler = campaign_log_handler(42, "messagehub-campaign")

    assert type(handler) is logging.StreamHandler


def test_handler_is_journal_when_connected(monkeypatch, tmp_path, journal_socket, logger):
    stream = open(tmp_path / "stderr", "w")
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(stream))

    handler = campaign_log_handler(42, "messagehub-campaign", socket_path=journal_socket.path)
    logger.addHandler(handler)
    logger.info("settled delivery 3")
    entry = journal_socket.receive()
    stream.close()

    assert isinstance(handler, JournalHandler)
    assert entry["SYSLOG_IDENTIFIER"] == "messagehub-campaign"
    assert entry["MESSAGEHUB_CAMPAIGN"] == "42"


def test_stderr_line_carries_campaign(logger):
    stream = io.StringIO()
    handler = campaign_log_handler(42, "messagehub-campaign", environ={})
    handler.setStream(stream)
    logger.addHandler(handler)

    logger.warning("retrying in %d s", 5)

    assert stream.getvalue() == "WARNING messagehub.test_journal: retrying in 5 s [campaign=42]\n"


def test_syslog_priority():
    assert syslog_priority(logging.CRITICAL) == 2
    assert syslog_priority(logging.ERROR) == 3
    assert syslog_priority(logging.WARNING) == 4
    assert syslog_priority(logging.INFO) == 6
    assert syslog_priority(logging.DEBUG) == 7
    assert syslog_priority(logging.INFO + 5) == 6


def test_fields_of_record():
    record = logging.makeLogRecord(
        {"name": "messagehub.processor", "levelno": logging.ERROR, "lineno": 12, "campaign_id": 42}
    )

    fields = journal_fields(record, "error running campaign 42", "messagehub-campaign")

    assert fields["MESSAGE"] == "error running campaign 42"
    assert fields["PRIORITY"] == "3"
    assert fields["SYSLOG_IDENTIFIER"] == "messagehub-campaign"
    assert fields["MESSAGEHUB_CAMPAIGN"] == "42"
    assert fields["LOGGER"] == "messagehub.processor"
    assert fields["CODE_LINE"] == "12"


def test_fields_without_campaign():
    record = logging.makeLogRecord({"name": "sqlalchemy", "levelno": logging.INFO})

    assert "MESSAGEHUB_CAMPAIGN" not in journal_fields(record, "x", "messagehub-campaign")


def test_encode_simple_and_multiline():
    data = encode_fields({"MESSAGE": "line one\nline two", "PRIORITY": "6"})

    assert data == b"MESSAGE\n" + struct.pack("<Q", 17) + b"line one\nline two\nPRIORITY=6\n"


def test_encode_rejects_bad_name():
    with pytest.raises(ValueError, match="invalid journal field name '_PID'"):
        encode_fields({"_PID": "1"})
    with pytest.raises(ValueError, match="invalid journal field name 'message'"):
        encode_fields({"message": "x"})


def test_campaign_filter_fills_missing_id():
    record = logging.makeLogRecord({"name": "urllib3"})
    tagged = logging.makeLogRecord({"name": "messagehub.processor", "campaign_id": 7})

    CampaignFilter(42).filter(record)
    CampaignFilter(42).filter(tagged)

    assert record.campaign_id == 42
    assert tagged.campaign_id == 7


def test_journal_handler_sends_fields(journal_socket, logger):
    logger.addHandler(JournalHandler("messagehub-campaign", journal_socket.path))

    logger.info("started campaign %s: %d recipients", 42, 10, extra={"campaign_id": 42})
    entry = journal_socket.receive()

    assert entry["MESSAGE"] == "started campaign 42: 10 recipients"
    assert entry["MESSAGEHUB_CAMPAIGN"] == "42"
    assert entry["SYSLOG_IDENTIFIER"] == "messagehub-campaign"
    assert entry["PRIORITY"] == "6"


def test_journal_handler_tags_library_lines(journal_socket, logger):
    handler = JournalHandler("messagehub-campaign", journal_socket.path)
    handler.addFilter(CampaignFilter(42))
    logger.addHandler(handler)

    logging.getLogger("messagehub.test_journal.library").propagate = True
    logging.getLogger("messagehub.test_journal.library").warning("connection pool full")
    entry = journal_socket.receive()

    assert entry["MESSAGE"] == "connection pool full"
    assert entry["MESSAGEHUB_CAMPAIGN"] == "42"
    assert entry["LOGGER"] == "messagehub.test_journal.library"


def test_journal_handler_traceback(journal_socket, logger):
    logger.addHandler(JournalHandler("messagehub-campaign", journal_socket.path))

    try:
        raise ConnectionResetError("peer went away")
    except ConnectionResetError:
        logger.exception("error running campaign 42", extra={"campaign_id": 42})
    entry = journal_socket.receive()

    assert entry["MESSAGE"].startswith("error running campaign 42\nTraceback (most recent call last):\n")
    assert entry["MESSAGE"].endswith("ConnectionResetError: peer went away")
    assert entry["PRIORITY"] == "3"


def test_journal_handler_large_entry_as_memfd(journal_socket, logger):
    logger.addHandler(JournalHandler("messagehub-campaign", journal_socket.path))
    # Larger than the default socket send buffer (net.core.wmem_default, 208 KiB on Linux).
    text = "x" * (1 << 20)

    logger.info(text, extra={"campaign_id": 42})
    entry = journal_socket.receive()

    assert entry["MESSAGE"] == text
    assert entry["MESSAGEHUB_CAMPAIGN"] == "42"


def test_journal_handler_falls_back_to_stderr(tmp_path, logger):
    stream = io.StringIO()
    fallback = logging.StreamHandler(stream)
    logger.addHandler(JournalHandler("messagehub-campaign", str(tmp_path / "no-journal"), fallback))

    logger.error("cannot run campaign 42")

    assert stream.getvalue() == "cannot run campaign 42\n"
