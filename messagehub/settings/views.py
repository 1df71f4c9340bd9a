"""The settings page: SMTP server and "Test connection"."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, flash, redirect, render_template, url_for
from flask_login import current_user

from messagehub.auth.access import role_required
from messagehub.delivery_settings import load_smtp_settings, save_smtp_settings
from messagehub.extensions import db
from messagehub.models import Role
from messagehub.providers.diagnostics import check_smtp
from messagehub.providers.smtp import SmtpSettings
from messagehub.secretbox import SecretUnreadable
from messagehub.settings.forms import SmtpCheckForm, SmtpForm

bp = Blueprint("settings", __name__, url_prefix="/settings")
audit = logging.getLogger("messagehub.audit")


def _stored_settings() -> tuple[SmtpSettings | None, str | None]:
    try:
        return load_smtp_settings(db.session, current_app.config["SECRET_KEY"]), None
    except SecretUnreadable as e:
        return None, str(e)


@bp.get("/")
def index():
    """Show the delivery settings; the password is never shown back."""
    settings, error = _stored_settings()
    form = SmtpForm(obj=settings) if settings else SmtpForm()
    form.password.data = ""
    if error:
        flash(error, "error")
    return render_template(
        "settings/index.html", form=form, check_form=SmtpCheckForm(), has_password=bool(settings and settings.password), steps=None
    )


@bp.post("/smtp")
@role_required(Role.ADMIN)
def save_smtp():
    """Save the SMTP settings; an empty password field keeps the stored password."""
    form = SmtpForm()
    if not form.validate_on_submit():
        return render_template("settings/index.html", form=form, check_form=SmtpCheckForm(), has_password=False, steps=None), 400

    settings = SmtpSettings(
        host=form.host.data.strip(),
        port=form.port.data,
        security=form.security.data,
        username=(form.username.data or "").strip(),
        password=form.password.data or "",
        timeout=form.timeout.data,
        verify_tls=form.verify_tls.data,
    )
    save_smtp_settings(db.session, current_app.config["SECRET_KEY"], settings, keep_password=not form.password.data)
    db.session.commit()
    audit.info("user %s changed the SMTP settings (host %s)", current_user.username, settings.host)
    flash("SMTP settings saved. Use “Test connection” to try them.", "success")
    return redirect(url_for("settings.index"), code=303)


@bp.post("/smtp/check")
@role_required(Role.ADMIN)
def check_smtp_view():
    """Go through name lookup, connect, TLS, login and a test message, and show each step."""
    settings, error = _stored_settings()
    check_form = SmtpCheckForm()
    # formdata=None: the posted form is the check form, so the settings form
    # must show the stored values, not read its own fields from that post.
    form = SmtpForm(formdata=None, obj=settings) if settings else SmtpForm(formdata=None)
    form.password.data = ""
    if error or settings is None:
        flash(error or "Save the SMTP settings first.", "error")
        return redirect(url_for("settings.index"), code=303)
    if not check_form.validate_on_submit():
        return render_template("settings/index.html", form=form, check_form=check_form, has_password=bool(settings.password), steps=None), 400

    steps = check_smtp(
        settings,
        test_recipient=check_form.test_recipient.data or None,
        sender=check_form.sender.data or check_form.test_recipient.data or f"messagehub@{settings.host}",
    )
    return render_template("settings/index.html", form=form, check_form=check_form, has_password=bool(settings.password), steps=steps)
