"""ProcessSupervisor with real campaign processes on a real SQLite database."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from messagehub.supervisor.base import UnitNotFound
from messagehub.supervisor.process import ProcessSupervisor, process_start_time, write_record
from tests import factories
from tests.conftest import make_app


def wait_until(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def outbox_app(instance_path: Path):
    app = make_app(instance_path)
    yield app
    with app.app_context():
        from messagehub.extensions import db

        db.engine.dispose()


@pytest.fixture
def supervisor(instance_path: Path):
    supervisor = ProcessSupervisor(instance_path, stop_timeout=20.0)
    yield supervisor
    # Kill only engines this test launched: each leads a session of its own.
    for state in supervisor.states():
        if state.is_running and state.main_pid != os.getpid() and os.getsid(state.main_pid) == state.main_pid:
            os.killpg(state.main_pid, 9)


def small_campaign(app) -> int:
    contacts = [{"email": f"person{i}@example.com", "first_name": f"P{i}"} for i in range(5)]
    list_id = factories.make_list(app, contacts)
    return factories.make_campaign(app, list_id, delivery_method="outbox")


def big_campaign(app, shared_data: Path) -> int:
    report = factories.import_file(app, shared_data / "contacts-10k.csv")
    return factories.make_campaign(app, report.list_id, delivery_method="outbox")


def test_launch_runs_to_finish(outbox_app, supervisor):
    campaign_id = small_campaign(outbox_app)

    supervisor.launch(campaign_id)
    wait_until(lambda: not supervisor.state(campaign_id).is_running, what="the campaign process to exit")

    state = supervisor.state(campaign_id)
    assert state.active_state == "inactive"
    assert state.sub_state == "dead"
    assert state.exit_status == 0
    assert state.result == "success"
    assert state.unit == f"messagehub-campaign@{campaign_id}.service"
    assert factories.campaign(outbox_app, campaign_id).status == "finished"
    assert factories.campaign(outbox_app, campaign_id).sent == 5


def test_journal_has_engine_lines(outbox_app, supervisor):
    campaign_id = small_campaign(outbox_app)

    supervisor.launch(campaign_id)
    wait_until(lambda: not supervisor.state(campaign_id).is_running, what="the campaign process to exit")

    lines = supervisor.journal(campaign_id)
    assert any(f"started campaign {campaign_id}" in line for line in lines)
    assert any(f"finished campaign {campaign_id}" in line for line in lines)
    assert len(supervisor.journal(campaign_id, lines=1)) == 1


def test_unknown_campaign_fails(outbox_app, supervisor):
    supervisor.launch(999)
    wait_until(lambda: not supervisor.state(999).is_running, what="the campaign process to exit")

    state = supervisor.state(999)
    assert state.active_state == "failed"
    assert state.exit_status == 2
    assert state.result == "exit-code"


def test_stop_pauses_campaign(outbox_app, supervisor, shared_data):
    campaign_id = big_campaign(outbox_app, shared_data)

    supervisor.launch(campaign_id)
    wait_until(
        lambda: any("started campaign" in line for line in supervisor.journal(campaign_id)),
        what="the engine to start sending",
    )
    running = supervisor.state(campaign_id)
    supervisor.stop(campaign_id)
    wait_until(lambda: supervisor.state(campaign_id).exit_status is not None, what="the exit status")

    state = supervisor.state(campaign_id)
    assert running.is_running
    assert running.memory_bytes > 0
    assert running.cpu_seconds >= 0
    assert state.active_state == "inactive"
    assert state.exit_status == 0
    assert factories.campaign(outbox_app, campaign_id).status == "paused"
    assert process_start_time(running.main_pid) is None


def test_double_launch_one_process(outbox_app, supervisor, shared_data):
    campaign_id = big_campaign(outbox_app, shared_data)

    supervisor.launch(campaign_id)
    first = supervisor.state(campaign_id)
    supervisor.launch(campaign_id)
    second = supervisor.state(campaign_id)
    supervisor.stop(campaign_id)

    assert first.is_running
    assert second.main_pid == first.main_pid
    assert second.restarts == 0


def test_reused_pid_not_running(supervisor, instance_path):
    supervisor.run_dir.mkdir(parents=True)
    own_start = process_start_time(os.getpid())
    record = {"pid": os.getpid(), "start_time": own_start + 1, "started_at": "2026-01-01T00:00:00+00:00",
              "restarts": 0, "exit_status": None}
    write_record(supervisor.record_path(5), record)

    state = supervisor.state(5)
    assert not state.is_running
    assert state.result == "interrupted"
    assert state.main_pid is None
    with pytest.raises(UnitNotFound):
        supervisor.stop(5)


def test_live_pid_counts(supervisor):
    supervisor.run_dir.mkdir(parents=True)
    record = {"pid": os.getpid(), "start_time": process_start_time(os.getpid()),
              "started_at": "2026-01-01T00:00:00+00:00", "restarts": 0, "exit_status": None}
    write_record(supervisor.record_path(6), record)

    state = supervisor.state(6)
    assert state.is_running
    assert state.main_pid == os.getpid()


def test_states_lists_records(supervisor):
    supervisor.run_dir.mkdir(parents=True)
    for campaign_id in (3, 11):
        record = {"pid": 1, "start_time": -1, "started_at": "2026-01-01T00:00:00+00:00",
                  "restarts": 0, "exit_status": 0}
        write_record(supervisor.record_path(campaign_id), record)
    (supervisor.run_dir / "campaign-x.json").write_text(json.dumps({}))

    assert [state.campaign_id for state in supervisor.states()] == [3, 11]


def test_state_unknown_is_none(supervisor):
    assert supervisor.state(1) is None
    assert supervisor.journal(1) == []
