"""Delivery settings kept in the database, and the sender they describe.

Flask-free: the web app's settings page and the campaign processes both use it.
The SMTP password is stored encrypted (``messagehub.secretbox``).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from messagehub import secretbox
from messagehub.engine.rate import SharedRate
from messagehub.models import ProviderAccount, Setting
from messagehub.provider_accounts import AccountProblem, open_account_sender
from messagehub.providers.base import BatchSender, Sender
from messagehub.providers.outbox import OutboxSender
from messagehub.providers.smtp import SmtpSender, SmtpSettings
from messagehub.providers.smtp_connections import SmtpConnections

SMTP_KEY = "smtp"
DELIVERY_METHODS = {
    "outbox": "Outbox (write .eml files under instance/)",
    "smtp": "SMTP server",
    "account": "Provider account",
}


def load_smtp_settings(session: Session, secret_key: str, timeout: float | None = None) -> SmtpSettings | None:
    """Return the saved SMTP settings with the password decrypted, or None if never saved."""
    if not smtp_configured(session):
        return None

    stored = dict(session.get(Setting, SMTP_KEY).value)
    token = stored.pop("password_encrypted", "")
    stored["password"] = secretbox.decrypt(secret_key, token) if token else ""
    if timeout is not None:
        stored.setdefault("timeout", timeout)
    known = SmtpSettings.__dataclass_fields__
    return SmtpSettings(**{name: value for name, value in stored.items() if name in known})


def save_smtp_settings(session: Session, secret_key: str, settings: SmtpSettings, keep_password: bool) -> None:
    """Store SMTP settings; with ``keep_password`` the stored password is left as it was."""
    row = session.get(Setting, SMTP_KEY)
    value = asdict(replace(settings, password=""))
    del value["password"]
    if keep_password and row is not None:
        value["password_encrypted"] = row.value.get("password_encrypted", "")
    elif settings.password:
        value["password_encrypted"] = secretbox.encrypt(secret_key, settings.password)

    if row is None:
        session.add(Setting(key=SMTP_KEY, value=value))
    else:
        row.value = value


SMTP_NOT_CONFIGURED = "SMTP is not configured: set the server in Settings first."


def smtp_configured(session: Session) -> bool:
    """Tell whether SMTP settings with a server were saved."""
    row = session.get(Setting, SMTP_KEY)
    return row is not None and bool(row.value.get("host"))


class SenderNotConfigured(Exception):
    """The campaign's delivery method has no settings yet."""


def open_sender(
    method: str,
    engine: Engine,
    config: dict,
    campaign_id: int | None = None,
    account_id: int | None = None,
    connections: int = 1,
) -> Sender | BatchSender | SmtpConnections:
    """Build the sender for a delivery method from the stored settings and ``config``.

    ``connections`` above 1 gives SMTP that many connections, for one process
    to drive in rounds (``SmtpConnections``); other methods ignore it.
    """
    if method == "account":
        with Session(engine) as session:
            account = session.get(ProviderAccount, account_id) if account_id is not None else None
            if account is None:
                raise SenderNotConfigured("The campaign's provider account is gone: choose another one.")
            try:
                return open_account_sender(account, config["SECRET_KEY"], float(config["PROVIDER_TIMEOUT"]))
            except AccountProblem as e:
                raise SenderNotConfigured(str(e)) from e

    if method == "outbox":
        directory = Path(config["OUTBOX_DIR"])
        if campaign_id is not None:
            directory = directory / f"campaign-{campaign_id}"
        return OutboxSender(directory)

    if method == "smtp":
        with Session(engine) as session:
            settings = load_smtp_settings(session, config["SECRET_KEY"], float(config["SMTP_TIMEOUT"]))
        if settings is None:
            raise SenderNotConfigured(SMTP_NOT_CONFIGURED)
        if connections > 1:
            return SmtpConnections(settings, connections)
        return SmtpSender(settings)

    raise SenderNotConfigured(f"unknown delivery method {method!r}; expected one of {', '.join(DELIVERY_METHODS)}")


def account_rate(engine: Engine, account_id: int | None) -> SharedRate | None:
    """Return the shared send rate of a provider account, or None without an account."""
    if account_id is None:
        return None
    with Session(engine) as session:
        account = session.get(ProviderAccount, account_id)
        if account is None:
            return None
        per_second = account.rate_per_second
    return SharedRate(engine, account_id, per_second)
