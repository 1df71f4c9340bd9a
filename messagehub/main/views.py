"""The dashboard: what is sending now and what was sent lately."""

from __future__ import annotations

from flask import Blueprint, render_template
from sqlalchemy import func, select

from messagehub.extensions import db
from messagehub.models import Campaign, CampaignStatus, Contact, ContactList

bp = Blueprint("main", __name__)


@bp.get("/")
def dashboard():
    """Show running and recent campaigns and the size of the contact base."""
    running = db.session.execute(
        select(Campaign).where(Campaign.status == CampaignStatus.RUNNING.value).order_by(Campaign.id)
    ).scalars().all()
    recent = db.session.execute(select(Campaign).order_by(Campaign.id.desc()).limit(10)).scalars().all()
    totals = db.session.execute(select(func.coalesce(func.sum(Campaign.sent), 0), func.coalesce(func.sum(Campaign.failed), 0))).one()
    lists = db.session.execute(select(func.count(ContactList.id))).scalar()
    contacts = db.session.execute(select(func.count(Contact.id))).scalar()
    return render_template(
        "main/dashboard.html", running=running, recent=recent, sent=totals[0], failed=totals[1], lists=lists, contacts=contacts
    )
