"""Deployment configuration: defaults, then ``instance/config.py``, then ``MESSAGEHUB_*``.

Flask-free, so a campaign process reads exactly what the web app reads.
Every key is documented in ``instance/config.sample.py``.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable

ENV_PREFIX = "MESSAGEHUB_"

# Settings that take one of a few words, in any case.
SUPERVISOR_CHOICES = ("auto", "systemd", "process")
LOG_LEVEL_CHOICES = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_CHOICES = {"SUPERVISOR": SUPERVISOR_CHOICES, "LOG_LEVEL": LOG_LEVEL_CHOICES}

# Name of the systemd credential holding the secret key (LoadCredential=secret_key:...).
SECRET_KEY_CREDENTIAL = "secret_key"

# The instance folder when MESSAGEHUB_INSTANCE_PATH is not set: instance/ next
# to the package, as in a checkout. Installed units set the variable.
DEFAULT_INSTANCE_PATH = Path(__file__).resolve().parent.parent / "instance"


class ConfigError(ValueError):
    """A setting whose value is of the wrong kind, with where it was set."""


def default_config(instance_path: Path) -> dict[str, Any]:
    """Return the built-in defaults for an instance folder."""
    return {
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{instance_path / 'messagehub.db'}",
        "OUTBOX_DIR": str(instance_path / "outbox"),
        "HANDOVER_DIR": str(instance_path / "handover"),
        "BATCH_SIZE": 100,
        "MAX_ATTEMPTS": 5,
        "RETRY_BASE_SECONDS": 60.0,
        "RETRY_MAX_SECONDS": 3600.0,
        "SMTP_TIMEOUT": 30.0,
        "SMTP_CONNECTIONS": 6,
        "PROVIDER_TIMEOUT": 30.0,
        "ERROR_RATE_LIMIT": 0.25,
        "ERROR_RATE_WINDOW": 200,
        "MESSAGE_ID_DOMAIN": "",
        "IMPORT_MAX_BYTES": 512 * 1024 * 1024,
        "LOG_LEVEL": "INFO",
        "SUPERVISOR": "auto",
        "SYSTEMD_USER_MODE": False,
        "INSTALL_PREFIX": "/opt/messagehub",
        "INSTALL_VENV": "",
        "STATE_DIR": "/var/lib/messagehub",
        "RUN_USER": "messagehub",
        "PROCESS_STOP_TIMEOUT": 10.0,
    }


def instance_path_from_env() -> Path:
    """Return the instance folder, from ``MESSAGEHUB_INSTANCE_PATH`` or the default."""
    return Path(os.environ.get(ENV_PREFIX + "INSTANCE_PATH", DEFAULT_INSTANCE_PATH)).resolve()


def load_config(instance_path: Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge defaults, ``instance/config.py``, the environment and ``overrides``, in that order."""
    instance_path = instance_path or instance_path_from_env()
    defaults = default_config(instance_path)
    config = dict(defaults)
    config_file = instance_path / "config.py"
    layers = [
        (_read_instance_file(config_file), lambda key: f"in {config_file}"),
        (_read_environment(os.environ), lambda key: f"in the environment variable {ENV_PREFIX}{key}"),
        (overrides or {}, lambda key: "in the app's overrides"),
    ]
    for layer, source in layers:
        _check_numbers(layer, defaults, source)
        _check_choices(layer, source)
        config.update(layer)

    config.setdefault("SECRET_KEY", None)
    if not config["SECRET_KEY"]:
        # A SECRET_KEY set in config.py or the environment wins over the
        # credential. The web app has no credential and reads only that key,
        # and web app and campaign units must decrypt the same stored passwords.
        config["SECRET_KEY"] = read_secret_key_credential(os.environ) or ensure_secret_key(instance_path)
    config["INSTANCE_PATH"] = str(instance_path)
    return config


def read_secret_key_credential(environ: os._Environ | dict[str, str]) -> str | None:
    """Return the secret key systemd passed as a credential, or None when there is none.

    A unit with ``LoadCredential=secret_key:FILE`` finds the key in
    ``$CREDENTIALS_DIRECTORY/secret_key``; the key is only read, never copied elsewhere.

    :raises ValueError: the credential file is empty, since generating a new
        key instead would leave every stored password unreadable.
    """
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / SECRET_KEY_CREDENTIAL
    if not path.is_file():
        return None

    key = path.read_text().strip()
    if not key:
        raise ValueError(f"secret key credential {path} is empty: check the file named in LoadCredential=secret_key:")

    return key


def ensure_secret_key(instance_path: Path) -> str:
    """Read ``instance/secret_key``, creating it with a random key on first use."""
    key_file = instance_path / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()

    instance_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    # O_EXCL: two processes starting at once must not each write a different key.
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return key_file.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")

    return key


def _read_instance_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}

    namespace: dict[str, Any] = {"__file__": str(path)}
    exec(compile(path.read_bytes(), str(path), "exec"), namespace)  # noqa: S102 - the admin's own config file
    return {k: v for k, v in namespace.items() if k.isupper()}


def _check_numbers(layer: dict[str, Any], defaults: dict[str, Any], source: Callable[[str], str]) -> None:
    """Raise ConfigError for a setting of ``layer`` that should be a number like its default and is not."""
    for key, value in layer.items():
        default = defaults.get(key)
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue

        whole = isinstance(default, int)
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            kind = "a whole number" if whole else "a number"
            raise ConfigError(f"{key} must be {kind} such as {default!r}, not {value!r} ({source(key)})")


def _check_choices(layer: dict[str, Any], source: Callable[[str], str]) -> None:
    """Raise ConfigError for a setting of ``layer`` that should be one of a few words and is not."""
    for key, choices in _CHOICES.items():
        if key not in layer:
            continue

        value = layer[key]
        if not isinstance(value, str) or value.casefold() not in {choice.casefold() for choice in choices}:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, not {value!r} ({source(key)})")


def _read_environment(environ: os._Environ | dict[str, str]) -> dict[str, Any]:
    """Take ``MESSAGEHUB_KEY=value`` pairs; values are parsed as JSON when they parse."""
    config = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "INSTANCE_PATH":
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        config[name[len(ENV_PREFIX):]] = value

    return config
