"""Whole campaigns through a real SMTP server: exactly once, crashes, faults, injection."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from markupsafe import escape

from messagehub.engine.process import create_db_engine, process_shares, usable_cpus
from messagehub.engine.runner import MAX_BATCH_SIZE
from messagehub.engine.sqlstore import SqlCampaignStore
from messagehub.extensions import db
from messagehub.jobs import service as jobs_service
from messagehub.supervisor.choose import choose_supervisor
from messagehub.messages.mime import address_for_wire
from messagehub.models import Campaign, Contact, JobEvent, utcnow
from tests import factories
from tests.waiting import wait_for

SUBJECT = "Frühlingsnachrichten für {{ first_name | default('Sie') }} — Ünïcödé ✓"


def wire(address: str) -> str:
    """Return an address as it appears in the SMTP envelope."""
    return address_for_wire(address)[0].casefold()


def audience(app, list_id: int) -> dict[str, Contact]:
    """Return the list's contacts with an address, by envelope address."""
    with app.app_context():
        contacts = db.session.execute(
            db.select(Contact).where(Contact.list_id == list_id, Contact.email.is_not(None))
        ).scalars().all()
        db.session.expunge_all()
    return {wire(c.email): c for c in contacts}


def received_counts(server) -> collections.Counter:
    return collections.Counter(r.casefold() for m in server.messages for r in m.recipients)


@pytest.fixture
def big_list(app, shared_data):
    """Import the 10,000-row sample file; return the list id."""
    report = factories.import_file(app, shared_data / "contacts-10k.csv")
    assert report.status == "finished"
    return report.list_id


def write_instance_config(app, instance_path: Path) -> None:
    """Give a campaign process the settings the test app runs with."""
    keys = ("SQLALCHEMY_DATABASE_URI", "RETRY_BASE_SECONDS", "RETRY_MAX_SECONDS", "SMTP_TIMEOUT")
    lines = [f"{key} = {app.config[key]!r}" for key in keys]
    (instance_path / "config.py").write_text("\n".join(lines) + "\n")


def prepare_campaign(app, list_id: int, smtp_server, instance_path: Path) -> int:
    """Create a draft campaign of the list sending to ``smtp_server``, ready for a campaign process."""
    factories.use_smtp_server(app, smtp_server.port)
    campaign_id = factories.make_campaign(app, list_id)
    write_instance_config(app, instance_path)
    return campaign_id


def start_engine(instance_path: Path, campaign_id: int) -> subprocess.Popen:
    env = {**os.environ, "MESSAGEHUB_INSTANCE_PATH": str(instance_path)}
    return subprocess.Popen(
        [sys.executable, "-m", "messagehub.engine", str(campaign_id)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_for_count(server, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(server.messages) < count:
        if process.poll() is not None:
            pytest.fail(f"campaign process exited early:\n{process.stdout.read().decode()}")
        if time.monotonic() > deadline:
            pytest.fail(f"only {len(server.messages)} of {count} messages arrived in {timeout} s")
        time.sleep(0.01)


def run_terminal_send(instance_path: Path, campaign_id: int) -> subprocess.CompletedProcess:
    """Run `messagehub campaign send`, the console script a user types, in a process of its own."""
    script = Path(sys.executable).parent / "messagehub"
    env = {**os.environ, "MESSAGEHUB_INSTANCE_PATH": str(instance_path)}
    return subprocess.run(
        [str(script), "campaign", "send", str(campaign_id)], env=env, capture_output=True, text=True, timeout=600
    )


def test_10k_campaign_exactly_once(app, big_list, smtp_server, instance_path):
    factories.use_smtp_server(app, smtp_server.port)
    campaign_id = factories.make_campaign(app, big_list, subject=SUBJECT)
    write_instance_config(app, instance_path)

    result = run_terminal_send(instance_path, campaign_id)

    assert result.returncode == 0, result.stderr
    assert "Sending campaign" in result.stderr
    assert result.stdout.startswith("finished: ")
    expected = audience(app, big_list)
    counts = received_counts(smtp_server)
    assert len(expected) > 9000
    assert set(counts) == set(expected)
    assert max(counts.values()) == 1
    assert factories.campaign(app, campaign_id).sent == len(expected)
    assert factories.campaign(app, campaign_id).status == "finished"
    check_messages(smtp_server, expected)


def test_terminal_send_not_taken_for_ended_unit(app, big_list, smtp_server, instance_path):
    # Left "background" by an earlier run whose process has ended: the Jobs
    # and Monitor pages reconcile while the terminal sends.
    factories.use_smtp_server(app, smtp_server.port)
    campaign_id = factories.make_campaign(app, big_list, run_mode="background")
    store = SqlCampaignStore(create_db_engine(app.config["SQLALCHEMY_DATABASE_URI"]))
    store.start_run(campaign_id)
    store.finish_run(campaign_id, "paused")
    write_instance_config(app, instance_path)
    supervisor = choose_supervisor({"SUPERVISOR": "process", "INSTANCE_PATH": str(instance_path)})
    script = Path(sys.executable).parent / "messagehub"
    env = {**os.environ, "MESSAGEHUB_INSTANCE_PATH": str(instance_path)}
    process = subprocess.Popen(
        [str(script), "campaign", "send", str(campaign_id)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    statuses = ["paused"]
    while process.poll() is None:
        with app.app_context():
            jobs_service.reconcile(db.session, supervisor)
            status = db.session.get(Campaign, campaign_id).status
        if status != statuses[-1]:
            statuses.append(status)
        time.sleep(0.05)
    output, errors = process.communicate()

    assert process.returncode == 0, errors
    assert output.startswith("finished: ")
    assert statuses == ["paused", "running", "finished"]
    assert max(received_counts(smtp_server).values()) == 1
    events = job_events(app, campaign_id)
    assert [(event.kind, event.mode, event.supervisor) for event in events] == [("resume", "foreground", "terminal")]


def job_events(app, campaign_id: int) -> list[JobEvent]:
    with app.app_context():
        events = db.session.execute(db.select(JobEvent).where(JobEvent.campaign_id == campaign_id)).scalars().all()
        db.session.expunge_all()
    return list(events)


def check_messages(server, expected: dict[str, Contact]) -> None:
    """Check that every message parses, has both parts and greets its contact by name."""
    scripts = collections.Counter()
    for received in server.messages:
        message = factories.parse(received.data)
        contact = expected[received.recipients[0].casefold()]
        text = message.get_body(("plain",)).get_content()
        html = message.get_body(("html",)).get_content()
        first_name = contact.first_name or "there"
        assert message.get_content_type() == "multipart/alternative"
        assert f"Hello {first_name}," in text
        assert f"Hello {escape(first_name)}," in html
        assert str(message["Subject"]) == f"Frühlingsnachrichten für {contact.first_name or 'Sie'} — Ünïcödé ✓"
        assert message["Message-ID"]
        assert message["Date"]
        scripts.update({ch for ch in first_name if not ch.isascii()})

    # The sample names cover many scripts; make sure the loop above saw them.
    assert any("\u0400" <= ch <= "\u04ff" for ch in scripts)  # Cyrillic
    assert any("\u4e00" <= ch <= "\u9fff" for ch in scripts)  # CJK


def test_sigkill_midway_resumes_exactly_once(app, big_list, smtp_server, instance_path):
    campaign_id = prepare_campaign(app, big_list, smtp_server, instance_path)

    for kill_at in (1500, 4000):
        process = start_engine(instance_path, campaign_id)
        wait_for_count(smtp_server, kill_at, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        process.stdout.close()
    process = start_engine(instance_path, campaign_id)
    output, _ = process.communicate(timeout=300)

    assert process.returncode == 0, output.decode()
    expected = audience(app, big_list)
    counts = received_counts(smtp_server)
    missing = set(expected) - set(counts)
    unconfirmed = {
        wire(row.address)
        for row in factories.deliveries(app, campaign_id)
        if (row.provider_reply or "").startswith("unconfirmed")
    }
    assert [address for address, n in counts.items() if n > 1] == []
    assert set(counts) <= set(expected)
    # Each kill may lose the message in flight on each connection, written or
    # only journalled, so two kills lose at most two per connection. Each is
    # marked "unconfirmed", never silently.
    assert missing <= unconfirmed
    assert len(missing) <= 2 * app.config["SMTP_CONNECTIONS"]
    assert factories.campaign(app, campaign_id).status == "finished"
    assert factories.campaign(app, campaign_id).sent == len(expected)


def test_sigterm_pauses_cleanly(app, big_list, smtp_server, instance_path):
    campaign_id = prepare_campaign(app, big_list, smtp_server, instance_path)
    process = start_engine(instance_path, campaign_id)
    wait_for_count(smtp_server, 300, process)

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)

    assert process.returncode == 0, output.decode()
    rows = factories.deliveries(app, campaign_id)
    statuses = collections.Counter(row.status for row in rows)
    assert statuses["sending"] == 0
    assert statuses["sent"] == len(smtp_server.messages)
    assert factories.campaign(app, campaign_id).status == "paused"
    assert "stopping after the message in flight" in output.decode()


def fault_contacts(count: int = 12) -> list[dict]:
    return [
        {"email": f"person{i}@example.com", "first_name": f"Person{i}", "last_name": "Test"} for i in range(count)
    ]


def test_server_faults_handled(app, runner, smtp_server):
    # One connection, so the dropped connection hits person0 and every count below is exact.
    app.config["SMTP_CONNECTIONS"] = 1
    list_id = factories.make_list(app, fault_contacts())
    smtp_server.defer("person1@example.com", times=2)
    smtp_server.defer("person2@example.com", times=1, reply="452 4.2.2 mailbox full, try later")
    smtp_server.reject("person3@example.com", reply="550 5.1.1 <person3@example.com>: user unknown")
    smtp_server.drop_connection_once(at="RCPT")
    factories.use_smtp_server(app, smtp_server.port)
    campaign_id = factories.make_campaign(app, list_id)

    result = runner.invoke(args=["campaign", "send", str(campaign_id)])

    assert result.exit_code == 0, result.output
    counts = received_counts(smtp_server)
    assert set(counts) == {f"person{i}@example.com" for i in range(12) if i != 3}
    assert max(counts.values()) == 1
    rows = {row.address: row for row in factories.deliveries(app, campaign_id)}
    assert rows["person3@example.com"].status == "failed"
    assert rows["person3@example.com"].provider_reply.startswith("550 5.1.1")
    assert rows["person1@example.com"].attempts == 3
    assert rows["person2@example.com"].attempts == 2
    assert factories.campaign(app, campaign_id).failed == 1


def test_deferral_gives_up_after_max_attempts(app, runner, smtp_server):
    list_id = factories.make_list(app, fault_contacts(2))
    smtp_server.defer("person0@example.com", times=100)
    factories.use_smtp_server(app, smtp_server.port)
    app.config["MAX_ATTEMPTS"] = 3
    campaign_id = factories.make_campaign(app, list_id)

    runner.invoke(args=["campaign", "send", str(campaign_id)])

    rows = {row.address: row for row in factories.deliveries(app, campaign_id)}
    assert rows["person0@example.com"].status == "failed"
    assert "gave up after 3 attempts" in rows["person0@example.com"].provider_reply
    assert rows["person1@example.com"].status == "sent"


def test_header_injection_neutralised(app, runner, smtp_server):
    list_id = factories.make_list(
        app,
        [
            {"email": "eve@example.com", "first_name": "Eve\r\nBcc: victim@example.org", "last_name": "X\nTo: b@example.org"},
            {"email": "bob@example.com", "first_name": "Bob", "last_name": "Builder"},
        ],
    )
    factories.use_smtp_server(app, smtp_server.port)
    campaign_id = factories.make_campaign(
        app,
        list_id,
        from_name="News\r\nBcc: spy@example.org",
        subject="Hi {{ first_name }}",
    )

    result = runner.invoke(args=["campaign", "send", str(campaign_id)])

    assert result.exit_code == 0, result.output
    assert sorted(received_counts(smtp_server)) == ["bob@example.com", "eve@example.com"]
    for received in smtp_server.messages:
        message = factories.parse(received.data)
        assert sorted(message.keys()) == sorted(
            ["Subject", "From", "To", "Date", "Message-ID", "MIME-Version", "Content-Type"]
        )
        header_block = received.data.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace")
        assert len(received.recipients) == 1
        assert not any(line.lower().startswith(("bcc:", "to: b@")) for line in header_block.split("\r\n"))
        assert message["To"].addresses[0].addr_spec == received.recipients[0]


def test_lost_worker_fails_then_restarts(app, big_list, smtp_server, instance_path):
    campaign_id = prepare_campaign(app, big_list, smtp_server, instance_path)
    process = start_engine(instance_path, campaign_id)
    wait_for_count(smtp_server, 1500, process)
    worker = int(Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()[0])

    os.kill(worker, signal.SIGKILL)
    # Shown on the campaign's pages while the other worker sends what is left.
    notice = wait_for(lambda: factories.campaign(app, campaign_id).last_error, bool, timeout=30, interval=0.02)
    output, _ = process.communicate(timeout=120)

    text = output.decode()
    # Status 1, which systemd restarts; 3 would mean failed for good.
    assert process.returncode == 1, text
    assert f"(pid {worker}) of campaign {campaign_id} ended with signal SIGKILL" in text
    assert "Traceback" not in text
    assert notice.startswith(f"Worker campaign-{campaign_id}-worker-0 ended with signal SIGKILL. The other workers")
    assert factories.campaign(app, campaign_id).status == "failed"
    # The other worker sent the lost one's share; only the batch it had claimed waits.
    statuses = collections.Counter(row.status for row in factories.deliveries(app, campaign_id))
    assert statuses["queued"] == 0
    assert 0 < statuses["sending"] <= MAX_BATCH_SIZE

    restarted = start_engine(instance_path, campaign_id)
    output, _ = restarted.communicate(timeout=300)

    assert restarted.returncode == 0, output.decode()
    expected = audience(app, big_list)
    counts = received_counts(smtp_server)
    assert [address for address, n in counts.items() if n > 1] == []
    # The killed worker may leave one message per connection unconfirmed.
    assert len(set(expected) - set(counts)) <= max(process_shares(app.config["SMTP_CONNECTIONS"], usable_cpus()))
    assert factories.campaign(app, campaign_id).status == "finished"


def test_send_refused_beside_live_run(app, runner, smtp_server):
    # A run in the web app, alive a second ago: a second run from the
    # command line would send some of its messages in flight again.
    factories.use_smtp_server(app, smtp_server.port)
    campaign_id = factories.make_campaign(
        app, factories.make_list(app, fault_contacts(2)),
        status="running", run_mode="foreground", started_at=utcnow(), heartbeat_at=utcnow(),
    )

    result = runner.invoke(args=["campaign", "send", str(campaign_id)])

    assert result.exit_code == 1
    assert f"Campaign {campaign_id} is sending in the web app" in result.output
    assert smtp_server.messages == []
    assert factories.deliveries(app, campaign_id) == []
