"""Configuration order, the generated secret key, and the sample config."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from messagehub.config import ConfigError, default_config, load_config

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


def test_number_as_text_in_file_rejected(tmp_path):
    (tmp_path / "config.py").write_text('SMTP_CONNECTIONS = "six"\n')

    with pytest.raises(ConfigError) as error:
        load_config(tmp_path)

    assert "SMTP_CONNECTIONS must be a whole number such as 6, not 'six'" in str(error.value)
    assert str(tmp_path / "config.py") in str(error.value)


def test_fraction_in_environment_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("MESSAGEHUB_BATCH_SIZE", "2.5")

    with pytest.raises(ConfigError, match="BATCH_SIZE must be a whole number .* not 2.5 .*MESSAGEHUB_BATCH_SIZE"):
        load_config(tmp_path)


def test_whole_number_for_seconds_accepted(tmp_path):
    (tmp_path / "config.py").write_text("SMTP_TIMEOUT = 10\nSYSTEMD_USER_MODE = True\n")

    config = load_config(tmp_path)

    assert config["SMTP_TIMEOUT"] == 10
    assert config["SYSTEMD_USER_MODE"] is True


def test_boolean_for_number_rejected(tmp_path):
    (tmp_path / "config.py").write_text("ERROR_RATE_LIMIT = True\n")

    with pytest.raises(ConfigError, match="ERROR_RATE_LIMIT must be a number such as 0.25, not True"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('SUPERVISOR = "docker"', "SUPERVISOR must be one of auto, systemd, process, not 'docker'"),
        ('LOG_LEVEL = "LOUD"', "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not 'LOUD'"),
        ("LOG_LEVEL = 10", "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not 10"),
    ],
)
def test_unknown_choice_rejected(tmp_path, line, message):
    (tmp_path / "config.py").write_text(line + "\n")

    with pytest.raises(ConfigError) as error:
        load_config(tmp_path)

    assert message in str(error.value)


def test_choices_in_any_case(tmp_path):
    (tmp_path / "config.py").write_text('SUPERVISOR = "Process"\nLOG_LEVEL = "debug"\n')

    config = load_config(tmp_path)

    assert config["SUPERVISOR"] == "Process"
    assert config["LOG_LEVEL"] == "debug"


@pytest.mark.parametrize(
    ("command", "status"),
    [
        # 2 is in the campaign unit's RestartPreventExitStatus: a restart would fail the same way.
        (["-m", "messagehub.engine", "1"], 2),
        (["-c", "from messagehub.cli import main; main()", "db", "current"], 1),
    ],
)
def test_entry_points_report_invalid_setting(tmp_path, command, status):
    (tmp_path / "config.py").write_text('SMTP_CONNECTIONS = "six"\n')

    result = subprocess.run(
        [sys.executable, *command],
        env={"PATH": "/usr/bin:/bin", "MESSAGEHUB_INSTANCE_PATH": str(tmp_path)},
        capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == status
    assert "invalid configuration: SMTP_CONNECTIONS must be a whole number" in result.stderr
    assert "Traceback" not in result.stderr


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
