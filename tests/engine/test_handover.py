"""The handover journal, and how a new run settles what a killed run claimed."""

from __future__ import annotations

import collections
import threading
from pathlib import Path

from messagehub.engine import runner as runner_module
from messagehub.engine.handover import HandoverJournal, campaign_folder, read_journals, remove_journals
from messagehub.engine.process import build_runner
from tests import factories
from tests.engine.journal_watch import accepted_at_each_flush


def test_journal_records_claims_and_handovers(tmp_path: Path):
    journal = HandoverJournal(tmp_path, 7)
    journal.claiming([1, 2, 3])
    journal.handing_over(2)
    journal.accepted([2])

    state = read_journals(tmp_path, 7)

    assert state.claimed == {1, 2, 3}
    assert state.handed_over == {2}
    assert state.accepted == {2}
    assert [state.never_written(d) for d in (1, 2, 3, 4)] == [True, False, True, False]
    assert read_journals(tmp_path, 8).claimed == set()


def test_acceptance_written_with_next_handover(tmp_path: Path):
    journal = HandoverJournal(tmp_path, 7)
    journal.claiming([1, 2])
    journal.handing_over(1)
    journal.handing_over(2, accepted=[1])

    state = read_journals(tmp_path, 7)

    assert state.handed_over == {1, 2}
    assert state.accepted == {1}


def test_journal_clear_and_close(tmp_path: Path):
    journal = HandoverJournal(tmp_path, 7)
    journal.claiming([1, 2])
    journal.clear()
    journal.claiming([5])

    assert read_journals(tmp_path, 7).claimed == {5}

    journal.close()
    assert list(campaign_folder(tmp_path, 7).iterdir()) == []


def test_cut_last_line_is_ignored(tmp_path: Path):
    folder = campaign_folder(tmp_path, 3)
    folder.mkdir()
    # A write cut short by a full disk: "h 45" lost its newline and maybe digits.
    (folder / "1-ab.journal").write_bytes(b"c 12 45\nh 12\nh 4")
    (folder / "2-cd.journal").write_bytes(b"c 99\n")

    state = read_journals(tmp_path, 3)

    assert state.claimed == {12, 45, 99}
    assert state.handed_over == {12}
    remove_journals(state)
    assert list(folder.iterdir()) == []


def test_new_run_resends_claimed_but_never_handed_over(app, smtp_server):
    contacts = [{"email": f"reader{i}@example.com", "first_name": f"R{i}"} for i in range(6)]
    list_id = factories.make_list(app, contacts)
    factories.use_smtp_server(app, smtp_server.port)
    campaign_id = factories.make_campaign(app, list_id)
    config = {**app.config, "SMTP_CONNECTIONS": 1}

    # What a run killed mid-batch leaves: four deliveries claimed, the
    # second written out, the fourth also accepted by the server, the
    # journal still on disk.
    killed = build_runner(campaign_id, config, threading.Event())
    killed.store.start_run(campaign_id)
    rows = sorted(factories.deliveries(app, campaign_id), key=lambda row: row.id)
    claimed = [row.id for row in rows[:4]]
    journal = HandoverJournal(app.config["HANDOVER_DIR"], campaign_id)
    journal.claiming(claimed)
    assert killed.store.mark_sending_many([(d, f"<{d}.x@example.com>", None) for d in claimed]) == set(claimed)
    journal.handing_over(claimed[1])
    journal.handing_over(claimed[3])
    journal.accepted([claimed[3]])

    outcome = build_runner(campaign_id, config, threading.Event()).run(campaign_id)

    assert outcome.status == "finished"
    received = collections.Counter(r for message in smtp_server.messages for r in message.recipients)
    by_id = {row.id: row for row in factories.deliveries(app, campaign_id)}
    written_out = by_id[claimed[1]].address
    assert written_out not in received
    assert by_id[claimed[1]].status == "sent"
    assert by_id[claimed[1]].provider_reply.startswith("unconfirmed")
    assert by_id[claimed[3]].status == "sent"
    assert by_id[claimed[3]].provider_reply == "delivered before the previous run stopped"
    assert sorted(received) == sorted(row.address for row in rows if row.id not in (claimed[1], claimed[3]))
    assert max(received.values()) == 1
    assert by_id[claimed[0]].attempts == 1
    assert list(campaign_folder(app.config["HANDOVER_DIR"], campaign_id).iterdir()) == []


def test_unavailable_server_leaves_nothing_claimed(app, smtp_server, monkeypatch):
    monkeypatch.setattr(runner_module, "UNAVAILABLE_WAITS", (0.01, 0.01, 0.01))
    contacts = [{"email": f"reader{i}@example.com", "first_name": f"R{i}"} for i in range(6)]
    list_id = factories.make_list(app, contacts)
    factories.use_smtp_server(app, smtp_server.port)
    campaign_id = factories.make_campaign(app, list_id)
    config = {**app.config, "SMTP_CONNECTIONS": 1}
    # Four refusals: the first try and the three retries before the pause.
    smtp_server.reply_to_mail("550 5.7.1 sender not allowed", times=4)

    paused = build_runner(campaign_id, config, threading.Event()).run(campaign_id)

    rows = factories.deliveries(app, campaign_id)
    assert paused.status == "paused"
    assert {row.status for row in rows} == {"queued"}
    assert {row.attempts for row in rows} == {0}
    assert list(campaign_folder(app.config["HANDOVER_DIR"], campaign_id).iterdir()) == []

    resumed = build_runner(campaign_id, config, threading.Event()).run(campaign_id)

    received = collections.Counter(r for message in smtp_server.messages for r in message.recipients)
    assert resumed.status == "finished"
    assert sorted(received) == sorted(row.address for row in rows)
    assert max(received.values()) == 1


def test_every_acceptance_journalled_before_commit(app, smtp_server):
    contacts = [{"email": f"reader{i}@example.com", "first_name": f"R{i}"} for i in range(5)]
    list_id = factories.make_list(app, contacts)
    factories.use_smtp_server(app, smtp_server.port)
    campaign_id = factories.make_campaign(app, list_id)
    runner = build_runner(campaign_id, {**app.config, "SMTP_CONNECTIONS": 1}, threading.Event())
    journalled = accepted_at_each_flush(runner, app.config["HANDOVER_DIR"], campaign_id)

    outcome = runner.run(campaign_id)

    sent = {row.id for row in factories.deliveries(app, campaign_id)}
    assert outcome.status == "finished"
    assert sent in journalled
