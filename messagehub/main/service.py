"""Figures of the dashboard: messages sent and failed lately, and the health of each provider.

Flask-free. Each figure comes from one grouped query over the deliveries,
however many campaigns there are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from messagehub.models import Campaign, Delivery, DeliveryStatus, ProviderAccount
from messagehub.provider_accounts import KINDS

SENT = DeliveryStatus.SENT.value
FAILED = DeliveryStatus.FAILED.value

# How far back provider health looks.
HEALTH_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Totals:
    """Messages sent and failed since midnight and since the first of the month, in UTC."""

    sent_today: int
    failed_today: int
    sent_month: int
    failed_month: int


@dataclass(frozen=True)
class ProviderHealth:
    """Deliveries through one provider account, or through SMTP, within ``HEALTH_WINDOW``."""

    name: str
    kind: str
    sent: int = 0
    failed: int = 0
    last_error: str | None = None

    @property
    def attempted(self) -> int:
        return self.sent + self.failed

    @property
    def failed_share(self) -> float | None:
        """Return the failed deliveries' share in percent, or None without traffic."""
        if not self.attempted:
            return None
        return 100 * self.failed / self.attempted


def day_and_month_start(now: datetime) -> tuple[datetime, datetime]:
    """Return midnight and the first of the month of ``now``, an aware UTC datetime."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return today, today.replace(day=1)


def totals(session: Session, now: datetime) -> Totals:
    """Count the deliveries sent (by ``sent_at``) and failed (by ``updated_at``) today and this month."""
    today, month = day_and_month_start(now)
    sent = Delivery.status == SENT
    failed = Delivery.status == FAILED
    query = select(
        _count(and_(sent, Delivery.sent_at >= today)),
        _count(and_(failed, Delivery.updated_at >= today)),
        _count(sent),
        _count(failed),
    ).where(
        Delivery.campaign_id.in_(_active_since(month)),
        Delivery.status.in_((SENT, FAILED)),
        or_(and_(sent, Delivery.sent_at >= month), and_(failed, Delivery.updated_at >= month)),
    )
    return Totals(*session.execute(query).one())


def _count(condition):
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _active_since(moment: datetime):
    """Select the ids of campaigns that may have sent or failed a message since ``moment``.

    A campaign finishes after its last delivery ends, so one that finished
    before ``moment`` has nothing newer. The deliveries table has no index on
    its timestamps, so leaving those campaigns out lets the database read the
    deliveries of recent campaigns through the (campaign_id, status, id) index
    instead of scanning the whole history.
    """
    return select(Campaign.id).where(or_(Campaign.finished_at.is_(None), Campaign.finished_at >= moment))


def provider_health(session: Session, now: datetime) -> list[ProviderHealth]:
    """Return the sent and failed deliveries of the last hour for SMTP and for each provider account.

    One grouped query counts per campaign and status, and the counts are added
    up per way of sending here. A second query reads, by primary key, the reply
    of each way's failure with the highest delivery id. That is the newest
    failure unless a retried delivery failed after a later one.
    """
    since = now - HEALTH_WINDOW
    query = (
        select(Delivery.campaign_id, Delivery.status, func.count(), func.max(Delivery.id))
        .where(
            Delivery.campaign_id.in_(_active_since(since)),
            Delivery.status.in_((SENT, FAILED)),
            Delivery.updated_at >= since,
        )
        .group_by(Delivery.campaign_id, Delivery.status)
    )
    groups = session.execute(query).all()
    senders = _sender_keys(session, {campaign_id for campaign_id, _, _, _ in groups})

    counts: dict[int | str, dict] = {}
    for campaign_id, status, number, last_id in groups:
        key = senders.get(campaign_id)
        if key is None:
            continue
        entry = counts.setdefault(key, {SENT: 0, FAILED: 0, "last_failure": None})
        entry[status] += number
        if status == FAILED:
            entry["last_failure"] = max(last_id, entry["last_failure"] or 0)

    replies = _replies(session, [entry["last_failure"] for entry in counts.values() if entry["last_failure"]])
    return [_health(name, kind, counts.get(key), replies) for key, name, kind in _senders(session)]


def _sender_keys(session: Session, campaign_ids: set[int]) -> dict[int, int | str]:
    """Map each campaign to how it sends: "smtp", another method name, or its provider account id."""
    if not campaign_ids:
        return {}
    rows = session.execute(
        select(Campaign.id, Campaign.delivery_method, Campaign.provider_account_id).where(Campaign.id.in_(campaign_ids))
    )
    return {
        campaign_id: account_id if method == "account" else method
        for campaign_id, method, account_id in rows
        if method != "account" or account_id is not None
    }


def _senders(session: Session) -> list[tuple[int | str, str, str]]:
    """Return (group key, name, provider label) of SMTP and of every provider account."""
    accounts = session.execute(select(ProviderAccount).order_by(ProviderAccount.name)).scalars()
    senders = [("smtp", "SMTP server", "SMTP")]
    for account in accounts:
        kind = KINDS.get(account.kind)
        senders.append((account.id, account.name, kind.label if kind else account.kind))
    return senders


def _replies(session: Session, delivery_ids: list[int]) -> dict[int, str | None]:
    if not delivery_ids:
        return {}
    rows = session.execute(select(Delivery.id, Delivery.provider_reply).where(Delivery.id.in_(delivery_ids)))
    return {delivery_id: reply for delivery_id, reply in rows}


def _health(name: str, kind: str, counted: dict | None, replies: dict[int, str | None]) -> ProviderHealth:
    if counted is None:
        return ProviderHealth(name, kind)
    return ProviderHealth(name, kind, counted[SENT], counted[FAILED], replies.get(counted["last_failure"]))
