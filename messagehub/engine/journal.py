"""Log handlers for a campaign process: native journald entries under systemd, stderr lines otherwise.

Under systemd, each record goes to journald's native socket with structured
fields, among them ``MESSAGEHUB_CAMPAIGN``, so that
``journalctl MESSAGEHUB_CAMPAIGN=42`` lists every line of campaign 42. The
native protocol (systemd.journal-fields(7), "Native Journal Protocol" in the
systemd documentation) is a datagram of ``NAME=value`` lines, written here
without the C library so the engine needs no compiled dependency.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import struct
import sys
from collections.abc import Mapping
from typing import IO

JOURNAL_SOCKET = "/run/systemd/journal/socket"
CAMPAIGN_FIELD = "MESSAGEHUB_CAMPAIGN"

# journald accepts upper-case letters, digits and underscores, not starting
# with an underscore (those are trusted fields journald sets itself).
_FIELD_NAME = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")

# logging levels to syslog priorities (syslog(3)): a record between two
# levels takes the priority of the level below it.
_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
_DEBUG_PRIORITY = 7

_MEMFD_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


class CampaignFilter(logging.Filter):
    """Adds this process's campaign id to records logged without one, such as a library's."""

    def __init__(self, campaign_id: int) -> None:
        super().__init__()
        self.campaign_id = campaign_id

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "campaign_id", None) is None:
            record.campaign_id = self.campaign_id
        return True


def stderr_is_journal(environ: Mapping[str, str] | None = None, stream: IO | None = None) -> bool:
    """Return whether ``stream`` (stderr by default) is the journal stream systemd set up.

    systemd sets ``$JOURNAL_STREAM`` to ``device:inode`` of that stream. A
    child whose stderr was redirected inherits the variable, so the numbers
    must match the stream itself.
    """
    environ = os.environ if environ is None else environ
    stream = sys.stderr if stream is None else stream
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False

    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        # A stream without a file descriptor (closed, or replaced by a test) is not the journal.
        return False

    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


def syslog_priority(levelno: int) -> int:
    """Return the syslog priority for a logging level."""
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority

    return _DEBUG_PRIORITY


def journal_fields(record: logging.LogRecord, message: str, identifier: str) -> dict[str, str]:
    """Return the journal fields of a record whose formatted text is ``message``."""
    fields = {
        "MESSAGE": message,
        "PRIORITY": str(syslog_priority(record.levelno)),
        "SYSLOG_IDENTIFIER": identifier,
        "LOGGER": record.name,
        "CODE_FILE": record.pathname,
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName,
        "THREAD_NAME": record.threadName or "",
    }
    campaign_id = getattr(record, "campaign_id", None)
    if campaign_id is not None:
        fields[CAMPAIGN_FIELD] = str(campaign_id)

    return fields


def encode_fields(fields: Mapping[str, str]) -> bytes:
    """Encode fields as one native-protocol datagram.

    :raises ValueError: a field name journald would reject.
    """
    parts = []
    for name, value in fields.items():
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"invalid journal field name {name!r}: use A-Z, 0-9 and _, not starting with _")
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            # A value with a newline goes as NAME, newline, 64-bit little-endian length, raw bytes.
            parts.append(name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(name.encode() + b"=" + data + b"\n")

    return b"".join(parts)


class JournalHandler(logging.Handler):
    """Writes records to journald's native socket, with ``MESSAGEHUB_CAMPAIGN`` and ``SYSLOG_IDENTIFIER``.

    If journald cannot be reached (restarting, say), the record goes to
    ``fallback`` (stderr) as a plain line instead of being lost.
    """

    def __init__(
        self,
        identifier: str,
        socket_path: str = JOURNAL_SOCKET,
        fallback: logging.Handler | None = None,
        level: int = logging.NOTSET,
    ) -> None:
        super().__init__(level)
        self.identifier = identifier
        self.socket_path = socket_path
        self.fallback = fallback or stderr_handler()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            datagram = encode_fields(journal_fields(record, self.format(record), self.identifier))
            self._send(datagram)
        except OSError:
            self.fallback.handle(record)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self._socket.close()
        self.fallback.close()
        super().close()

    def _send(self, datagram: bytes) -> None:
        try:
            self._socket.sendto(datagram, self.socket_path)
        except OSError as e:
            if e.errno != errno.EMSGSIZE:
                raise
            self._send_as_memfd(datagram)

    def _send_as_memfd(self, datagram: bytes) -> None:
        # A datagram larger than the socket buffer (a long traceback) is
        # passed as a sealed memfd instead; journald reads the entry from it.
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, datagram)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _MEMFD_SEALS)
            rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))
            self._socket.sendmsg([], [rights], 0, self.socket_path)
        finally:
            os.close(fd)


class _CampaignFormatter(logging.Formatter):
    """Appends ``[campaign=ID]`` to lines of records that carry a campaign id."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        campaign_id = getattr(record, "campaign_id", None)
        return f"{line} [campaign={campaign_id}]" if campaign_id is not None else line


def stderr_handler(stream: IO | None = None) -> logging.Handler:
    """Return a handler writing one plain line per record to stderr."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_CampaignFormatter("%(levelname)s %(name)s: %(message)s"))
    return handler


def campaign_log_handler(
    campaign_id: int | None,
    identifier: str,
    environ: Mapping[str, str] | None = None,
    socket_path: str = JOURNAL_SOCKET,
) -> logging.Handler:
    """Return the handler for a campaign process: the journal when stderr is connected to it, else stderr.

    Every record passing the handler gets ``campaign_id`` when it has none.
    """
    if stderr_is_journal(environ):
        handler: logging.Handler = JournalHandler(identifier, socket_path)
    else:
        handler = stderr_handler()
    if campaign_id is not None:
        handler.addFilter(CampaignFilter(campaign_id))

    return handler
