"""The handover journal: a small file per sending process that records which claimed deliveries it wrote out.

A per-message sender (SMTP) claims a whole batch of deliveries in one
database transaction, then sends them one by one. Just before the write that
hands a message over (the one ending in the final dot), the process appends
the delivery's id to its journal. An append is one ``write`` system call,
which outlives a SIGKILL of the process because the data is already in the
kernel's page cache. A database commit per message cost several times the
send itself.

After the server's 2xx reply, it records that the message was accepted, so
the outcomes the process keeps in memory until the next commit survive it
too. That record goes out with the next handover, in the same write, or at
the end of the batch. A process killed in between leaves the message handed
over: the next run counts it as sent, unconfirmed, and never sends it again.

When a run starts, it reads what killed runs left. A delivery still in
"sending" that a journal lists as accepted was sent. One listed as handed
over may have reached the server: it is not sent again. One that journals list only as claimed was
never written out: it is queued again. One that no journal here mentions is
treated as handed over, because the process that claimed it wrote its
journal somewhere this one cannot see.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

_CLAIMED = b"c"
_HANDED_OVER = b"h"
_ACCEPTED = b"s"


@dataclass
class JournalState:
    """The entries that the journals of earlier runs of a campaign contain."""

    claimed: set[int] = field(default_factory=set)
    handed_over: set[int] = field(default_factory=set)
    accepted: set[int] = field(default_factory=set)
    paths: list[Path] = field(default_factory=list)

    def never_written(self, delivery_id: int) -> bool:
        """Return whether a journal claimed the delivery and none handed it over."""
        return delivery_id in self.claimed and delivery_id not in self.handed_over


class HandoverJournal:
    """The journal of one sending process for one campaign, in ``directory/campaign-ID/``."""

    def __init__(self, directory: Path | str, campaign_id: int):
        self.folder = campaign_folder(directory, campaign_id)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The process id names the file for an operator; the random part
        # keeps two runs of one process (foreground campaigns) apart.
        self.path = self.folder / f"{os.getpid()}-{secrets.token_hex(4)}.journal"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def claiming(self, delivery_ids: list[int]) -> None:
        """Record the deliveries this process is about to claim, before the claim commits."""
        if delivery_ids:
            self._write(_line(_CLAIMED, delivery_ids))

    def handing_over(self, delivery_id: int, accepted: Collection[int] = ()) -> None:
        """Record that the delivery's message is about to be written out, after the acceptances of ``accepted``.

        One write for both saves a system call per message.
        """
        entry = _HANDED_OVER + b" %d" % delivery_id
        if accepted:
            entry = _line(_ACCEPTED, accepted) + b"\n" + entry
        self._write(entry)

    def accepted(self, delivery_ids: Collection[int]) -> None:
        """Record that the server accepted the deliveries' messages, until their outcomes are committed."""
        if delivery_ids:
            self._write(_line(_ACCEPTED, delivery_ids))

    def clear(self) -> None:
        """Forget every entry, once their outcomes are committed to the database."""
        os.ftruncate(self._fd, 0)

    def close(self) -> None:
        """Close and delete the journal: the caller committed every outcome it holds."""
        if self._fd < 0:
            return
        os.close(self._fd)
        self._fd = -1
        self.path.unlink(missing_ok=True)

    def _write(self, line: bytes) -> None:
        data = line + b"\n"
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"handover journal {self.path}: wrote {written} of {len(data)} bytes")


def _line(kind: bytes, delivery_ids: Collection[int]) -> bytes:
    """Return one journal line of ``kind`` naming ``delivery_ids``."""
    return kind + b" " + b" ".join(b"%d" % delivery_id for delivery_id in delivery_ids)


def campaign_folder(directory: Path | str, campaign_id: int) -> Path:
    """Return the folder holding the journals of a campaign."""
    return Path(directory) / f"campaign-{campaign_id}"


def read_journals(directory: Path | str, campaign_id: int) -> JournalState:
    """Read every journal that earlier runs of the campaign left in ``directory``."""
    state = JournalState()
    folder = campaign_folder(directory, campaign_id)
    if not folder.is_dir():
        return state

    for path in sorted(folder.glob("*.journal")):
        state.paths.append(path)
        # Only whole lines count: a write cut short (a full disk) leaves a
        # last line without its newline, whose final number may be cut too.
        for line in path.read_bytes().split(b"\n")[:-1]:
            _read_line(line, state)

    return state


def _read_line(line: bytes, state: JournalState) -> None:
    kind, _, ids = line.partition(b" ")
    numbers = {int(part) for part in ids.split() if part.isdigit()}
    if kind == _CLAIMED:
        state.claimed |= numbers
    elif kind == _HANDED_OVER:
        state.handed_over |= numbers
    elif kind == _ACCEPTED:
        state.accepted |= numbers


def remove_journals(state: JournalState) -> None:
    """Delete the journals read into ``state``, once the deliveries they name are settled."""
    for path in state.paths:
        path.unlink(missing_ok=True)
