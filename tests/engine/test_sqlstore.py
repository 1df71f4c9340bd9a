"""Claims and outcomes of the SQL campaign store, on the app's SQLite database."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from sqlalchemy import update
from sqlalchemy.dialects import postgresql

from messagehub.engine.prepared import PreparedStatement
from messagehub.engine.process import create_db_engine
from messagehub.engine.sqlstore import SqlCampaignStore
from messagehub.models import Delivery, utcnow
from tests import factories


def _started_campaign(app, recipients: int, list_name: str = "Hand made") -> tuple[int, list[int]]:
    contacts = [{"email": f"reader{i}@example.com", "first_name": f"R{i}"} for i in range(recipients)]
    campaign_id = factories.make_campaign(app, factories.make_list(app, contacts, list_name))
    SqlCampaignStore(create_db_engine(app.config["SQLALCHEMY_DATABASE_URI"])).start_run(campaign_id)
    return campaign_id, sorted(row.id for row in factories.deliveries(app, campaign_id))


def _store(app) -> SqlCampaignStore:
    return SqlCampaignStore(create_db_engine(app.config["SQLALCHEMY_DATABASE_URI"]))


def _claims(ids: list[int]) -> list[tuple[int, str, dict]]:
    return [(d, f"<{d}.x@example.com>", {"first_name": f"F{d}"}) for d in ids]


def test_claim_stamps_every_row(app):
    campaign_id, ids = _started_campaign(app, 4)

    won = _store(app).mark_sending_many(_claims(ids[:3]))

    assert won == set(ids[:3])
    rows = {row.id: row for row in factories.deliveries(app, campaign_id)}
    assert [rows[d].status for d in ids] == ["sending", "sending", "sending", "queued"]
    assert [rows[d].attempts for d in ids] == [1, 1, 1, 0]
    assert rows[ids[1]].message_id == f"<{ids[1]}.x@example.com>"
    assert rows[ids[1]].context == {"first_name": f"F{ids[1]}"}
    assert rows[ids[3]].message_id is None


def test_overlapping_claim_wins_only_queued_rows(app):
    campaign_id, ids = _started_campaign(app, 5)
    first, second = _store(app), _store(app)
    first.mark_sending_many(_claims(ids[:3]))
    # Outcomes the second store keeps in memory: the claim's rollback must not lose them.
    second.mark_sent(ids[0], "250 ok", "A1")

    won = second.mark_sending_many(_claims(ids[2:]))

    assert won == {ids[3], ids[4]}
    rows = {row.id: row for row in factories.deliveries(app, campaign_id)}
    assert rows[ids[2]].attempts == 1
    assert [rows[d].status for d in ids] == ["sent", "sending", "sending", "sending", "sending"]
    assert rows[ids[0]].provider_id == "A1"
    assert factories.campaign(app, campaign_id).sent == 1


def test_sent_outcomes_counted_once(app):
    campaign_id, ids = _started_campaign(app, 3)
    store = _store(app)
    store.mark_sending_many(_claims(ids))
    for d in ids:
        store.mark_sent(d, f"250 queued as Q{d}", f"Q{d}")
    store.mark_sent(ids[0], "250 again", "again")

    store.flush()

    rows = {row.id: row for row in factories.deliveries(app, campaign_id)}
    assert [rows[d].provider_id for d in ids] == [f"Q{d}" for d in ids]
    assert all(rows[d].sent_at is not None for d in ids)
    assert factories.campaign(app, campaign_id).sent == 3


def test_prepared_statement_named_parameters():
    statement = update(Delivery).where(Delivery.id == 7, Delivery.status == "queued").values(status="sending")

    prepared = PreparedStatement(statement, postgresql.dialect())

    assert "%(" in prepared.sql
    [parameters] = prepared.parameters([{}], {})
    assert sorted(parameters.values(), key=str) == [7, "queued", "sending"]


def test_release_many_requeues_without_an_attempt(app):
    campaign_id, ids = _started_campaign(app, 3)
    store = _store(app)
    store.mark_sending_many(_claims(ids))

    store.release_many(ids[1:], "queued again: stopped", utcnow())

    rows = {row.id: row for row in factories.deliveries(app, campaign_id)}
    assert [rows[d].status for d in ids] == ["sending", "queued", "queued"]
    assert [rows[d].attempts for d in ids] == [1, 0, 0]
    assert rows[ids[2]].provider_reply == "queued again: stopped"


def test_outcome_times_match_orm_format(app):
    campaign_id, ids = _started_campaign(app, 4)
    store = _store(app)
    store.mark_sending_many(_claims(ids))
    # Two of each, so that each group of outcomes is written in one executemany.
    for delivery_id in ids[:2]:
        store.mark_sent(delivery_id, "250 ok", "A1")
    store.release_many(ids[2:], "queued again: stopped", datetime(2027, 1, 1, tzinfo=timezone.utc))

    with store.engine.connect() as connection:
        rows = {
            row[0]: row[1:]
            for row in connection.exec_driver_sql("SELECT id, updated_at, sent_at, next_attempt_at FROM deliveries")
        }
    updated_at, sent_at, _ = rows[ids[0]]
    assert sent_at == updated_at
    # Whole seconds keep their microseconds, as the ORM writes them, so
    # the text sorts and compares as the time does.
    assert rows[ids[2]][1:] == (None, "2027-01-01 00:00:00.000000")


def test_two_campaigns_in_one_write(app):
    first, first_ids = _started_campaign(app, 2)
    second, second_ids = _started_campaign(app, 1, "Second list")
    store = _store(app)
    batch = store.next_batch(first, 10, utcnow())
    store.mark_sending_many(_claims([recipient.delivery_id for recipient in batch] + second_ids))

    for delivery_id in first_ids + second_ids:
        store.mark_sent(delivery_id, "250 ok", "A1")
    store.flush()

    assert [recipient.delivery_id for recipient in batch] == first_ids
    assert factories.campaign(app, first).sent == 2
    assert factories.campaign(app, second).sent == 1


def test_start_run_waits_for_queueing_run(app):
    # The web app queues the audience while the engine it just launched
    # starts: the engine must see the run started, not queue it again.
    contacts = [{"email": f"reader{i}@example.com"} for i in range(300)]
    campaign_id = factories.make_campaign(app, factories.make_list(app, contacts))
    web, engine = _store(app), _store(app)
    queued = threading.Event()
    errors = []
    queue_audience = web._queue_audience

    def queue_and_hold(session, campaign):
        queue_audience(session, campaign)
        queued.set()
        # Holds the write lock with the rows uncommitted while the engine starts.
        time.sleep(0.5)

    def start_in_web():
        try:
            web.start_run(campaign_id)
        except Exception as error:
            errors.append(error)

    web._queue_audience = queue_and_hold
    thread = threading.Thread(target=start_in_web)
    thread.start()
    assert queued.wait(10)
    engine.start_run(campaign_id)
    thread.join(10)

    assert errors == []
    rows = factories.deliveries(app, campaign_id)
    assert len(rows) == 300
    assert {row.status for row in rows} == {"queued"}
    assert factories.campaign(app, campaign_id).total == 300


def test_settled_send_dated_at_its_claim(app):
    campaign_id, ids = _started_campaign(app, 3)
    store = _store(app)
    store.mark_sending_many(_claims(ids))
    claimed_at = {row.id: row.updated_at for row in factories.deliveries(app, campaign_id)}
    time.sleep(0.05)

    for item in _store(app).in_doubt(campaign_id):
        store.resolve(item.delivery_id, {ids[0]: None, ids[1]: True, ids[2]: False}[item.delivery_id], item.claimed_at)
    store.flush()

    rows = {row.id: row for row in factories.deliveries(app, campaign_id)}
    assert rows[ids[0]].sent_at == claimed_at[ids[0]]
    assert rows[ids[0]].provider_reply.startswith("unconfirmed:")
    assert rows[ids[1]].sent_at == claimed_at[ids[1]]
    assert rows[ids[2]].status == "queued"
    assert rows[ids[2]].sent_at is None
