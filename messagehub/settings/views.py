"""The settings page: SMTP server, provider accounts, "Test connection" and sending defaults."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, flash, redirect, render_template, url_for
from wtforms import SelectChoice
from flask_login import current_user

from messagehub.auth.access import role_required
from messagehub.campaigns.service import SendingDefaults, delivery_choices, load_sending_defaults, save_sending_defaults
from messagehub.delivery_settings import load_smtp_settings, save_smtp_settings
from messagehub.extensions import db
from messagehub.models import Channel, ProviderAccount, Role
from messagehub.provider_accounts import KINDS
from messagehub.providers.diagnostics import check_smtp
from messagehub.providers.smtp import SmtpSettings
from messagehub.secretbox import SecretUnreadable
from messagehub.settings.forms import SendingDefaultsForm, SmtpCheckForm, SmtpForm

bp = Blueprint("settings", __name__, url_prefix="/settings")
audit = logging.getLogger("messagehub.audit")


def _render(status: int = 200, **values):
    """Render the settings page with the provider accounts listed beside the SMTP form."""
    accounts = db.session.query(ProviderAccount).order_by(ProviderAccount.name).all()
    if "defaults_form" not in values:
        values["defaults_form"] = _defaults_form(stored=True)
    return render_template("settings/index.html", accounts=accounts, kinds=KINDS, **values), status


def _defaults_form(stored: bool) -> SendingDefaultsForm:
    """Build the sending defaults form, from the stored values or else from the posted ones."""
    no_default = [SelectChoice("", "No default")]
    form = SendingDefaultsForm(formdata=None, obj=load_sending_defaults(db.session)) if stored else SendingDefaultsForm()
    form.delivery_method.choices = no_default + _choices(Channel.EMAIL.value)
    form.sms_delivery_method.choices = no_default + _choices(Channel.SMS.value)
    return form


def _choices(channel: str) -> list[SelectChoice]:
    return [SelectChoice(value, label) for value, label in delivery_choices(db.session, channel)]


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
    return _render(form=form, check_form=SmtpCheckForm(), has_password=bool(settings and settings.password), steps=None)


@bp.post("/smtp")
@role_required(Role.ADMIN)
def save_smtp():
    """Save the SMTP settings; an empty password field keeps the stored password."""
    form = SmtpForm()
    if not form.validate_on_submit():
        return _render(400, form=form, check_form=SmtpCheckForm(), has_password=False, steps=None)

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
        return _render(400, form=form, check_form=check_form, has_password=bool(settings.password), steps=None)

    steps = check_smtp(
        settings,
        test_recipient=check_form.test_recipient.data or None,
        sender=check_form.sender.data or check_form.test_recipient.data or f"messagehub@{settings.host}",
    )
    return _render(form=form, check_form=check_form, has_password=bool(settings.password), steps=steps)


@bp.post("/defaults")
@role_required(Role.ADMIN)
def save_defaults():
    """Save the sender fields and ways of sending that new campaigns start with."""
    defaults_form = _defaults_form(stored=False)
    if not defaults_form.validate_on_submit():
        flash("Sending defaults not saved: correct the fields marked below.", "error")
        return _render_with_stored_smtp(400, defaults_form)

    values = {name: (defaults_form[name].data or "").strip() for name in SendingDefaults.__dataclass_fields__}
    save_sending_defaults(db.session, SendingDefaults(**values))
    db.session.commit()
    audit.info("user %s changed the sending defaults", current_user.username)
    flash("Sending defaults saved. New campaigns start with them.", "success")
    return redirect(url_for("settings.index"), code=303)


def _render_with_stored_smtp(status: int, defaults_form: SendingDefaultsForm):
    """Render the page with the SMTP form showing what is stored, beside a posted defaults form."""
    settings, _ = _stored_settings()
    form = SmtpForm(formdata=None, obj=settings) if settings else SmtpForm(formdata=None)
    form.password.data = ""
    has_password = bool(settings and settings.password)
    return _render(
        status, form=form, check_form=SmtpCheckForm(formdata=None), has_password=has_password, steps=None,
        defaults_form=defaults_form,
    )
