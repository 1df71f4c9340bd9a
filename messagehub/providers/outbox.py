"""Deliver messages as .eml files into a folder, for trial runs and air-gapped setups.

Each message becomes ``<directory>/<subfolder>/<name>.eml``, where the name
comes from the Message-ID. Files hold the message bytes exactly as given, so
any mail client opens them. Each message is written to a temporary file
and renamed into place, so a file under its final name is always complete,
and ``was_delivered`` can report exactly which messages arrived.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import quote

from messagehub.providers.base import (
    HandoverCallback,
    OutgoingMessage,
    PermanentFailure,
    ProviderUnavailable,
    SendResult,
    TemporaryFailure,
)

log = logging.getLogger(__name__)

# Characters kept as they are in file names; every other character is
# percent-encoded, which keeps distinct Message-IDs on distinct names.
_SAFE_CHARACTERS = "@.+-_="

# Linux allows 255 bytes per file name. Longer names keep a prefix and add a
# SHA-256 digest of the whole Message-ID, so they stay distinct.
_MAX_STEM_BYTES = 200
_PREFIX_BYTES = 120


class OutboxSender:
    """Write each message as an .eml file instead of sending it.

    ``subfolder``, if given (a campaign's name or id, say), is one folder level
    below ``directory``. Files are created with mode 0600 because they contain
    recipients' addresses.
    """

    def __init__(self, directory: Path, subfolder: str | None = None):
        self.directory = Path(directory)
        self.folder = self.directory / safe_file_name(subfolder) if subfolder else self.directory

    def send(
        self, message: OutgoingMessage, on_handover: HandoverCallback, following: OutgoingMessage | None = None
    ) -> SendResult:
        """Write ``message`` to a temporary file, call ``on_handover``, then rename it into place.

        A message already written under the same Message-ID is replaced. An
        empty Message-ID raises ``PermanentFailure``, and a folder that cannot
        be written raises ``ProviderUnavailable``.
        """
        try:
            final_path = self.path_for(message.message_id)
        except ValueError as err:
            raise PermanentFailure(str(err)) from err

        temporary_path = self._write_temporary(message.data)

        try:
            on_handover()
        except BaseException:
            temporary_path.unlink(missing_ok=True)
            raise

        self._move_into_place(temporary_path, final_path)
        return SendResult(reply=f"written to {final_path}", provider_id=final_path.name)

    def was_delivered(self, message_id: str) -> bool:
        """Tell whether the file for ``message_id`` exists under its final name."""
        return self.path_for(message_id).is_file()

    def close(self) -> None:
        """Do nothing: no file stays open between messages."""

    def path_for(self, message_id: str) -> Path:
        """Return the final path of the message with ``message_id``."""
        return self.folder / f"{message_file_stem(message_id)}.eml"

    def _write_temporary(self, data: bytes) -> Path:
        """Write ``data`` to a new file in the outbox folder and flush it to disk."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            descriptor, name = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
        except OSError as err:
            raise ProviderUnavailable(f"cannot write to outbox folder {self.folder}: {err.strerror or err}") from err

        path = Path(name)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except OSError as err:
            path.unlink(missing_ok=True)
            raise ProviderUnavailable(f"cannot write to outbox folder {self.folder}: {err.strerror or err}") from err

        return path

    def _move_into_place(self, temporary_path: Path, final_path: Path) -> None:
        """Rename the finished file to its final name and make the rename durable."""
        try:
            os.replace(temporary_path, final_path)
            _fsync_directory(self.folder)
        except OSError as err:
            temporary_path.unlink(missing_ok=True)
            # Without the final name was_delivered() reports False, which
            # matches this failure: the engine may send the message again.
            log.error("error moving outbox file into place (%s): %s", final_path, err)
            raise TemporaryFailure(f"cannot rename outbox file to {final_path}: {err.strerror or err}") from err


def message_file_stem(message_id: str) -> str:
    """Return a file name, without extension, that stands for exactly one Message-ID.

    The angle brackets around the Message-ID are dropped. The result never
    contains a slash, never starts with a dot and fits in a Linux file name.
    """
    bare = message_id.strip()
    if bare.startswith("<") and bare.endswith(">"):
        bare = bare[1:-1]

    if not bare:
        raise ValueError(f"cannot name an outbox file after the empty Message-ID {message_id!r}")

    return safe_file_name(bare)


def safe_file_name(text: str) -> str:
    """Return ``text`` percent-encoded into a single file name component."""
    stem = quote(text, safe=_SAFE_CHARACTERS)
    # A leading dot would hide the file, and "." or ".." would leave the folder.
    if stem.startswith("."):
        stem = "%2E" + stem[1:]

    if len(stem) > _MAX_STEM_BYTES:
        digest = hashlib.sha256(text.encode()).hexdigest()
        stem = f"{stem[:_PREFIX_BYTES]}-{digest}"

    return stem


def _fsync_directory(directory: Path) -> None:
    """Flush a directory's entries, so that a rename in it survives a crash."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
