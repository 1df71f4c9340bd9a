"""Builders of test data through the app's own code paths."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

from flask import Flask

from messagehub.contacts.loading import load_file, start_report
from messagehub.delivery_settings import save_smtp_settings
from messagehub.extensions import db
from messagehub.models import Campaign, Contact, ContactList, Delivery, ImportReport, ProviderAccount
from messagehub.provider_accounts import KINDS, store_secrets
from messagehub.providers.smtp import SmtpSettings


def import_file(app: Flask, path: Path, list_name: str = "Customers", country: str | None = None) -> ImportReport:
    """Import a CSV file into a new list, the way the web app does, and return the report."""
    with app.app_context():
        contact_list = ContactList(name=list_name)
        db.session.add(contact_list)
        db.session.flush()
        report = start_report(db.session, contact_list.id, path.name, path.stat().st_size)
        db.session.commit()
        return load_file(db.engine, report.id, path, country)


def make_list(app: Flask, contacts: list[dict], name: str = "Hand made") -> int:
    """Create a list holding ``contacts`` (Contact fields) and return its id."""
    with app.app_context():
        contact_list = ContactList(name=name)
        db.session.add(contact_list)
        db.session.flush()
        for fields in contacts:
            address = fields.get("email")
            db.session.add(
                Contact(list_id=contact_list.id, email_key=address.casefold() if address else None, **fields)
            )
        db.session.commit()
        return contact_list.id


def make_campaign(app: Flask, list_id: int, **fields) -> int:
    """Create a draft campaign for ``list_id`` and return its id."""
    values = {
        "name": "Spring news",
        "subject": "News for {{ first_name | default('you') }}",
        "from_name": "MessageHub Tests",
        "from_email": "news@example.com",
        "text_body": "Hello {{ first_name | default('there') }},\nthis is the news.\n",
        "html_body": "<p>Hello {{ first_name | default('there') }},</p><p>this is the news.</p>",
        "delivery_method": "smtp",
        **fields,
    }
    with app.app_context():
        campaign = Campaign(list_id=list_id, **values)
        db.session.add(campaign)
        db.session.commit()
        return campaign.id


def use_smtp_server(app: Flask, port: int, **settings) -> None:
    """Point the app's SMTP settings at a test server on 127.0.0.1."""
    with app.app_context():
        save_smtp_settings(
            db.session,
            app.config["SECRET_KEY"],
            SmtpSettings(host="127.0.0.1", port=port, security="none", timeout=5.0, **settings),
            keep_password=False,
        )
        db.session.commit()


def make_account(app: Flask, kind: str, values: dict, rate: float, name: str | None = None) -> int:
    """Create a provider account of ``kind`` from field values, secrets encrypted, and return its id."""
    provider = KINDS[kind]
    secret_names = {spec.name for spec in provider.secret_fields}
    with app.app_context():
        account = ProviderAccount(
            name=name or f"{provider.label} test",
            kind=kind,
            settings={key: value for key, value in values.items() if key not in secret_names},
            secrets_encrypted="",
            rate_per_second=rate,
        )
        store_secrets(account, app.config["SECRET_KEY"], {key: values[key] for key in secret_names if key in values})
        db.session.add(account)
        db.session.commit()
        return account.id


def deliveries(app: Flask, campaign_id: int) -> list[Delivery]:
    """Return the campaign's delivery rows, detached from the session."""
    with app.app_context():
        rows = db.session.execute(db.select(Delivery).where(Delivery.campaign_id == campaign_id)).scalars().all()
        db.session.expunge_all()
        return rows


def campaign(app: Flask, campaign_id: int) -> Campaign:
    """Return the campaign row, detached from the session."""
    with app.app_context():
        row = db.session.get(Campaign, campaign_id)
        db.session.expunge(row)
        return row


def parse(data: bytes) -> EmailMessage:
    """Parse a received message with Python's modern email parser."""
    return email.message_from_bytes(data, policy=email.policy.default)
