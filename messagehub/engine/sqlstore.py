"""CampaignStore on the SQL database that the web app uses too."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Engine, and_, bindparam, case, exists, func, insert, literal, literal_column, null, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from messagehub.engine import status as campaign_status
from messagehub.engine.prepared import PreparedStatements
from messagehub.engine.store import CampaignSpec, InDoubt, Progress, Recipient
from messagehub.messages.templating import build_context
from messagehub.models import Campaign, Channel, Contact, Delivery, DeliveryStatus, OptOut, UTCDateTime, utcnow

QUEUED = DeliveryStatus.QUEUED.value
SENDING = DeliveryStatus.SENDING.value
SENT = DeliveryStatus.SENT.value
FAILED = DeliveryStatus.FAILED.value
SKIPPED = DeliveryStatus.SKIPPED.value

_deliveries = Delivery.__table__
_campaigns = Campaign.__table__

# The statements of the send loop, built once: composing them per message
# cost more than the SQLite writes themselves.
_CLAIM_MANY = (
    update(_deliveries)
    .where(_deliveries.c.id.in_(bindparam("ids", expanding=True)), _deliveries.c.status == QUEUED)
    .values(
        status=SENDING,
        attempts=_deliveries.c.attempts + 1,
        updated_at=bindparam("now", type_=UTCDateTime()),
    )
    .returning(_deliveries.c.id)
)
# The claim and its stamp in one statement, run as one executemany. Its row
# count shows whether every row was still queued. RETURNING would name the
# winners, but executemany returns no rows.
_CLAIM_AND_STAMP = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("d_id"), _deliveries.c.status == QUEUED)
    .values(
        status=SENDING,
        attempts=_deliveries.c.attempts + 1,
        updated_at=bindparam("now", type_=UTCDateTime()),
        message_id=bindparam("m_id"),
        context=bindparam("ctx", type_=JSON()),
    )
)
# The Message-ID and template fields of each claimed delivery, run as one executemany.
_STAMP = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("d_id"))
    .values(message_id=bindparam("m_id"), context=bindparam("ctx", type_=JSON()))
)
_MOVE_VALUES = {
    "status": bindparam("d_to"),
    "provider_reply": bindparam("reply"),
    "provider_id": bindparam("p_id"),
    "next_attempt_at": bindparam("retry_at", type_=UTCDateTime()),
    "attempts": _deliveries.c.attempts + bindparam("bump"),
    "updated_at": bindparam("now", type_=UTCDateTime()),
    # The time of the move when it is to "sent", else none. Taken from "now"
    # in SQL, so that each row's time is converted once, not twice.
    "sent_at": case((bindparam("d_to") == literal_column(f"'{SENT}'"), bindparam("now", type_=UTCDateTime())), else_=null()),
}
_MOVE_ONE = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("d_id"), _deliveries.c.status == bindparam("d_from"))
    .values(_MOVE_VALUES)
    .returning(_deliveries.c.campaign_id)
)
# The same move run as one executemany for many deliveries of one campaign.
# executemany returns no rows, so the counters come from its row count.
_MOVE_MANY = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("d_id"), _deliveries.c.status == bindparam("d_from"))
    .values(_MOVE_VALUES)
)
# Campaign counter moved by each final delivery status, by "n" deliveries.
_COUNT = {
    status: update(_campaigns).where(_campaigns.c.id == bindparam("c_id")).values({column: column + bindparam("n")})
    for status, column in ((SENT, _campaigns.c.sent), (FAILED, _campaigns.c.failed), (SKIPPED, _campaigns.c.skipped))
}

# The contact fields a message is rendered from, read with each batch.
_CONTACT_COLUMNS = (
    Contact.id.label("contact_id"),
    Contact.email,
    Contact.first_name,
    Contact.last_name,
    Contact.phone,
    Contact.country,
    Contact.attributes,
)

# Most "sent" outcomes kept in memory before they are written on their own.
# The send loop writes them at the end of every batch (at most 1,000
# messages, engine/runner.py), and the handover journal keeps them safe until
# then. A limit of 100 cost a transaction and a counter update per 100
# messages at thousands of messages a second.
PENDING_LIMIT = 1_000


class _Contended(Exception):
    """Some rows of a claim were no longer queued: another process claimed them first."""


class SqlCampaignStore:
    """Reads and writes campaigns through one SQLAlchemy engine.

    Every method commits before it returns: the engine relies on each state
    change being durable the moment the call ends.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._pending: list[dict] = []
        self._prepared = PreparedStatements()
        # The campaign of each delivery that next_batch returned and that has
        # not moved yet, so that writing outcomes needs no query to learn it.
        self._campaign_of: dict[int, int] = {}

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
                channel=campaign.channel,
                sms_sender=campaign.sms_sender,
                provider_account_id=campaign.provider_account_id,
            )

    def check_start(self, campaign_id: int) -> None:
        """Raise what ``start_run`` would raise for the campaign as it is now, changing nothing."""
        with Session(self.engine) as session:
            _check_start(session.get(Campaign, campaign_id), campaign_id)

    def start_run(self, campaign_id: int) -> None:
        with Session(self.engine) as session, session.begin():
            # SQLite ignores FOR UPDATE, and its driver reads outside the
            # transaction until the first write. Writing first takes the write
            # lock, so the read below returns the last commit of a web app or
            # engine process that started this run at the same moment.
            session.execute(update(Campaign).where(Campaign.id == campaign_id).values(heartbeat_at=utcnow()))
            campaign = session.get(Campaign, campaign_id, with_for_update=True)
            _check_start(campaign, campaign_id)
            if campaign.started_at is None:
                self._queue_audience(session, campaign)
                campaign.started_at = utcnow()
            campaign.status = campaign_status.RUNNING
            campaign.finished_at = None
            campaign.last_error = None
            campaign.heartbeat_at = utcnow()

    def _queue_audience(self, session: Session, campaign: Campaign) -> None:
        """Snapshot the list into delivery rows, in the same transaction as the status change."""
        now = utcnow()
        for selected, status, reply in _audience_rules(campaign.channel):
            address = Contact.phone if campaign.channel == Channel.SMS.value else Contact.email
            rows = select(
                literal(campaign.id),
                Contact.id,
                func.coalesce(address, ""),
                literal(status),
                literal(reply),
                literal(now),
                literal(now),
            ).where(Contact.list_id == campaign.list_id, selected)
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
        self.flush()
        with Session(self.engine) as session:
            rows = session.execute(
                select(Delivery.id, Delivery.message_id, Delivery.updated_at).where(
                    Delivery.campaign_id == campaign_id, Delivery.status == SENDING
                )
            ).all()

        # The claim was the row's last change, so updated_at is its time.
        return [InDoubt(delivery_id, message_id or "", claimed_at) for delivery_id, message_id, claimed_at in rows]

    def resolve(self, delivery_id: int, delivered: bool | None, claimed_at: datetime | None = None) -> None:
        if delivered is False:
            self._move(delivery_id, SENDING, QUEUED, reply="not delivered by the previous run; queued again")
        elif delivered is True:
            self._move(delivery_id, SENDING, SENT, reply="delivered before the previous run stopped", at=claimed_at)
        else:
            self._move(
                delivery_id,
                SENDING,
                SENT,
                reply="unconfirmed: the previous run stopped after handing the message over, "
                "before it recorded the server's answer; not sent again",
                at=claimed_at,
            )

    def next_batch(
        self,
        campaign_id: int,
        limit: int,
        now: datetime,
        partition: tuple[int, int] | None = None,
        newest_first: bool = False,
    ) -> list[Recipient]:
        self.flush()
        # Columns rather than Contact objects: the ORM's identity map and
        # instance state cost more per recipient than rendering the message.
        query = (
            select(Delivery.id, Delivery.address, Delivery.attempts, *_CONTACT_COLUMNS)
            .join(Contact, Contact.id == Delivery.contact_id, isouter=True)
            .where(
                Delivery.campaign_id == campaign_id,
                Delivery.status == QUEUED,
                (Delivery.next_attempt_at.is_(None)) | (Delivery.next_attempt_at <= now),
                _in_partition(partition),
            )
            .order_by(Delivery.id.desc() if newest_first else Delivery.id)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()

        # Unpacked, not read by name: a Row finds a column name only after a
        # failed attribute lookup, 2.7 % of the send loop's instructions (callgrind).
        recipients = []
        for delivery_id, address, attempts, contact_id, email, first_name, last_name, phone, country, attributes in rows:
            if contact_id is None:
                name, context = "", recipient_context(address, None)
            else:
                name = " ".join(part for part in (first_name, last_name) if part)
                context = build_context(email, first_name, last_name, phone, country, attributes or {})
            recipients.append(Recipient(delivery_id, address, attempts, name, context))
            self._campaign_of[delivery_id] = campaign_id
        return recipients

    def close(self) -> None:
        """Write what is pending."""
        self.flush()

    def flush(self) -> None:
        """Write the "sent" outcomes still kept in memory."""
        if not self._pending:
            return
        with self.engine.begin() as connection:
            self._write_pending(connection)

    def mark_sending_many(self, claims: list[tuple[int, str, dict | None]]) -> set[int]:
        # Conditional on the rows still being queued: of two processes that
        # claim one delivery, only one gets it.
        if not claims:
            return set()

        pending = list(self._pending)
        try:
            with self.engine.begin() as connection:
                self._write_pending(connection)
                return self._claim_all(connection, claims)
        except _Contended:
            # Rolled back, the pending outcomes with it: the claim below writes them again.
            self._pending = pending

        with self.engine.begin() as connection:
            self._write_pending(connection)
            return self._claim_each(connection, claims)

    def _claim_all(self, connection, claims: list[tuple[int, str, dict | None]]) -> set[int]:
        """Claim and stamp every row in one executemany, or raise ``_Contended`` if any was not queued."""
        if not connection.dialect.supports_sane_multi_rowcount:
            # The row count cannot show whether every row was claimed.
            raise _Contended

        stamps = [
            {"d_id": delivery_id, "m_id": message_id, "ctx": context} for delivery_id, message_id, context in claims
        ]
        claim = self._prepared.get(_CLAIM_AND_STAMP, connection.dialect)
        if claim.executemany(connection, stamps, {"now": utcnow()}) != len(claims):
            raise _Contended
        return {delivery_id for delivery_id, _, _ in claims}

    def _claim_each(self, connection, claims: list[tuple[int, str, dict | None]]) -> set[int]:
        """Claim the rows still queued, learning which with RETURNING, then stamp those."""
        won = set(
            connection.execute(
                _CLAIM_MANY, {"ids": [delivery_id for delivery_id, _, _ in claims], "now": utcnow()}
            ).scalars()
        )
        stamps = [
            {"d_id": delivery_id, "m_id": message_id, "ctx": context}
            for delivery_id, message_id, context in claims
            if delivery_id in won
        ]
        if stamps:
            connection.execute(_STAMP, stamps)
        for delivery_id, _, _ in claims:
            if delivery_id not in won:
                # Another process sends it and writes its outcome.
                self._campaign_of.pop(delivery_id, None)
        return won

    def release(self, delivery_id: int, reply: str, retry_at: datetime) -> None:
        self._move(delivery_id, SENDING, QUEUED, reply=reply, retry_at=retry_at, bump=-1)

    def release_many(self, delivery_ids: list[int], reply: str, retry_at: datetime) -> None:
        for delivery_id in delivery_ids:
            self._pending.append(
                _move_parameters(delivery_id, SENDING, QUEUED, reply=reply, retry_at=retry_at, bump=-1)
            )
        self.flush()

    def mark_skipped(self, delivery_id: int, reason: str) -> None:
        self._move(delivery_id, QUEUED, SKIPPED, reply=reason)

    def opted_out(self, channel: str, addresses: list[str]) -> set[str]:
        if not addresses:
            return set()
        with Session(self.engine) as session:
            return set(
                session.execute(
                    select(OptOut.address).where(OptOut.channel == channel, OptOut.address.in_(addresses))
                ).scalars()
            )

    def record_opt_out(self, channel: str, address: str, reason: str, campaign_id: int) -> None:
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    insert(OptOut).values(
                        channel=channel, address=address, reason=reason, campaign_id=campaign_id, created_at=utcnow()
                    )
                )
        except IntegrityError:
            pass  # recorded already, by this campaign or another

    def mark_sent(self, delivery_id: int, reply: str, provider_id: str | None) -> None:
        # Kept in memory until the next write: a process killed before then
        # leaves the row in "sending", which the next run settles as sent,
        # unconfirmed: the message went out, so it is not sent again.
        self._pending.append(_move_parameters(delivery_id, SENDING, SENT, reply=reply, provider_id=provider_id))
        if len(self._pending) >= PENDING_LIMIT:
            self.flush()

    def mark_failed(self, delivery_id: int, reply: str, claimed: bool = False) -> None:
        # The claim already counted the attempt of a claimed message.
        previous = SENDING if claimed else QUEUED
        self._move(delivery_id, previous, FAILED, reply=reply, bump=0 if claimed else 1)

    def mark_deferred(self, delivery_id: int, reply: str, retry_at: datetime) -> None:
        # A 4xx can come before handover (to RCPT) or after it (to the final
        # dot). Either way the claimed row goes back to queued for a later attempt.
        self._move(delivery_id, SENDING, QUEUED, reply=reply, retry_at=retry_at)

    def next_retry_at(self, campaign_id: int, partition: tuple[int, int] | None = None) -> datetime | None:
        self.flush()
        with Session(self.engine) as session:
            return session.execute(
                select(func.min(func.coalesce(Delivery.next_attempt_at, Delivery.queued_at))).where(
                    Delivery.campaign_id == campaign_id, Delivery.status == QUEUED, _in_partition(partition)
                )
            ).scalar()

    def progress(self, campaign_id: int) -> Progress:
        self.flush()
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

    def counters(self, campaign_id: int) -> Progress:
        """Return the campaign's counts from its counter columns: one row, however large the audience.

        Deliveries in "sending" are counted as queued.
        """
        with self.engine.connect() as connection:
            total, sent, failed, skipped = connection.execute(
                select(_campaigns.c.total, _campaigns.c.sent, _campaigns.c.failed, _campaigns.c.skipped).where(
                    _campaigns.c.id == campaign_id
                )
            ).one()

        queued = max(total - sent - failed - skipped, 0)
        return Progress(total=total, queued=queued, sent=sent, failed=failed, skipped=skipped)

    def touch(self, campaign_id: int) -> None:
        """Record that a run of the campaign is alive."""
        with self.engine.begin() as connection:
            connection.execute(
                update(_campaigns).where(_campaigns.c.id == campaign_id).values(heartbeat_at=utcnow())
            )

    def current_status(self, campaign_id: int) -> str:
        with Session(self.engine) as session:
            return session.execute(select(Campaign.status).where(Campaign.id == campaign_id)).scalar_one()

    def note_problem(self, campaign_id: int, problem: str | None) -> None:
        # Only while running: the reason a run ended, written by finish_run, stays.
        with self.engine.begin() as connection:
            connection.execute(
                update(_campaigns)
                .where(_campaigns.c.id == campaign_id, _campaigns.c.status == campaign_status.RUNNING)
                .values(last_error=problem)
            )

    def finish_run(self, campaign_id: int, status: str, error: str | None = None) -> None:
        self.flush()
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
        at: datetime | None = None,
    ) -> None:
        """Move one delivery from ``previous`` to ``new``, with the pending outcomes, in one transaction.

        ``at`` is the time of the move, now if not given.
        """
        self._pending.append(
            _move_parameters(
                delivery_id, previous, new, reply=reply, provider_id=provider_id, retry_at=retry_at, bump=bump, at=at
            )
        )
        self.flush()

    def _write_pending(self, connection) -> None:
        """Apply the pending moves and their campaign counters on ``connection``.

        The delivery rows and the counters change in the caller's transaction,
        so the counters always match the rows, whenever the process dies.
        """
        pending, self._pending = self._pending, []
        groups: dict[tuple[str, str], list[dict]] = {}
        for parameters in pending:
            groups.setdefault((parameters["d_from"], parameters["d_to"]), []).append(parameters)

        for (_, target), moves in groups.items():
            campaign_id = self._single_campaign(connection, moves)
            if campaign_id is None:
                self._move_one_by_one(connection, moves)
                continue
            moved = self._prepared.get(_MOVE_MANY, connection.dialect).executemany(connection, moves, {})
            if moved and target in _COUNT:
                connection.execute(_COUNT[target], {"c_id": campaign_id, "n": moved})

    def _single_campaign(self, connection, moves: list[dict]) -> int | None:
        """Return the campaign of all ``moves`` when an executemany can apply them and count them exactly."""
        known = {self._campaign_of.pop(move["d_id"], None) for move in moves}
        if len(moves) == 1 or not connection.dialect.supports_sane_multi_rowcount:
            return None
        if len(known) == 1 and None not in known:
            return known.pop()
        campaigns = connection.execute(
            select(_deliveries.c.campaign_id)
            .where(_deliveries.c.id.in_([move["d_id"] for move in moves]))
            .distinct()
        ).scalars().all()
        return campaigns[0] if len(campaigns) == 1 else None

    def _move_one_by_one(self, connection, moves: list[dict]) -> None:
        counts: dict[tuple[int, str], int] = {}
        for parameters in moves:
            campaign_id = connection.execute(_MOVE_ONE, parameters).scalar()
            if campaign_id is not None and parameters["d_to"] in _COUNT:
                key = (campaign_id, parameters["d_to"])
                counts[key] = counts.get(key, 0) + 1

        for (campaign_id, status), count in counts.items():
            connection.execute(_COUNT[status], {"c_id": campaign_id, "n": count})


def _check_start(campaign: Campaign | None, campaign_id: int) -> None:
    """Raise unless the campaign exists and may start running, with its audience if it never ran."""
    if campaign is None:
        raise LookupError(f"campaign {campaign_id} not found")

    campaign_status.check_transition(campaign_id, campaign.status, campaign_status.RUNNING)
    if campaign.started_at is None and campaign.list_id is None:
        raise campaign_status.StatusError(f"Campaign {campaign_id} has no contact list.")


def _move_parameters(
    delivery_id: int,
    previous: str,
    new: str,
    *,
    reply: str | None = None,
    provider_id: str | None = None,
    retry_at: datetime | None = None,
    bump: int = 0,
    at: datetime | None = None,
) -> dict:
    """Return the parameters of a move (``_MOVE_ONE``, ``_MOVE_MANY``) for one delivery, at ``at`` or now."""
    now = at or utcnow()
    return {
        "d_id": delivery_id,
        "d_from": previous,
        "d_to": new,
        "reply": reply,
        "p_id": provider_id,
        "retry_at": retry_at,
        "bump": bump,
        "now": now,
    }


def _in_partition(partition: tuple[int, int] | None):
    """Return the condition that keeps a runner to its share of the deliveries."""
    if partition is None:
        return literal(True)
    share, shares = partition
    return Delivery.id % shares == share


def _audience_rules(channel: str) -> list[tuple]:
    """Return (condition, status, reason) for each kind of contact of a list, for ``channel``.

    The conditions exclude each other, so every contact of the list gets
    exactly one delivery row. A list may hold one phone number under several
    contacts (a household, a shared office line): an SMS campaign sends to
    the first of them and skips the others.
    """
    if channel == Channel.SMS.value:
        address, missing = Contact.phone, "no phone number"
        usable = Contact.phone.like("+%")
        unusable = (Contact.phone.not_like("+%"), SKIPPED, "phone number not in E.164 form")
        earlier = aliased(Contact)
        duplicate = exists().where(
            earlier.list_id == Contact.list_id,
            earlier.phone == Contact.phone,
            earlier.unsubscribed.is_(False),
            earlier.id < Contact.id,
        )
    else:
        address, missing = Contact.email, "no email address"
        usable = literal(True)
        unusable = None
        duplicate = literal(False)

    opted_out = exists().where(OptOut.channel == channel, OptOut.address == address)
    present = and_(address.is_not(None), usable)
    subscribed = and_(present, Contact.unsubscribed.is_(False))
    rules = [
        (and_(subscribed, ~opted_out, ~duplicate), QUEUED, None),
        (and_(present, Contact.unsubscribed.is_(True)), SKIPPED, "unsubscribed"),
        (and_(subscribed, opted_out), SKIPPED, "opted out"),
        (and_(subscribed, ~opted_out, duplicate), SKIPPED, "same phone number as an earlier contact of the list"),
        (address.is_(None), SKIPPED, missing),
    ]
    if unusable is not None:
        rules.append((and_(address.is_not(None), unusable[0]), unusable[1], unusable[2]))
    return rules


def recipient_context(address: str, contact) -> dict:
    """Return the template fields of one recipient; a deleted contact keeps only its address.

    ``contact`` is a Contact or a row with the same fields, or None.
    """
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
