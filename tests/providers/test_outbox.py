"""OutboxSender writing .eml files into a real temporary folder."""

from __future__ import annotations

import email
import email.policy
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from messagehub.providers.base import OutgoingMessage, PermanentFailure, ProviderUnavailable
from messagehub.providers.outbox import OutboxSender, message_file_stem

MakeMessage = Callable[..., OutgoingMessage]


def no_handover() -> None:
    """Stand in for the engine's commit when a test does not look at it."""


def files_in(folder: Path) -> list[str]:
    """Return the names of all entries in ``folder``, hidden ones included, sorted."""
    return sorted(os.listdir(folder))


def test_send_writes_eml(tmp_path: Path, make_message: MakeMessage) -> None:
    message = make_message("bob@example.com")

    result = OutboxSender(tmp_path).send(message, no_handover)

    path = tmp_path / "test-1@messagehub.example.eml"
    assert files_in(tmp_path) == [path.name]
    assert path.read_bytes() == message.data
    assert result.confirmed is True
    assert result.provider_id == path.name
    assert str(path) in result.reply


def test_send_readable_by_mail_parser(tmp_path: Path, make_message: MakeMessage) -> None:
    message = make_message("bob@example.com")

    OutboxSender(tmp_path).send(message, no_handover)

    content = (tmp_path / "test-1@messagehub.example.eml").read_bytes()
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert parsed["Message-ID"] == message.message_id
    assert parsed["To"] == "bob@example.com"
    assert parsed.get_content() == "Hello number 1.\r\n"


def test_send_into_subfolder(tmp_path: Path, make_message: MakeMessage) -> None:
    sender = OutboxSender(tmp_path, subfolder="campaign-42")

    sender.send(make_message(), no_handover)

    assert files_in(tmp_path) == ["campaign-42"]
    assert files_in(tmp_path / "campaign-42") == ["test-1@messagehub.example.eml"]


def test_subfolder_cannot_escape(tmp_path: Path, make_message: MakeMessage) -> None:
    sender = OutboxSender(tmp_path / "outbox", subfolder="../elsewhere")

    sender.send(make_message(), no_handover)

    assert files_in(tmp_path) == ["outbox"]
    assert sender.folder.parent == tmp_path / "outbox"


def test_handover_sees_complete_temporary_file(tmp_path: Path, make_message: MakeMessage) -> None:
    message = make_message()
    sender = OutboxSender(tmp_path)
    seen: list[tuple[bool, list[bytes]]] = []

    def commit() -> None:
        temporary = [(tmp_path / name).read_bytes() for name in files_in(tmp_path) if name.endswith(".tmp")]
        seen.append((sender.was_delivered(message.message_id), temporary))

    sender.send(message, commit)

    assert seen == [(False, [message.data])]
    assert sender.was_delivered(message.message_id) is True
    assert files_in(tmp_path) == ["test-1@messagehub.example.eml"]


def test_handover_error_leaves_nothing(tmp_path: Path, make_message: MakeMessage) -> None:
    message = make_message()
    sender = OutboxSender(tmp_path)

    def failing_commit() -> None:
        raise RuntimeError("database is locked")

    with pytest.raises(RuntimeError, match="database is locked"):
        sender.send(message, failing_commit)

    assert files_in(tmp_path) == []
    assert sender.was_delivered(message.message_id) is False


def test_was_delivered(tmp_path: Path, make_message: MakeMessage) -> None:
    sent = make_message()
    unsent = make_message()
    sender = OutboxSender(tmp_path)

    sender.send(sent, no_handover)

    assert sender.was_delivered(sent.message_id) is True
    assert sender.was_delivered(unsent.message_id) is False
    assert OutboxSender(tmp_path).was_delivered(sent.message_id) is True


def test_resend_replaces_file(tmp_path: Path, make_message: MakeMessage) -> None:
    first = make_message()
    second = make_message(message_id=first.message_id, data=b"Subject: second\r\n\r\nbody\r\n")
    sender = OutboxSender(tmp_path)

    sender.send(first, no_handover)
    sender.send(second, no_handover)

    assert files_in(tmp_path) == ["test-1@messagehub.example.eml"]
    assert (tmp_path / "test-1@messagehub.example.eml").read_bytes() == second.data


@pytest.mark.parametrize(
    "message_id",
    [
        "<../../etc/passwd@example.com>",
        "<a/b@example.com>",
        "<.hidden@example.com>",
        "<..>",
        "<name with spaces\tand\x00nul@example.com>",
        "<пример@пример.example>",
        "<" + "x" * 600 + "@example.com>",
    ],
)
def test_file_name_safe(tmp_path: Path, make_message: MakeMessage, message_id: str) -> None:
    sender = OutboxSender(tmp_path)
    message = make_message(message_id=message_id)

    sender.send(message, no_handover)

    [name] = files_in(tmp_path)
    assert "/" not in name
    assert not name.startswith(".")
    assert name.endswith(".eml")
    assert len(name.encode()) <= 255
    assert (tmp_path / name).read_bytes() == message.data
    assert sender.was_delivered(message_id) is True


def test_file_names_distinct() -> None:
    message_ids = [
        "<a/b@example.com>",
        "<a_b@example.com>",
        "<a%2Fb@example.com>",
        "<.x@example.com>",
        "<%2Ex@example.com>",
        "<" + "y" * 600 + "1@example.com>",
        "<" + "y" * 600 + "2@example.com>",
    ]

    stems = [message_file_stem(message_id) for message_id in message_ids]

    assert len(set(stems)) == len(message_ids)


def test_empty_message_id(tmp_path: Path, make_message: MakeMessage) -> None:
    with pytest.raises(PermanentFailure):
        OutboxSender(tmp_path).send(make_message(message_id="<>"), no_handover)

    assert files_in(tmp_path) == []


def test_unwritable_folder(tmp_path: Path, make_message: MakeMessage) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the outbox folder should be")
    called: list[bool] = []

    with pytest.raises(ProviderUnavailable) as failure:
        OutboxSender(blocker / "outbox").send(make_message(), lambda: called.append(True))

    assert "cannot write to outbox folder" in failure.value.reply
    assert called == []


def test_file_mode_private(tmp_path: Path, make_message: MakeMessage) -> None:
    OutboxSender(tmp_path).send(make_message(), no_handover)

    mode = (tmp_path / "test-1@messagehub.example.eml").stat().st_mode & 0o777
    assert mode == 0o600
