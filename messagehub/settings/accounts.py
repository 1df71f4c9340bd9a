"""Provider account pages: add, edit, delete, and "Test connection"."""

from __future__ import annotations

import logging

from flask import abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user
from sqlalchemy import select

from messagehub.auth.access import role_required
from messagehub.engine import status as campaign_status
from messagehub.extensions import db
from messagehub.models import Campaign, ProviderAccount, Role
from messagehub.provider_accounts import KINDS, AccountProblem, kind_of, open_account_sender, store_secrets
from messagehub.secretbox import SecretUnreadable
from messagehub.settings.account_forms import account_form_class
from messagehub.settings.views import bp

audit = logging.getLogger("messagehub.audit")


@bp.get("/accounts/new/<kind>")
@role_required(Role.ADMIN)
def new_account(kind: str):
    """Show an empty form for an account of ``kind``, with the provider's default rate."""
    provider = KINDS.get(kind) or abort(404)
    form = account_form_class(provider, has_secrets=False)(rate_per_second=provider.default_rate)
    return render_template("settings/account.html", form=form, provider=provider, account=None, steps=None)


@bp.post("/accounts/new/<kind>")
@role_required(Role.ADMIN)
def create_account(kind: str):
    """Create an account; its secrets are stored encrypted."""
    provider = KINDS.get(kind) or abort(404)
    form = account_form_class(provider, has_secrets=False)()
    account = ProviderAccount(kind=kind, settings={}, secrets_encrypted="")
    if not form.validate_on_submit() or not _name_is_free(form, None):
        return render_template("settings/account.html", form=form, provider=provider, account=None, steps=None), 400

    _fill(account, form)
    db.session.add(account)
    db.session.commit()
    audit.info("user %s added %s account %s (%s)", current_user.username, provider.label, account.id, account.name)
    flash(f"Account “{account.name}” saved. Use “Test connection” to try it.", "success")
    return redirect(url_for("settings.account", account_id=account.id), code=303)


@bp.get("/accounts/<int:account_id>")
def account(account_id: int):
    """Show an account; secret fields are never filled in."""
    account = db.get_or_404(ProviderAccount, account_id)
    provider = kind_of(account)
    form = account_form_class(provider, has_secrets=True)(obj=_AccountValues(account))
    return render_template("settings/account.html", form=form, provider=provider, account=account, steps=None)


@bp.post("/accounts/<int:account_id>")
@role_required(Role.ADMIN)
def save_account(account_id: int):
    """Save an account; a secret field left empty keeps the stored secret."""
    account = db.get_or_404(ProviderAccount, account_id)
    provider = kind_of(account)
    form = account_form_class(provider, has_secrets=True)()
    if not form.validate_on_submit() or not _name_is_free(form, account.id):
        return render_template("settings/account.html", form=form, provider=provider, account=account, steps=None), 400

    try:
        _fill(account, form)
    except SecretUnreadable as e:
        flash(f"{e} Enter every secret of the account again.", "error")
        return render_template("settings/account.html", form=form, provider=provider, account=account, steps=None), 400
    db.session.commit()
    audit.info("user %s changed %s account %s (%s)", current_user.username, provider.label, account.id, account.name)
    flash(f"Account “{account.name}” saved.", "success")
    return redirect(url_for("settings.account", account_id=account.id), code=303)


@bp.post("/accounts/<int:account_id>/check")
@role_required(Role.ADMIN)
def check_account(account_id: int):
    """Ask the provider whether it accepts the account's credentials, and show each step."""
    account = db.get_or_404(ProviderAccount, account_id)
    provider = kind_of(account)
    form = account_form_class(provider, has_secrets=True)(formdata=None, obj=_AccountValues(account))
    try:
        sender = open_account_sender(account, current_app.config["SECRET_KEY"], float(current_app.config["PROVIDER_TIMEOUT"]))
    except (AccountProblem, SecretUnreadable) as e:
        flash(str(e), "error")
        return redirect(url_for("settings.account", account_id=account.id), code=303)

    try:
        steps = sender.check()
    finally:
        sender.close()
    passed = all(ok for _, ok, _ in steps)
    audit.info(
        "user %s tested %s account %s: %s", current_user.username, provider.label, account.id,
        "passed" if passed else "failed",
    )
    return render_template("settings/account.html", form=form, provider=provider, account=account, steps=steps)


@bp.post("/accounts/<int:account_id>/delete")
@role_required(Role.ADMIN)
def delete_account(account_id: int):
    """Delete an account unless a launched campaign that has not finished sends through it.

    A paused campaign cannot change its account (only drafts are editable),
    so deleting the account would leave it unable to resume.
    """
    account = db.get_or_404(ProviderAccount, account_id)
    unfinished = (campaign_status.RUNNING, campaign_status.PAUSED, campaign_status.FAILED)
    in_use = db.session.execute(
        select(Campaign.id).where(Campaign.provider_account_id == account.id, Campaign.status.in_(unfinished))
    ).scalars().all()
    if in_use:
        flash(
            f"Account “{account.name}” is used by campaign {', '.join(map(str, in_use))}, which has not "
            "finished: let it finish first, or it could never resume.",
            "error",
        )
        return redirect(url_for("settings.account", account_id=account.id), code=303)

    db.session.delete(account)
    db.session.commit()
    audit.info("user %s deleted account %s (%s)", current_user.username, account_id, account.name)
    flash(f"Account “{account.name}” deleted.", "success")
    return redirect(url_for("settings.index"), code=303)


class _AccountValues:
    """An account's shown values as form attributes: name, rate and non-secret settings."""

    def __init__(self, account: ProviderAccount):
        self.name = account.name
        self.rate_per_second = account.rate_per_second
        for spec in kind_of(account).setting_fields:
            setattr(self, spec.name, account.settings.get(spec.name, ""))


def _name_is_free(form, account_id: int | None) -> bool:
    """Add an error to the name field when another account has that name."""
    clash = db.session.execute(
        select(ProviderAccount.id).where(ProviderAccount.name == form.name.data.strip())
    ).scalar()
    if clash is not None and clash != account_id:
        form.name.errors.append("Another account has this name.")
        return False
    return True


def _fill(account: ProviderAccount, form) -> None:
    """Copy the form into the account, encrypting the secrets."""
    provider = kind_of(account)
    account.name = form.name.data.strip()
    account.rate_per_second = form.rate_per_second.data
    account.settings = {spec.name: (form[spec.name].data or "").strip() for spec in provider.setting_fields}
    store_secrets(
        account,
        current_app.config["SECRET_KEY"],
        {spec.name: (form[spec.name].data or "").strip() for spec in provider.secret_fields},
    )
