"""The dashboard: what is sending now, what was sent lately, and how each provider is doing."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template
from sqlalchemy import func, select

from messagehub.extensions import db
from messagehub.jobs.service import reconcile_or_log
from messagehub.main import service
from messagehub.models import Campaign, CampaignStatus, Contact, ContactList, utcnow
from messagehub.supervisor.choose import choose_supervisor

bp = Blueprint("main", __name__)

# Campaigns listed under "Recent campaigns".
RECENT_CAMPAIGNS = 10


@bp.get("/")
def dashboard():
    """Show running and recent campaigns, today's and this month's totals, and provider health."""
    now = utcnow()
    recent = db.session.execute(select(Campaign).order_by(Campaign.id.desc()).limit(RECENT_CAMPAIGNS)).scalars().all()
    lists = db.session.execute(select(func.count(ContactList.id))).scalar()
    contacts = db.session.execute(select(func.count(Contact.id))).scalar()
    return render_template(
        "main/dashboard.html",
        running=_running(),
        recent=recent,
        totals=service.totals(db.session, now),
        health=service.provider_health(db.session, now),
        window_minutes=int(service.HEALTH_WINDOW.total_seconds() // 60),
        lists=lists,
        contacts=contacts,
    )


@bp.get("/running")
def running():
    """Return the panel of running campaigns, which the dashboard polls every two seconds."""
    return render_template("main/_running.html", running=_running())


def _running() -> list[Campaign]:
    # A run that died with its process (a web worker, a unit) would otherwise stay listed for good.
    reconcile_or_log(db.session, choose_supervisor(current_app.config))
    query = select(Campaign).where(Campaign.status == CampaignStatus.RUNNING.value).order_by(Campaign.id)
    return db.session.execute(query).scalars().all()
