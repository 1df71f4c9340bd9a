"""Configuration order, the generated secret key, and the sample config."""

from __future__ import annotations

import re
from pathlib import Path

from messagehub.config import default_config, load_config

REPO = Path(__file__).resolve().parent.parent


def test_defaults_apply(tmp_path):
    config = load_config(tmp_path)

    assert config["BATCH_SIZE"] == 100
    assert config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'messagehub.db'}"


def test_instance_file_overrides_defaults(tmp_path):
    (tmp_path / "config.py").write_text("BATCH_SIZE = 7\nlowercase_ignored = 1\n")

    config = load_config(tmp_path)

    assert config["BATCH_SIZE"] == 7
    assert "lowercase_ignored" not in config


def test_environment_overrides_instance_file(tmp_path, monkeypatch):
    (tmp_path / "config.py").write_text("BATCH_SIZE = 7\n")
    monkeypatch.setenv("MESSAGEHUB_BATCH_SIZE", "9")
    monkeypatch.setenv("MESSAGEHUB_MESSAGE_ID_DOMAIN", "mail.example.org")

    config = load_config(tmp_path)

    assert config["BATCH_SIZE"] == 9
    assert config["MESSAGE_ID_DOMAIN"] == "mail.example.org"


def test_overrides_win(tmp_path, monkeypatch):
    monkeypatch.setenv("MESSAGEHUB_BATCH_SIZE", "9")

    assert load_config(tmp_path, {"BATCH_SIZE": 3})["BATCH_SIZE"] == 3


def test_secret_key_generated_once(tmp_path):
    first = load_config(tmp_path)["SECRET_KEY"]
    second = load_config(tmp_path)["SECRET_KEY"]

    assert len(first) == 64
    assert first == second
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_sample_documents_every_key(tmp_path):
    sample = (REPO / "instance" / "config.sample.py").read_text()
    documented = set(re.findall(r"^# ([A-Z_]+) = ", sample, re.MULTILINE))

    assert set(default_config(tmp_path)) | {"SECRET_KEY"} <= documented
