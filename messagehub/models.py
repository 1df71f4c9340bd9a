"""Database tables, declared with plain SQLAlchemy.

This module imports neither Flask nor Flask-SQLAlchemy, so the campaign engine
can use the same tables from a process of its own. The web app binds them
through ``messagehub.extensions.db``.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp stored as naive UTC and read back as aware UTC.

    SQLite keeps no time zone, so aware values would come back naive there and
    compare wrongly with ``utcnow()``. Naive UTC behaves the same on SQLite and
    PostgreSQL.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    """Declarative base shared by the web app and the campaign engine."""


class Role(str, enum.Enum):
    """Permission level of a user: admins manage users, operators launch, viewers read."""

    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


class CampaignStatus(str, enum.Enum):
    """Lifecycle of a campaign; transitions live in ``messagehub.campaigns.status``."""

    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    FAILED = "failed"


class Channel(str, enum.Enum):
    """Kind of message a campaign sends: email or text messages."""

    EMAIL = "email"
    SMS = "sms"


class DeliveryStatus(str, enum.Enum):
    """State of one recipient's message within a campaign.

    ``SENDING`` means the message was handed over to the provider past the
    point of no return (for SMTP: the content and final dot are being written), so a
    run that resumes must not send it again.
    """

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"


class User(Base):
    """A person who logs in to the web app."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.OPERATOR.value)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    # Flask-Login reads these four members. They are written out here instead
    # of inheriting UserMixin so that this module stays free of Flask.
    @property
    def is_active(self) -> bool:
        return not self.disabled

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return str(self.id)

    def has_role(self, *roles: Role | str) -> bool:
        """Return whether the user has one of ``roles``; admins have every role."""
        return self.role == Role.ADMIN.value or self.role in {Role(r).value for r in roles}


class ContactList(Base):
    """A named list of contacts that campaigns are sent to."""

    __tablename__ = "contact_lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    contacts: Mapped[list[Contact]] = relationship(
        back_populates="contact_list", cascade="all, delete-orphan", passive_deletes=True
    )


class Contact(Base):
    """One person on a list, with normalised address and number.

    ``email_key`` is the case-folded address that duplicates are found by.
    ``attributes`` keeps every imported column that is not a known field.
    """

    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("list_id", "email_key", name="uq_contacts_list_email"),
        Index("ix_contacts_list_phone", "list_id", "phone"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("contact_lists.id", ondelete="CASCADE"), index=True)
    email: Mapped[str | None] = mapped_column(String(320))
    email_key: Mapped[str | None] = mapped_column(String(320))
    first_name: Mapped[str] = mapped_column(String(200), default="")
    last_name: Mapped[str] = mapped_column(String(200), default="")
    phone: Mapped[str | None] = mapped_column(String(20))
    country: Mapped[str | None] = mapped_column(String(2))
    attributes: Mapped[dict] = mapped_column(JSON, default=dict)
    unsubscribed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    contact_list: Mapped[ContactList] = relationship(back_populates="contacts")


class ImportReport(Base):
    """The outcome of one CSV import, kept so the user can read it later."""

    __tablename__ = "import_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("contact_lists.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    # running, finished (at least one row loaded) or failed (nothing loaded).
    status: Mapped[str] = mapped_column(String(16), default="running")
    encoding: Mapped[str] = mapped_column(String(32), default="")
    delimiter: Mapped[str] = mapped_column(String(8), default="")
    bytes_total: Mapped[int] = mapped_column(Integer, default=0)
    bytes_done: Mapped[int] = mapped_column(Integer, default=0)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    added: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    warnings: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Moves with every committed batch; a running import that stops moving died with its process.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def stalled(self) -> bool:
        """Tell whether a running import has made no progress for five minutes."""
        return self.status == "running" and (utcnow() - self.updated_at).total_seconds() > 300

    problems: Mapped[list[ImportProblem]] = relationship(
        back_populates="report", cascade="all, delete-orphan", passive_deletes=True, order_by="ImportProblem.line"
    )


class ImportProblem(Base):
    """A row of an import that was rejected, skipped, or loaded with a warning."""

    __tablename__ = "import_problems"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("import_reports.id", ondelete="CASCADE"), index=True)
    line: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    field: Mapped[str] = mapped_column(String(64), default="")
    value: Mapped[str] = mapped_column(String(255), default="")
    reason: Mapped[str] = mapped_column(Text)

    report: Mapped[ImportReport] = relationship(back_populates="problems")


class ProviderAccount(Base):
    """Credentials and limits of one account at an email or SMS API provider.

    ``settings`` contains what may be shown (region, account SID, base URL);
    ``secrets_encrypted`` contains the API keys and tokens, encrypted by
    ``messagehub.secretbox``. ``rate_per_second`` is shared by every campaign
    that sends through the account, in whatever process it runs.
    """

    __tablename__ = "provider_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    secrets_encrypted: Mapped[str] = mapped_column(Text, default="")
    rate_per_second: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class RateSchedule(Base):
    """When the next message of a provider account may leave, shared by all its senders.

    ``next_at`` is seconds since the epoch. Each sender moves it forward by the
    time its messages take at the account's rate, in one atomic UPDATE, so
    processes on several hosts share the rate without talking to each other.
    """

    __tablename__ = "rate_schedules"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("provider_accounts.id", ondelete="CASCADE"), primary_key=True
    )
    next_at: Mapped[float] = mapped_column(Float, default=0.0)


class OptOut(Base):
    """An address or number that asked not to be sent to again, by any campaign."""

    __tablename__ = "opt_outs"
    __table_args__ = (UniqueConstraint("channel", "address", name="uq_opt_outs_channel_address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(8))
    address: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(Text, default="")
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Campaign(Base):
    """An email or SMS campaign: its content, its audience and its progress counters.

    An SMS campaign keeps its message template in ``text_body`` and its sender
    (number, alphanumeric id or messaging service) in ``sms_sender``.
    """

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    list_id: Mapped[int | None] = mapped_column(ForeignKey("contact_lists.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.DRAFT.value, index=True)
    subject: Mapped[str] = mapped_column(String(998), default="")
    from_name: Mapped[str] = mapped_column(String(200), default="")
    from_email: Mapped[str] = mapped_column(String(320), default="")
    reply_to: Mapped[str] = mapped_column(String(320), default="")
    html_body: Mapped[str] = mapped_column(Text, default="")
    text_body: Mapped[str] = mapped_column(Text, default="")
    delivery_method: Mapped[str] = mapped_column(String(16), default="outbox")
    channel: Mapped[str] = mapped_column(String(8), default=Channel.EMAIL.value, server_default="email")
    sms_sender: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # Set when delivery_method is "account": the API account the campaign sends through.
    provider_account_id: Mapped[int | None] = mapped_column(
        ForeignKey("provider_accounts.id", ondelete="SET NULL")
    )
    # "background" (a unit or process of its own) or "foreground" (a thread of the web app).
    run_mode: Mapped[str | None] = mapped_column(String(16))
    # Moved by the running engine every few seconds; a foreground run whose
    # heartbeat stopped died with its web process.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    total: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Fingerprint of the templates, list and contacts that the last passing
    # audience check of this draft saw (campaigns.service.audience_fingerprint).
    audience_checked: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    contact_list: Mapped[ContactList | None] = relationship()
    provider_account: Mapped[ProviderAccount | None] = relationship()


class Delivery(Base):
    """One recipient of one campaign, and what happened to their message."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("campaign_id", "contact_id", name="uq_deliveries_campaign_contact"),
        Index("ix_deliveries_campaign_status", "campaign_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    # Kept when the contact is deleted later, so the campaign's history stays whole.
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"))
    address: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    message_id: Mapped[str | None] = mapped_column(String(255))
    provider_id: Mapped[str | None] = mapped_column(String(255))
    provider_reply: Mapped[str | None] = mapped_column(Text)
    # The template fields the message was rendered from, kept at handover, so
    # the history shows what was sent even after the contact changes.
    context: Mapped[dict | None] = mapped_column(JSON)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class JobEvent(Base):
    """One entry of a campaign's job history: a launch, stop, resume, restart or exit."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_campaign", "campaign_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))
    # The user who asked for it, or "system" for what reconciliation found.
    actor: Mapped[str] = mapped_column(String(80), default="system")
    supervisor: Mapped[str] = mapped_column(String(16), default="")
    mode: Mapped[str] = mapped_column(String(16), default="")
    exit_status: Mapped[int | None] = mapped_column(Integer)
    restarts: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(Text, default="")


class Setting(Base):
    """A runtime setting an admin edits in the web app, stored as JSON.

    Secret values inside are encrypted by ``messagehub.secretbox`` before they
    reach this table.
    """

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
