"""Workers' shares of a campaign: each sends its own, then helps with the others' from the newest end."""

from __future__ import annotations

import threading

from messagehub.engine.process import build_runner, create_db_engine
from messagehub.engine.sqlstore import SqlCampaignStore
from tests import factories


def started_campaign(app, smtp_server, recipients: int) -> int:
    """Create an SMTP campaign and begin its run as a unit's main process does, without sending."""
    contacts = [{"email": f"reader{i}@example.com", "first_name": f"R{i}"} for i in range(recipients)]
    factories.use_smtp_server(app, smtp_server.port)
    campaign_id = factories.make_campaign(app, factories.make_list(app, contacts))

    main = build_runner(campaign_id, dict(app.config), threading.Event())
    main.begin(campaign_id)
    main.sender.close()
    return campaign_id


def test_share_then_others_newest_first(app, smtp_server):
    campaign_id = started_campaign(app, smtp_server, 9)
    ids = {row.address: row.id for row in factories.deliveries(app, campaign_id)}
    runner = build_runner(campaign_id, dict(app.config), threading.Event(), partition=(0, 2))

    outcome = runner.run_share(campaign_id)

    arrived = [ids[recipient] for message in smtp_server.messages for recipient in message.recipients]
    own = sorted(delivery_id for delivery_id in ids.values() if delivery_id % 2 == 0)
    others = sorted((delivery_id for delivery_id in ids.values() if delivery_id % 2 == 1), reverse=True)
    assert arrived == own + others
    assert {row.status for row in factories.deliveries(app, campaign_id)} == {"sent"}
    # The main process sets the final status.
    assert outcome.status == "running"


def test_idle_share_takes_over_lost_one(app, smtp_server):
    campaign_id = started_campaign(app, smtp_server, 400)
    ids = sorted(row.id for row in factories.deliveries(app, campaign_id))
    lost_share = [delivery_id for delivery_id in ids if delivery_id % 2 == 1]
    # Share 0 is done and share 1 untouched, as when worker 1 dies early in a run.
    store = SqlCampaignStore(create_db_engine(app.config["SQLALCHEMY_DATABASE_URI"]))
    store.mark_sending_many([(d, f"<{d}.done@example.com>", None) for d in ids if d % 2 == 0])
    for delivery_id in ids:
        if delivery_id % 2 == 0:
            store.mark_sent(delivery_id, "250 ok", None)
    store.flush()
    runners = [
        build_runner(campaign_id, dict(app.config), threading.Event(), partition=(share, 2), connections=2)
        for share in range(2)
    ]
    handed_over = [record_handovers(runner) for runner in runners]
    threads = [threading.Thread(target=runner.run_share, args=(campaign_id,)) for runner in runners]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    arrived = [recipient for message in smtp_server.messages for recipient in message.recipients]
    addresses = {row.id: row.address for row in factories.deliveries(app, campaign_id)}
    assert sorted(arrived) == sorted(addresses[d] for d in lost_share)
    assert len(set(arrived)) == len(arrived)
    assert {row.status for row in factories.deliveries(app, campaign_id)} == {"sent"}
    # Share 0 helped from the newest end, share 1 worked from the oldest.
    assert handed_over[0] and handed_over[1]
    assert min(handed_over[0]) > max(handed_over[1])
    assert sorted(handed_over[0] + handed_over[1]) == lost_share


def record_handovers(runner) -> list[int]:
    """Collect the ids of the deliveries ``runner`` hands over, in order."""
    ids: list[int] = []
    hand_over = runner._hand_over

    def recorded(delivery_id: int) -> None:
        ids.append(delivery_id)
        hand_over(delivery_id)

    runner._hand_over = recorded
    return ids
