"""Several SMTP connections in one process, driven in rounds: exactly once, whatever a round meets."""

from __future__ import annotations

import collections
import logging
import threading

import pytest

from messagehub.engine import runner as runner_module
from messagehub.engine.handover import campaign_folder
from messagehub.engine import process
from messagehub.engine.process import build_runner, process_shares
from messagehub.providers.smtp import SmtpSender
from messagehub.providers.smtp_connections import SmtpConnections
from tests import factories
from tests.engine.journal_watch import accepted_at_each_flush

CONNECTIONS = 3


def make_campaign(app, smtp_server, recipients: int) -> int:
    contacts = [{"email": f"reader{i}@example.com", "first_name": f"R{i}"} for i in range(recipients)]
    list_id = factories.make_list(app, contacts)
    factories.use_smtp_server(app, smtp_server.port)
    return factories.make_campaign(app, list_id)


def rounds_runner(app, campaign_id: int, stop: threading.Event | None = None, on_progress=None):
    runner = build_runner(
        campaign_id, dict(app.config), stop or threading.Event(), on_progress, connections=CONNECTIONS
    )
    assert isinstance(runner.sender, SmtpConnections)
    return runner


def received(smtp_server) -> collections.Counter:
    return collections.Counter(r for message in smtp_server.messages for r in message.recipients)


def rows_by_address(app, campaign_id: int) -> dict:
    return {row.address: row for row in factories.deliveries(app, campaign_id)}


@pytest.mark.parametrize(
    ("connections", "cpus", "shares"),
    [(6, 2, [3, 3]), (5, 2, [3, 2]), (3, 8, [1, 1, 1]), (1, 4, [1]), (6, 1, [6])],
)
def test_process_shares_per_cpu(connections, cpus, shares):
    assert process_shares(connections, cpus) == shares


def test_rounds_each_recipient_once(app, smtp_server):
    campaign_id = make_campaign(app, smtp_server, 20)
    runner = rounds_runner(app, campaign_id)
    journalled = accepted_at_each_flush(runner, app.config["HANDOVER_DIR"], campaign_id)

    outcome = runner.run(campaign_id)

    rows = factories.deliveries(app, campaign_id)
    counts = received(smtp_server)
    assert outcome.status == "finished"
    assert sorted(counts) == sorted(row.address for row in rows)
    assert max(counts.values()) == 1
    assert {row.status for row in rows} == {"sent"}
    assert {message.connection for message in smtp_server.messages} == set(range(1, CONNECTIONS + 1))
    # Every acceptance reached the journal before the outcomes were committed.
    assert {row.id for row in rows} in journalled
    assert list(campaign_folder(app.config["HANDOVER_DIR"], campaign_id).iterdir()) == []


def test_failures_in_a_round_stay_with_their_recipients(app, smtp_server):
    campaign_id = make_campaign(app, smtp_server, 12)
    smtp_server.reject("reader4@example.com")
    smtp_server.defer("reader7@example.com")

    outcome = rounds_runner(app, campaign_id).run(campaign_id)

    rows = rows_by_address(app, campaign_id)
    counts = received(smtp_server)
    assert outcome.status == "finished"
    assert rows["reader4@example.com"].status == "failed"
    assert rows["reader4@example.com"].provider_reply.startswith("550")
    assert rows["reader7@example.com"].status == "sent"
    assert rows["reader7@example.com"].attempts == 2
    assert sorted(counts) == sorted(address for address in rows if address != "reader4@example.com")
    assert max(counts.values()) == 1


def test_deferral_at_the_final_dot_is_retried(app, smtp_server):
    campaign_id = make_campaign(app, smtp_server, 9)
    smtp_server.reply_to_data("451 4.3.0 queue full")

    outcome = rounds_runner(app, campaign_id).run(campaign_id)

    rows = factories.deliveries(app, campaign_id)
    counts = received(smtp_server)
    assert outcome.status == "finished"
    assert {row.status for row in rows} == {"sent"}
    assert sorted(row.attempts for row in rows) == [1] * 8 + [2]
    assert sorted(counts) == sorted(row.address for row in rows)
    assert max(counts.values()) == 1


def test_unavailable_server_mid_round(app, smtp_server, monkeypatch):
    monkeypatch.setattr(runner_module, "UNAVAILABLE_WAITS", (0.01, 0.01, 0.01))
    campaign_id = make_campaign(app, smtp_server, 9)
    # The second message of the second round: the first is in flight on its
    # own connection when this one's RCPT is refused for the whole account,
    # on the first try and the three retries before the pause.
    smtp_server.defer("reader4@example.com", times=4, reply="530 5.7.0 authentication required")

    paused = rounds_runner(app, campaign_id).run(campaign_id)

    rows = rows_by_address(app, campaign_id)
    counts = received(smtp_server)
    assert paused.status == "paused"
    assert set(counts) == {f"reader{i}@example.com" for i in range(4)}
    assert {rows[address].status for address in counts} == {"sent"}
    assert {rows[f"reader{i}@example.com"].status for i in range(4, 9)} == {"queued"}
    assert rows["reader4@example.com"].attempts == 0
    assert list(campaign_folder(app.config["HANDOVER_DIR"], campaign_id).iterdir()) == []

    resumed = rounds_runner(app, campaign_id).run(campaign_id)

    counts = received(smtp_server)
    assert resumed.status == "finished"
    assert sorted(counts) == sorted(rows)
    assert max(counts.values()) == 1


def test_unavailable_spell_shown_while_retried(app, smtp_server, monkeypatch, caplog):
    monkeypatch.setattr(runner_module, "UNAVAILABLE_WAITS", (0.01, 0.01, 0.01))
    campaign_id = make_campaign(app, smtp_server, 9)
    smtp_server.defer("reader4@example.com", times=2, reply="530 5.7.0 authentication required")
    runner = rounds_runner(app, campaign_id)
    notices = []
    wait = runner._wait

    def watched_wait(seconds: float) -> None:
        notices.append(factories.campaign(app, campaign_id).last_error)
        wait(seconds)

    runner._wait = watched_wait
    caplog.set_level(logging.INFO, logger="messagehub.processor")
    outcome = runner.run(campaign_id)

    assert outcome.status == "finished"
    assert len(notices) == 2
    assert notices[0].startswith("Provider unavailable, retry 1 of 3 in 0.01 s: ")
    assert notices[0].endswith("rejected RCPT: 530 5.7.0 authentication required")
    assert notices[1].startswith("Provider unavailable, retry 2 of 3")
    # Cleared once messages go out again.
    assert factories.campaign(app, campaign_id).last_error is None
    assert f"provider available again for campaign {campaign_id}" in caplog.text


def test_stop_mid_batch(app, smtp_server):
    campaign_id = make_campaign(app, smtp_server, 15)
    stop = threading.Event()

    def stop_after_four(progress) -> None:
        if progress.sent >= 4:
            stop.set()

    paused = rounds_runner(app, campaign_id, stop, stop_after_four).run(campaign_id)

    rows = factories.deliveries(app, campaign_id)
    counts = received(smtp_server)
    sent = {row.address for row in rows if row.status == "sent"}
    assert paused.status == "paused"
    # The round that reached four finishes: its messages were on their way.
    assert len(sent) == 6
    assert set(counts) == sent
    assert {row.status for row in rows if row.address not in sent} == {"queued"}
    assert {row.attempts for row in rows if row.address not in sent} == {0}


def test_unexpected_error_after_handover_never_sends_twice(app, smtp_server, monkeypatch):
    campaign_id = make_campaign(app, smtp_server, 6)
    finish = SmtpSender.finish

    def finish_failing_for_reader1(sender, message):
        result = finish(sender, message)
        if message.recipient == "reader1@example.com":
            raise RuntimeError("a bug after the message left")
        return result

    monkeypatch.setattr(SmtpSender, "finish", finish_failing_for_reader1)

    with pytest.raises(RuntimeError):
        rounds_runner(app, campaign_id).run(campaign_id)

    monkeypatch.setattr(SmtpSender, "finish", finish)
    outcome = rounds_runner(app, campaign_id).run(campaign_id)

    rows = rows_by_address(app, campaign_id)
    counts = received(smtp_server)
    assert outcome.status == "finished"
    assert sorted(counts) == sorted(rows)
    assert max(counts.values()) == 1
    assert rows["reader1@example.com"].status == "sent"
    assert rows["reader1@example.com"].provider_reply.startswith("unconfirmed")


@pytest.mark.parametrize(("at", "arrived"), [("after_data", 0), ("after_data_accepted", 1)])
def test_drop_at_final_dot_unconfirmed(app, smtp_server, at, arrived):
    campaign_id = make_campaign(app, smtp_server, 9)
    smtp_server.drop_connection_once(at)

    outcome = rounds_runner(app, campaign_id).run(campaign_id)

    rows = factories.deliveries(app, campaign_id)
    unconfirmed = [row for row in rows if row.provider_reply.startswith("unconfirmed: connection lost")]
    counts = received(smtp_server)
    assert outcome.status == "finished"
    assert {row.status for row in rows} == {"sent"}
    assert len(unconfirmed) == 1
    assert counts[unconfirmed[0].address] == arrived
    assert len(counts) == 8 + arrived
    assert max(counts.values()) == 1


def test_one_cpu_runs_connections_in_process(app, smtp_server, monkeypatch):
    campaign_id = make_campaign(app, smtp_server, 12)
    monkeypatch.setattr(process, "usable_cpus", lambda: 1)
    # The test process keeps its own SIGTERM and SIGINT handlers.
    monkeypatch.setattr(process, "install_stop_handlers", lambda stop, notifier=None: None)

    outcome = process.run_campaign(campaign_id, {**app.config, "SMTP_CONNECTIONS": CONNECTIONS})

    rows = factories.deliveries(app, campaign_id)
    counts = received(smtp_server)
    assert outcome.status == "finished"
    assert sorted(counts) == sorted(row.address for row in rows)
    assert max(counts.values()) == 1
    assert {message.connection for message in smtp_server.messages} == set(range(1, CONNECTIONS + 1))
