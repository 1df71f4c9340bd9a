"""The Background Jobs page, each campaign's monitor page, and stop, resume and restart."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from messagehub.auth.access import role_required
from messagehub.engine import status as campaign_status
from messagehub.extensions import db
from messagehub.htmx import wants_panel
from messagehub.redirects import local_target
from messagehub.jobs import service
from messagehub.models import Campaign, JobEvent, Role
from messagehub.supervisor.base import SupervisorError
from messagehub.supervisor.choose import choose_supervisor

bp = Blueprint("jobs", __name__, url_prefix="/jobs")

JOURNAL_LINES = 40
log = logging.getLogger("messagehub.web")
_reconciled_at_start = False


@bp.before_app_request
def reconcile_at_start() -> None:
    """Compare the database with the supervisor once per web process, on its first request."""
    global _reconciled_at_start
    if _reconciled_at_start:
        return
    _reconciled_at_start = True
    try:
        service.reconcile(db.session, supervisor())
    except (SupervisorError, SQLAlchemyError) as e:
        db.session.rollback()
        log.warning("error reconciling campaigns with the supervisor at start-up: %s", e)


def supervisor():
    """Return the supervisor this app runs background campaigns with."""
    return choose_supervisor(current_app.config)


@bp.get("/")
def index():
    """List every campaign unit with its live state; htmx refreshes the rows every two seconds."""
    current = supervisor()
    rows = service.job_rows(db.session, current)
    template = "jobs/_rows.html" if wants_panel() else "jobs/index.html"
    return render_template(template, rows=rows, supervisor=current)


@bp.get("/<int:campaign_id>")
def monitor(campaign_id: int):
    """Show one campaign's unit, progress, journal and history; the panel refreshes itself."""
    campaign = db.get_or_404(Campaign, campaign_id)
    current = supervisor()
    service.reconcile(db.session, current)
    state, journal, error = _unit_view(current, campaign_id)
    events = db.session.execute(
        select(JobEvent).where(JobEvent.campaign_id == campaign_id).order_by(JobEvent.id.desc()).limit(50)
    ).scalars().all()
    template = "jobs/_panel.html" if wants_panel() else "jobs/monitor.html"
    return render_template(
        template,
        campaign=campaign,
        state=state,
        journal=journal,
        error=error,
        events=events,
        supervisor=current,
        rate=service.send_rate(campaign),
    )


def _unit_view(current, campaign_id: int):
    """Return the unit's state and journal, or the error that prevented reading them."""
    try:
        return current.state(campaign_id), current.journal(campaign_id, JOURNAL_LINES), None
    except SupervisorError as e:
        return None, [], str(e)


def _act(campaign_id: int, action, success: str):
    """Run a supervisor action for a campaign and report the outcome as a flash message."""
    campaign = db.get_or_404(Campaign, campaign_id)
    try:
        action(campaign)
    except (SupervisorError, campaign_status.StatusError) as e:
        flash(str(e), "error")
    else:
        flash(success.format(id=campaign_id), "success")
    monitor = url_for("jobs.monitor", campaign_id=campaign_id)
    return redirect(local_target(request.form.get("next"), monitor), code=303)


@bp.post("/<int:campaign_id>/stop")
@role_required(Role.OPERATOR)
def stop(campaign_id: int):
    """Stop a campaign's unit; the run pauses after the message in flight."""
    return _act(
        campaign_id,
        lambda campaign: service.stop(db.session, supervisor(), campaign, current_user.username),
        "Stopping campaign {id}: it pauses after the message in flight.",
    )


@bp.post("/<int:campaign_id>/resume")
@role_required(Role.OPERATOR)
def resume(campaign_id: int):
    """Start a paused or interrupted campaign again in the background."""
    return _act(
        campaign_id,
        lambda campaign: service.resume_background(db.engine, db.session, supervisor(), campaign, current_user.username),
        "Campaign {id} resumed in the background.",
    )


@bp.post("/<int:campaign_id>/restart")
@role_required(Role.OPERATOR)
def restart(campaign_id: int):
    """Restart a campaign's unit; the new run carries on where the old one stopped."""
    return _act(
        campaign_id,
        lambda campaign: service.restart(db.session, supervisor(), campaign, current_user.username),
        "Campaign {id} restarted.",
    )
