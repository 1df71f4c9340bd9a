"""The secret key passed as a systemd credential ($CREDENTIALS_DIRECTORY/secret_key)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from messagehub.config import load_config
from messagehub.database import create_db_engine
from messagehub.delivery_settings import load_smtp_settings, save_smtp_settings
from messagehub.providers.smtp import SmtpSettings

CREDENTIAL_KEY = "5f0c2d8e41a7b3c9e6d1f0a2b4c8e7d9a1b3c5d7e9f1a3b5c7d9e1f3a5b7c9d1"


@pytest.fixture
def credentials(tmp_path, monkeypatch):
    """A credentials folder holding secret_key, as systemd sets one up for LoadCredential=."""
    directory = tmp_path / "credentials"
    directory.mkdir()
    (directory / "secret_key").write_text(CREDENTIAL_KEY + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


def test_key_from_credential(credentials, instance_path):
    config = load_config(instance_path)

    assert config["SECRET_KEY"] == CREDENTIAL_KEY


def test_credential_key_not_written(credentials, instance_path):
    load_config(instance_path)

    assert list(instance_path.iterdir()) == []


def test_credential_before_key_file(credentials, instance_path):
    (instance_path / "secret_key").write_text("key-from-the-instance-folder\n")

    assert load_config(instance_path)["SECRET_KEY"] == CREDENTIAL_KEY


def test_configured_key_before_credential(credentials, instance_path, monkeypatch):
    monkeypatch.setenv("MESSAGEHUB_SECRET_KEY", "key-from-the-environment")

    assert load_config(instance_path)["SECRET_KEY"] == "key-from-the-environment"


def test_directory_without_secret_key(tmp_path, instance_path, monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))

    key = load_config(instance_path)["SECRET_KEY"]

    assert key == (instance_path / "secret_key").read_text().strip()


def test_empty_credential_rejected(credentials, instance_path):
    (credentials / "secret_key").write_text("\n")

    with pytest.raises(ValueError, match="secret key credential .* is empty"):
        load_config(instance_path)
    assert not (instance_path / "secret_key").exists()


def test_credential_key_decrypts_smtp_password(app, credentials, tmp_path):
    # The web app saved the password with the key in its instance folder;
    # the campaign unit reads the same key through its credential.
    (credentials / "secret_key").write_text(app.config["SECRET_KEY"] + "\n")
    engine = create_db_engine(app.config["SQLALCHEMY_DATABASE_URI"])
    settings = SmtpSettings(host="127.0.0.1", port=2525, security="none", username="news", password="s3cret pass")
    with Session(engine) as session:
        save_smtp_settings(session, app.config["SECRET_KEY"], settings, keep_password=False)
        session.commit()
    unit_instance = tmp_path / "unit-instance"
    unit_instance.mkdir()

    config = load_config(unit_instance)
    with Session(engine) as session:
        loaded = load_smtp_settings(session, config["SECRET_KEY"])
    engine.dispose()

    assert loaded.password == "s3cret pass"
    assert not (unit_instance / "secret_key").exists()
