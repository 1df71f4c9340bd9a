"""Uploaded CSV files that wait between the steps of the import wizard.

An upload is stored in a folder of the instance folder under a random token,
never under the name the user's file had, with a small JSON file beside it
that records the list, the user and the original name. Starting the import
removes the JSON file (``claim_upload``), and the import removes the CSV file
when it ends. ``remove_expired_uploads`` removes the files of a wizard that
was never finished.

This module imports no Flask.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("messagehub.contacts")

# The folder under the instance folder that contains the uploads.
UPLOAD_FOLDER = "uploads"

# An upload not imported within this time is removed.
MAX_UPLOAD_AGE_SECONDS = 24 * 60 * 60

# secrets.token_hex(16) output; the uploads of earlier versions were uuid4 hex, which also matches.
TOKEN_PATTERN = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class PendingUpload:
    """A stored upload and what the wizard needs to import it.

    ``filename`` is the name of the user's file, shown in the wizard and the
    report only. ``default_country`` is an ISO 3166 alpha-2 code or None.
    """

    token: str
    list_id: int
    user_id: int
    filename: str
    default_country: str | None
    created_at: float

    def csv_path(self, folder: Path) -> Path:
        """Return the path of the uploaded file in ``folder``."""
        return folder / f"{self.token}.csv"


def save_upload(
    folder: Path, stream: BinaryIO, list_id: int, user_id: int, filename: str, default_country: str | None
) -> PendingUpload:
    """Copy an uploaded file into ``folder`` under a new token and record what it is for."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    upload = PendingUpload(
        token=secrets.token_hex(16),
        list_id=list_id,
        user_id=user_id,
        filename=filename[:255],
        default_country=default_country,
        created_at=time.time(),
    )

    # The metadata is written last: an upload without it is incomplete and is never found.
    try:
        _write_private(upload.csv_path(folder), stream)
        _write_private(_metadata_path(folder, upload.token), io.BytesIO(json.dumps(asdict(upload)).encode("utf-8")))
    except BaseException:
        discard_upload(folder, upload.token)
        raise

    return upload


def find_upload(folder: Path, token: str) -> PendingUpload | None:
    """Return the upload stored under ``token``, or None when it is unknown, incomplete or expired."""
    if not TOKEN_PATTERN.fullmatch(token):
        return None

    try:
        fields = json.loads(_metadata_path(folder, token).read_text(encoding="utf-8"))
        upload = PendingUpload(**fields)
    except (OSError, ValueError, TypeError):
        return None

    if _is_expired(upload.created_at, time.time()) or not upload.csv_path(folder).is_file():
        return None

    return upload


def claim_upload(folder: Path, token: str) -> bool:
    """Take the upload out of the wizard for an import; return False when another request took it first.

    The metadata is removed, so ``find_upload`` no longer returns the upload
    and a second click on "Import" cannot start a second import of the file.
    The file stays for the import, which removes it when it ends.
    """
    if not TOKEN_PATTERN.fullmatch(token):
        return False

    try:
        _metadata_path(folder, token).unlink()
    except FileNotFoundError:
        return False

    return True


def discard_upload(folder: Path, token: str) -> None:
    """Remove the file and the metadata stored under ``token``, if they are there."""
    if not TOKEN_PATTERN.fullmatch(token):
        return

    (folder / f"{token}.csv").unlink(missing_ok=True)
    _metadata_path(folder, token).unlink(missing_ok=True)


def remove_expired_uploads(folder: Path, now: float | None = None) -> int:
    """Remove the uploads older than MAX_UPLOAD_AGE_SECONDS and return how many files went.

    The age is taken from each file's modification time, so files without
    metadata, such as those of an upload cut off half-way, go too.
    """
    if not folder.is_dir():
        return 0

    now = time.time() if now is None else now
    removed = 0
    for path in folder.iterdir():
        if not (TOKEN_PATTERN.fullmatch(path.stem) and path.suffix in (".csv", ".json")):
            continue
        try:
            if _is_expired(path.stat().st_mtime, now):
                path.unlink()
                removed += 1
        except FileNotFoundError:
            # An import that ended at the same moment removed it.
            continue

    if removed:
        log.info("removed %d expired upload files from %s", removed, folder)

    return removed


def _metadata_path(folder: Path, token: str) -> Path:
    return folder / f"{token}.json"


def _is_expired(created_at: float, now: float) -> bool:
    return now - created_at > MAX_UPLOAD_AGE_SECONDS


def _write_private(path: Path, stream: BinaryIO) -> None:
    # Contact data is personal data, so only the app's own system user may
    # read it. O_EXCL because a new token never names an existing file.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as target:
        shutil.copyfileobj(stream, target)
