"""Login, logout and password change pages."""

from __future__ import annotations

import logging

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user
from sqlalchemy import func, select

from messagehub.auth.access import require_login
from messagehub.auth.forms import ChangePasswordForm, LoginForm
from messagehub.auth.passwords import set_password, verify_password
from messagehub.extensions import db, login_manager
from messagehub.models import User
from messagehub.redirects import local_target

bp = Blueprint("auth", __name__)
bp.before_app_request(require_login)
audit = logging.getLogger("messagehub.audit")


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    user = db.session.get(User, int(user_id))
    return user if user is not None and not user.disabled else None


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the login form and log the user in."""
    form = LoginForm()
    if form.validate_on_submit():
        user = db.session.execute(
            select(User).where(func.lower(User.username) == form.username.data.strip().lower())
        ).scalar()
        if user is not None and not user.disabled and verify_password(user, form.password.data):
            login_user(user)
            audit.info("user %s logged in from %s", user.username, request.remote_addr)
            return redirect(_safe_next(request.args.get("next")), code=303)

        audit.warning("failed login for %r from %s", form.username.data[:80], request.remote_addr)
        flash("Wrong user name or password, or the account is disabled.", "error")

    return render_template("auth/login.html", form=form)


@bp.route("/logout", methods=["POST"])
def logout():
    """Log the user out."""
    audit.info("user %s logged out", current_user.username)
    logout_user()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"), code=303)


@bp.route("/account/password", methods=["GET", "POST"])
def change_password():
    """Let the user replace their password, required after a one-time password."""
    form = ChangePasswordForm()
    if form.validate_on_submit():
        if not verify_password(current_user, form.current.data):
            form.current.errors.append("This is not your current password.")
        else:
            set_password(current_user, form.new.data)
            current_user.must_change_password = False
            db.session.commit()
            audit.info("user %s changed their password", current_user.username)
            flash("Your password was changed.", "success")
            return redirect(url_for("main.dashboard"), code=303)

    return render_template("auth/change_password.html", form=form)


def _safe_next(target: str | None) -> str:
    """Return ``target`` if it is a path on this site, else the dashboard."""
    return local_target(target, url_for("main.dashboard"))