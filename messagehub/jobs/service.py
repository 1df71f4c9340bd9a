"""Background runs: launch, stop, resume and restart through the supervisor, and reconciliation.

Reconciliation compares the database with the supervisor's view of the
processes. A campaign marked running whose process is gone is paused with the
reason, so it never stays "running", and its exit goes into the job history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from messagehub.engine import status as campaign_status
from messagehub.engine.process import LIVENESS_INTERVAL
from messagehub.engine.sqlstore import SqlCampaignStore
from messagehub.models import Campaign, JobEvent, utcnow
from messagehub.supervisor.base import Supervisor, SupervisorError, UnitState, unit_name

log = logging.getLogger("messagehub.web")
audit = logging.getLogger("messagehub.audit")

BACKGROUND = "background"
FOREGROUND = "foreground"

# A foreground run whose liveness mark is older than this died with its web
# process. NOTE: a single SMTP operation blocked for longer than this (the
# SMTP timeout can be set up to 600 s) would make a live run look dead.
FOREGROUND_TIMEOUT = timedelta(seconds=12 * LIVENESS_INTERVAL)

# Event kinds of the job history.
LAUNCH, STOP, RESUME, RESTART, EXIT = "launch", "stop", "resume", "restart", "exit"


@dataclass
class JobRow:
    """One line of the Background Jobs page: a campaign and its process, if any."""

    campaign: Campaign
    state: UnitState | None

    @property
    def unit(self) -> str:
        return unit_name(self.campaign.id)

    @property
    def active_state(self) -> str:
        return self.state.active_state if self.state else "inactive"

    @property
    def interrupted(self) -> bool:
        """Tell whether the campaign stopped without finishing and can be resumed."""
        return self.campaign.status in (campaign_status.PAUSED, campaign_status.FAILED) and bool(self.campaign.last_error)


def record(session: Session, campaign_id: int, kind: str, actor: str, supervisor: str = "", **fields) -> JobEvent:
    """Add an entry to the campaign's job history; the caller commits."""
    event = JobEvent(campaign_id=campaign_id, kind=kind, actor=actor, supervisor=supervisor, **fields)
    session.add(event)
    return event


def start_kind(campaign: Campaign) -> str:
    """Return the job history kind of a run about to start: a launch for a campaign never started, else a resume."""
    return LAUNCH if campaign.started_at is None else RESUME


def mark_foreground(session: Session, campaign: Campaign, kind: str, actor: str, origin: str) -> None:
    """Record a run in the web app or a terminal (``origin``), whose liveness is judged by its heartbeat, not a unit."""
    campaign.run_mode = FOREGROUND
    record(session, campaign.id, kind, actor, origin, mode=FOREGROUND)
    session.commit()


def launch_background(engine: Engine, session: Session, supervisor: Supervisor, campaign: Campaign, actor: str) -> None:
    """Start the campaign's unit, then mark the campaign running and queue its audience.

    The unit starts first so that the engine's start-up (about 0.4 s of
    imports, measured on a 2-core machine) overlaps the queueing of a large
    audience. Whichever of the two calls ``start_run`` first queues the
    audience, and the other reads the run as started.

    :raises StatusError: the campaign cannot run, or a run of it is sending;
        nothing was started.
    :raises SupervisorError: the supervisor refused or failed; the campaign is unchanged.
    """
    kind = start_kind(campaign)
    check_no_live_run(campaign, supervisor)
    store = SqlCampaignStore(engine)
    store.check_start(campaign.id)

    try:
        supervisor.launch(campaign.id)
    except SupervisorError as e:
        log.error(
            "error starting %s for campaign %s: %s", unit_name(campaign.id), campaign.id, e,
            extra={"campaign_id": campaign.id},
        )
        raise

    try:
        store.start_run(campaign.id)
    except campaign_status.StatusError as e:
        # check_start passed a moment ago, so another process changed the
        # campaign since. Most likely its engine started the run first, or
        # even finished a tiny campaign, so the launch still succeeded.
        log.info("campaign %s changed while launching: %s", campaign.id, e, extra={"campaign_id": campaign.id})

    session.expire(campaign)
    campaign.run_mode = BACKGROUND
    record(session, campaign.id, kind, actor, supervisor.name, mode=BACKGROUND)
    session.commit()
    audit.info("user %s %sed campaign %s in the background", actor, kind, campaign.id, extra={"campaign_id": campaign.id})


def resume_background(engine: Engine, session: Session, supervisor: Supervisor, campaign: Campaign, actor: str) -> None:
    """Start a launched campaign's unit again (see ``launch_background``).

    :raises StatusError: the campaign was never launched or cannot run.
    """
    check_launched(campaign)
    launch_background(engine, session, supervisor, campaign, actor)


def check_launched(campaign: Campaign) -> None:
    """Raise StatusError for a campaign never launched, whose first run must pass the launch checks."""
    if campaign.started_at is None:
        raise campaign_status.StatusError(
            f"Campaign {campaign.id} has not been launched yet: launch it from its page, which checks it first."
        )


def check_no_live_run(campaign: Campaign, supervisor: Supervisor, background_too: bool = True) -> None:
    """Raise StatusError while a run of the campaign is sending, in the web app or (``background_too``) in its unit.

    A second run would take the first one's messages in flight for those of
    a dead run, and send some of them again. NOTE: the engine does not check
    this itself, so a ``systemctl start`` of the unit beside a foreground run
    still starts a second run.
    """
    if campaign.status != campaign_status.RUNNING:
        return

    in_foreground = campaign.run_mode in (FOREGROUND, None)
    if not in_foreground and not background_too:
        return
    state = None if in_foreground else supervisor.state(campaign.id)
    if _why_not_running(campaign, state) is not None:
        return

    if in_foreground:
        raise campaign_status.StatusError(
            f"Campaign {campaign.id} is sending in the web app or from the command line. Pause it on its page "
            f"first. A run whose process stopped counts as interrupted after {FOREGROUND_TIMEOUT.seconds} s "
            "without a sign of life."
        )
    raise campaign_status.StatusError(f"Campaign {campaign.id} is already running in the background.")


def stop(session: Session, supervisor: Supervisor, campaign: Campaign, actor: str) -> None:
    """Ask the campaign's process to stop after the message in flight; the engine then pauses it."""
    supervisor.stop(campaign.id)
    record(session, campaign.id, STOP, actor, supervisor.name)
    session.commit()
    audit.info("user %s stopped campaign %s", actor, campaign.id, extra={"campaign_id": campaign.id})


def restart(session: Session, supervisor: Supervisor, campaign: Campaign, actor: str) -> None:
    """Restart the campaign's process; the new run resumes where the old one stopped.

    :raises StatusError: the campaign was never launched, has finished, or
        is sending in the web app.
    """
    check_launched(campaign)
    campaign_status.check_transition(campaign.id, campaign.status, campaign_status.RUNNING)
    check_no_live_run(campaign, supervisor, background_too=False)
    supervisor.restart(campaign.id)
    record(session, campaign.id, RESTART, actor, supervisor.name)
    session.commit()
    audit.info("user %s restarted campaign %s", actor, campaign.id, extra={"campaign_id": campaign.id})


def send_rate(campaign: Campaign) -> float | None:
    """Return a running campaign's messages per second since it first started, or None when it is not running.

    The clock is now, not the last heartbeat: heartbeats come every few
    seconds while the counters move with every commit, so dividing by the
    heartbeat overstated the rate early in a run many times over. Time the
    campaign spent paused counts too, so after a resume the rate reads low.
    """
    if campaign.status != campaign_status.RUNNING or campaign.started_at is None:
        return None

    seconds = (utcnow() - campaign.started_at).total_seconds()
    return campaign.sent / seconds if seconds > 0 else None


def job_rows(session: Session, supervisor: Supervisor) -> list[JobRow]:
    """Reconcile, then return every campaign that has a unit or ran in the background."""
    states = {state.campaign_id: state for state in _states(supervisor)}
    reconcile(session, supervisor, states)

    query = select(Campaign).where(
        (Campaign.id.in_(states)) | (Campaign.run_mode == BACKGROUND) | (Campaign.status == campaign_status.RUNNING)
    )
    campaigns = session.execute(query.order_by(Campaign.id.desc())).scalars().all()
    return [JobRow(campaign, states.get(campaign.id)) for campaign in campaigns]


def _states(supervisor: Supervisor) -> list[UnitState]:
    try:
        return supervisor.states()
    except SupervisorError as e:
        log.warning("error listing campaign units: %s", e)
        return []


def reconcile(session: Session, supervisor: Supervisor, states: dict[int, UnitState] | None = None) -> int:
    """Pause campaigns marked running whose run is gone, and record their exit; return how many."""
    if states is None:
        states = {state.campaign_id: state for state in _states(supervisor)}

    running = session.execute(select(Campaign).where(Campaign.status == campaign_status.RUNNING)).scalars().all()
    changed = 0
    for campaign in running:
        reason = _why_not_running(campaign, states.get(campaign.id))
        if reason is None:
            continue
        _mark_interrupted(campaign, reason)
        changed += 1

    _record_exits(session, supervisor, states)
    if changed:
        session.commit()
    return changed


def reconcile_or_log(session: Session, supervisor: Supervisor) -> None:
    """Reconcile like ``reconcile``, for pages that show running campaigns and must render even if it fails."""
    try:
        reconcile(session, supervisor)
    except (SupervisorError, SQLAlchemyError) as e:
        session.rollback()
        log.warning("error reconciling campaigns with the supervisor: %s", e)


def _why_not_running(campaign: Campaign, state: UnitState | None) -> str | None:
    """Return why a campaign marked running has no live run, or None if it has one."""
    if campaign.run_mode == FOREGROUND or campaign.run_mode is None:
        heartbeat = campaign.heartbeat_at
        if heartbeat is not None and utcnow() - heartbeat <= FOREGROUND_TIMEOUT:
            return None
        return "Interrupted: the web app process sending this campaign stopped. Resume to carry on."

    if state is not None and state.is_running:
        return None
    if state is None:
        return "Interrupted: the campaign's process is gone. Resume to carry on where it stopped."
    return (
        f"Interrupted: {state.unit} ended, {state.ending}, after {state.restarts} restarts. "
        "Its log is on the campaign's Monitor page."
    )


def _mark_interrupted(campaign: Campaign, reason: str) -> None:
    campaign_status.check_transition(campaign.id, campaign.status, campaign_status.PAUSED)
    campaign.status = campaign_status.PAUSED
    campaign.last_error = reason
    log.warning("campaign %s was marked running but has no live run: %s", campaign.id, reason, extra={"campaign_id": campaign.id})


def _record_exits(session: Session, supervisor: Supervisor, states: dict[int, UnitState]) -> None:
    """Add an "exit" history entry for each background run that ended since its last start."""
    recorded = False
    for event in _open_runs(session):
        state = states.get(event.campaign_id)
        if state is not None and state.is_running:
            continue
        record(
            session,
            event.campaign_id,
            EXIT,
            "system",
            supervisor.name,
            exit_status=state.exit_status if state else None,
            restarts=state.restarts if state else None,
            detail=(state.result or state.sub_state) if state else "process gone",
        )
        recorded = True

    if recorded:
        session.commit()


def _open_runs(session: Session) -> list[JobEvent]:
    """Return each campaign's latest history entry when it is a background start or stop with no exit after it."""
    latest = select(func.max(JobEvent.id)).group_by(JobEvent.campaign_id)
    query = select(JobEvent).where(
        JobEvent.id.in_(latest),
        JobEvent.kind.in_((LAUNCH, RESUME, RESTART, STOP)),
        JobEvent.mode != FOREGROUND,
    )
    return list(session.execute(query).scalars())
