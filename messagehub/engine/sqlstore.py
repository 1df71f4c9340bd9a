"""CampaignStore on the SQL database that the web app uses too."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, and_, bindparam, func, insert, literal, select, update
from sqlalchemy.orm import Session

from messagehub.engine import status as campaign_status
from messagehub.engine.store import CampaignSpec, Claimed, InDoubt, Progress, Recipient
from messagehub.messages.templating import build_context
from messagehub.models import Campaign, Contact, Delivery, DeliveryStatus, UTCDateTime, utcnow

QUEUED = DeliveryStatus.QUEUED.value
SENDING = DeliveryStatus.SENDING.value
SENT = DeliveryStatus.SENT.value
FAILED = DeliveryStatus.FAILED.value
SKIPPED = DeliveryStatus.SKIPPED.value

_deliveries = Delivery.__table__
_campaigns = Campaign.__table__

# The statements of the send loop, built once: composing them per message
# cost more than the SQLite writes themselves.
_CLAIM = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("d_id"), _deliveries.c.status == QUEUED)
    .values(
        status=SENDING,
        message_id=bindparam("m_id"),
        attempts=_deliveries.c.attempts + 1,
        updated_at=bindparam("now", type_=UTCDateTime()),
    )
)
_MOVE = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("d_id"), _deliveries.c.status == bindparam("d_from"))
    .values(
        status=bindparam("d_to"),
        provider_reply=bindparam("reply"),
        provider_id=bindparam("p_id"),
        next_attempt_at=bindparam("retry_at", type_=UTCDateTime()),
        attempts=_deliveries.c.attempts + bindparam("bump"),
        updated_at=bindparam("now", type_=UTCDateTime()),
        sent_at=bindparam("sent_at", type_=UTCDateTime()),
    )
    .returning(_deliveries.c.campaign_id)
)
# Campaign counter bumped by each final delivery status.
_COUNT = {
    status: update(_campaigns).where(_campaigns.c.id == bindparam("c_id")).values({column: column + 1})
    for status, column in ((SENT, _campaigns.c.sent), (FAILED, _campaigns.c.failed), (SKIPPED, _campaigns.c.skipped))
}


class SqlCampaignStore:
    """Reads and writes campaigns through one SQLAlchemy engine.

    Every method commits before it returns: the engine relies on each state
    change being durable the moment the call ends.
    """

    def __init__(self, engine: Engine):
        self.engine = engine

    def load_campaign(self, campaign_id: int) -> CampaignSpec:
        with Session(self.engine) as session:
            campaign = session.get(Campaign, campaign_id)
            if campaign is None:
                raise LookupError(f"campaign {campaign_id} not found")

            return CampaignSpec(
                id=campaign.id,
                name=campaign.name,
                status=campaign.status,
                subject=campaign.subject,
                text_body=campaign.text_body,
                html_body=campaign.html_body,
                from_name=campaign.from_name,
                from_email=campaign.from_email,
                reply_to=campaign.reply_to,
                delivery_method=campaign.delivery_method,
            )

    def start_run(self, campaign_id: int) -> None:
        with Session(self.engine) as session, session.begin():
            campaign = session.get(Campaign, campaign_id, with_for_update=True)
            if campaign is None:
                raise LookupError(f"campaign {campaign_id} not found")

            campaign_status.check_transition(campaign_id, campaign.status, campaign_status.RUNNING)
            if campaign.started_at is None:
                self._queue_audience(session, campaign)
                campaign.started_at = utcnow()
            campaign.status = campaign_status.RUNNING
            campaign.finished_at = None
            campaign.last_error = None
            campaign.heartbeat_at = utcnow()

    def _queue_audience(self, session: Session, campaign: Campaign) -> None:
        """Snapshot the list into delivery rows, in the same transaction as the status change."""
        if campaign.list_id is None:
            raise campaign_status.StatusError(f"Campaign {campaign.id} has no contact list.")

        now = utcnow()
        contacts = Contact.__table__
        for selected, status, reply in (
            (and_(contacts.c.email.is_not(None), contacts.c.unsubscribed.is_(False)), QUEUED, None),
            (and_(contacts.c.email.is_not(None), contacts.c.unsubscribed.is_(True)), SKIPPED, "unsubscribed"),
            (contacts.c.email.is_(None), SKIPPED, "no email address"),
        ):
            rows = select(
                literal(campaign.id),
                contacts.c.id,
                func.coalesce(contacts.c.email, ""),
                literal(status),
                literal(reply),
                literal(now),
                literal(now),
            ).where(contacts.c.list_id == campaign.list_id, selected)
            session.execute(
                insert(Delivery).from_select(
                    ["campaign_id", "contact_id", "address", "status", "provider_reply", "queued_at", "updated_at"],
                    rows,
                )
            )

        counts = dict(
            session.execute(
                select(Delivery.status, func.count()).where(Delivery.campaign_id == campaign.id).group_by(Delivery.status)
            ).all()
        )
        campaign.total = sum(counts.values())
        campaign.skipped = counts.get(SKIPPED, 0)
        campaign.sent = 0
        campaign.failed = 0

    def in_doubt(self, campaign_id: int) -> list[InDoubt]:
        with Session(self.engine) as session:
            rows = session.execute(
                select(Delivery.id, Delivery.message_id).where(
                    Delivery.campaign_id == campaign_id, Delivery.status == SENDING
                )
            ).all()

        return [InDoubt(delivery_id, message_id or "") for delivery_id, message_id in rows]

    def resolve(self, delivery_id: int, delivered: bool | None) -> None:
        if delivered is False:
            self._move(delivery_id, SENDING, QUEUED, reply="not delivered by the previous run; queued again")
        elif delivered is True:
            self._move(delivery_id, SENDING, SENT, reply="delivered before the previous run stopped")
        else:
            self._move(
                delivery_id,
                SENDING,
                SENT,
                reply="unconfirmed: the previous run stopped after handing the message over, "
                "before the server answered; not sent again",
            )

    def next_batch(self, campaign_id: int, limit: int, now: datetime) -> list[Recipient]:
        query = (
            select(Delivery.id, Delivery.address, Delivery.attempts, Contact)
            .join(Contact, Contact.id == Delivery.contact_id, isouter=True)
            .where(
                Delivery.campaign_id == campaign_id,
                Delivery.status == QUEUED,
                (Delivery.next_attempt_at.is_(None)) | (Delivery.next_attempt_at <= now),
            )
            .order_by(Delivery.id)
            .limit(limit)
        )
        with Session(self.engine) as session:
            return [
                Recipient(delivery_id, address, attempts, _display_name(contact), recipient_context(address, contact))
                for delivery_id, address, attempts, contact in session.execute(query)
            ]

    def mark_sending(self, delivery_id: int, message_id: str) -> None:
        with self.engine.begin() as connection:
            # Conditional on the row still being queued: of two processes that
            # reach the point of no return for one recipient, only one wins.
            result = connection.execute(_CLAIM, {"d_id": delivery_id, "m_id": message_id, "now": utcnow()})
            if result.rowcount != 1:
                raise Claimed(f"delivery {delivery_id} was handed over by another process")

    def mark_sent(self, delivery_id: int, reply: str, provider_id: str | None) -> None:
        self._move(delivery_id, SENDING, SENT, reply=reply, provider_id=provider_id)

    def mark_failed(self, delivery_id: int, reply: str, handed_over: bool = False) -> None:
        # mark_sending already counted the attempt of a handed-over message.
        previous = SENDING if handed_over else QUEUED
        self._move(delivery_id, previous, FAILED, reply=reply, bump=0 if handed_over else 1)

    def mark_deferred(self, delivery_id: int, reply: str, retry_at: datetime, handed_over: bool = False) -> None:
        # A 4xx can come before handover (to RCPT) or after it (to the final
        # dot). Either way the row goes back to queued for a later attempt.
        previous = SENDING if handed_over else QUEUED
        self._move(delivery_id, previous, QUEUED, reply=reply, retry_at=retry_at, bump=0 if handed_over else 1)

    def next_retry_at(self, campaign_id: int) -> datetime | None:
        with Session(self.engine) as session:
            return session.execute(
                select(func.min(func.coalesce(Delivery.next_attempt_at, Delivery.queued_at))).where(
                    Delivery.campaign_id == campaign_id, Delivery.status == QUEUED
                )
            ).scalar()

    def progress(self, campaign_id: int) -> Progress:
        with Session(self.engine) as session:
            counts = dict(
                session.execute(
                    select(Delivery.status, func.count())
                    .where(Delivery.campaign_id == campaign_id)
                    .group_by(Delivery.status)
                ).all()
            )

        progress = Progress(**{status: counts.get(status, 0) for status in (QUEUED, SENDING, SENT, FAILED, SKIPPED)})
        progress.total = sum(counts.values())
        return progress

    def touch(self, campaign_id: int) -> None:
        """Record that a run of the campaign is alive."""
        with self.engine.begin() as connection:
            connection.execute(
                update(_campaigns).where(_campaigns.c.id == campaign_id).values(heartbeat_at=utcnow())
            )

    def current_status(self, campaign_id: int) -> str:
        with Session(self.engine) as session:
            return session.execute(select(Campaign.status).where(Campaign.id == campaign_id)).scalar_one()

    def finish_run(self, campaign_id: int, status: str, error: str | None = None) -> None:
        with Session(self.engine) as session, session.begin():
            campaign = session.get(Campaign, campaign_id, with_for_update=True)
            # The web app may have paused it meanwhile. A pause that comes
            # after the last recipient still ends as "finished".
            if campaign.status != status:
                campaign_status.check_transition(campaign_id, campaign.status, status)
                campaign.status = status
            if status == campaign_status.FINISHED:
                campaign.finished_at = utcnow()
            campaign.last_error = error

    def _move(
        self,
        delivery_id: int,
        previous: str,
        new: str,
        *,
        reply: str | None = None,
        provider_id: str | None = None,
        retry_at: datetime | None = None,
        bump: int = 0,
    ) -> None:
        """Move one delivery from ``previous`` to ``new``, counting a final status on the campaign.

        The delivery row and the campaign counter change in one transaction,
        so the counters always match the rows, whenever the process dies.
        """
        now = utcnow()
        parameters = {
            "d_id": delivery_id,
            "d_from": previous,
            "d_to": new,
            "reply": reply,
            "p_id": provider_id,
            "retry_at": retry_at,
            "bump": bump,
            "now": now,
            "sent_at": now if new == SENT else None,
        }
        with self.engine.begin() as connection:
            campaign_id = connection.execute(_MOVE, parameters).scalar()
            if campaign_id is not None and new in _COUNT:
                connection.execute(_COUNT[new], {"c_id": campaign_id})


def _display_name(contact: Contact | None) -> str:
    if contact is None:
        return ""
    return " ".join(part for part in (contact.first_name, contact.last_name) if part)


def recipient_context(address: str, contact: Contact | None) -> dict:
    """Return the template fields of one recipient; a deleted contact keeps only its address."""
    if contact is None:
        return build_context(email=address)

    return build_context(
        email=contact.email,
        first_name=contact.first_name,
        last_name=contact.last_name,
        phone=contact.phone,
        country=contact.country,
        attributes=contact.attributes or {},
    )
