"""User pages for admins: list, add, change role, disable, enable and reset password."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, flash, redirect, render_template, session, url_for
from flask_login import current_user
from sqlalchemy import func, select

from messagehub import secretbox
from messagehub.auth.access import role_required
from messagehub.auth.passwords import AccountError, create_user, generate_password, set_password
from messagehub.extensions import db
from messagehub.models import Role, User
from messagehub.users.forms import NewUserForm, RoleForm

bp = Blueprint("users", __name__, url_prefix="/users")
audit = logging.getLogger("messagehub.audit")

# Session key of a one-time password that waits to be shown once on its user's
# page. Flask's session is a signed but readable cookie, so the password is
# stored encrypted in it.
PENDING_PASSWORD_KEY = "users.pending_password"

# Wording of each action that can take admin rights away: the phrase for one's
# own account, and the past participle.
_ACTION_WORDING = {
    "disable": ("disable your own account", "disabled"),
    "demote": ("change your own role", "demoted"),
}


@bp.get("/")
@role_required(Role.ADMIN)
def index():
    """List every user with role and state."""
    users = db.session.execute(select(User).order_by(func.lower(User.username))).scalars().all()
    return render_template("users/index.html", users=users)


@bp.get("/new")
@role_required(Role.ADMIN)
def new():
    """Show the form to add a user."""
    return render_template("users/new.html", form=NewUserForm())


@bp.post("/new")
@role_required(Role.ADMIN)
def create():
    """Add a user with a one-time password, typed by the admin or generated."""
    form = NewUserForm()
    if not form.validate_on_submit():
        return render_template("users/new.html", form=form), 400

    password = form.password.data or generate_password()
    try:
        user = create_user(db.session, form.username.data, password, form.role.data, must_change=True)
    except AccountError as e:
        db.session.rollback()
        form.username.errors.append(str(e))
        return render_template("users/new.html", form=form), 400

    db.session.commit()
    audit.info("user %s added user %s (id %s) as %s", current_user.username, user.username, user.id, user.role)
    if form.password.data:
        flash(f"User {user.username} added. They log in with the password you typed and must change it then.", "success")
    else:
        _hold_password(user.id, password)
        flash(f"User {user.username} added.", "success")
    return redirect(url_for("users.show", user_id=user.id), code=303)


@bp.get("/<int:user_id>")
@role_required(Role.ADMIN)
def show(user_id: int):
    """Show a user with the forms that change them, and a new one-time password once."""
    user = db.get_or_404(User, user_id)
    return _render_user(user, RoleForm(role=user.role))


@bp.post("/<int:user_id>")
@role_required(Role.ADMIN)
def change_role(user_id: int):
    """Give a user another role, unless that demotes the acting admin or the last active admin."""
    user = db.get_or_404(User, user_id)
    form = RoleForm()
    if not form.validate_on_submit():
        return _render_user(user, form, 400)
    if form.role.data == user.role:
        flash(f"{user.username} is {user.role} already; nothing changed.", "info")
        return redirect(url_for("users.show", user_id=user.id), code=303)

    if user.role == Role.ADMIN.value:
        try:
            _ensure_admin_remains(user, "demote")
        except AccountError as e:
            flash(str(e), "error")
            return redirect(url_for("users.show", user_id=user.id), code=303)

    old_role, user.role = user.role, form.role.data
    db.session.commit()
    audit.info("user %s changed the role of user %s (id %s) from %s to %s", current_user.username, user.username, user.id, old_role, user.role)
    flash(f"{user.username} is now {user.role}.", "success")
    return redirect(url_for("users.show", user_id=user.id), code=303)


@bp.post("/<int:user_id>/disable")
@role_required(Role.ADMIN)
def disable(user_id: int):
    """Disable a user: no more logins, and open sessions end at their next request."""
    user = db.get_or_404(User, user_id)
    if user.disabled:
        flash(f"{user.username} is disabled already.", "info")
        return redirect(url_for("users.show", user_id=user.id), code=303)

    try:
        _ensure_admin_remains(user, "disable")
    except AccountError as e:
        flash(str(e), "error")
        return redirect(url_for("users.show", user_id=user.id), code=303)

    user.disabled = True
    db.session.commit()
    audit.info("user %s disabled user %s (id %s)", current_user.username, user.username, user.id)
    flash(f"{user.username} is disabled and can no longer log in. Their open sessions end at their next request.", "success")
    return redirect(url_for("users.show", user_id=user.id), code=303)


@bp.post("/<int:user_id>/enable")
@role_required(Role.ADMIN)
def enable(user_id: int):
    """Let a disabled user log in again."""
    user = db.get_or_404(User, user_id)
    if not user.disabled:
        flash(f"{user.username} is enabled already.", "info")
        return redirect(url_for("users.show", user_id=user.id), code=303)

    user.disabled = False
    db.session.commit()
    audit.info("user %s enabled user %s (id %s)", current_user.username, user.username, user.id)
    flash(f"{user.username} is enabled and can log in again.", "success")
    return redirect(url_for("users.show", user_id=user.id), code=303)


@bp.post("/<int:user_id>/password")
@role_required(Role.ADMIN)
def reset_password(user_id: int):
    """Replace a user's password with a generated one-time password, shown once."""
    user = db.get_or_404(User, user_id)
    # The new password would send this admin to the "Change password" page
    # before their browser could show it, and that page requires it as the
    # current password.
    if user.id == current_user.id:
        flash("You cannot reset your own password here. Use “Change your password” below.", "error")
        return redirect(url_for("users.show", user_id=user.id), code=303)

    password = generate_password()
    set_password(user, password)
    user.must_change_password = True
    db.session.commit()
    audit.info("user %s reset the password of user %s (id %s)", current_user.username, user.username, user.id)
    _hold_password(user.id, password)
    flash(f"The password of {user.username} was reset. Their old password no longer works.", "success")
    return redirect(url_for("users.show", user_id=user.id), code=303)


def _ensure_admin_remains(user: User, action: str) -> None:
    """Raise AccountError if ``action`` on ``user`` would leave no active admin or targets the acting admin.

    The last-admin rule comes first, so an admin who is the only one gets that
    message. The self rule then covers admins acting on their own account.
    """
    own_action, past = _ACTION_WORDING[action]
    # NOTE: the count and the change are separate statements, so two admins
    # demoting each other at the same moment could both pass this check.
    if user.role == Role.ADMIN.value and not user.disabled and _count_other_active_admins(user.id) == 0:
        raise AccountError(f"{user.username} is the last active admin and cannot be {past}. Make another user admin first.")
    if user.id == current_user.id:
        raise AccountError(f"You cannot {own_action}. Ask another admin to do it.")


def _count_other_active_admins(user_id: int) -> int:
    query = select(func.count(User.id)).where(
        User.role == Role.ADMIN.value, User.disabled.is_(False), User.id != user_id
    )
    return db.session.execute(query).scalar_one()


def _render_user(user: User, form: RoleForm, status: int = 200):
    """Render a user's page; a one-time password waiting for this user is shown and forgotten."""
    password = _take_password(user.id)
    response = current_app.make_response(
        (render_template("users/user.html", user=user, form=form, one_time_password=password), status)
    )
    if password is not None:
        # Keep the page with the password out of the browser's cache and history.
        response.headers["Cache-Control"] = "no-store"
    return response


def _hold_password(user_id: int, password: str) -> None:
    """Keep a new one-time password, encrypted in the session, for the next view of its user's page."""
    token = secretbox.encrypt(current_app.config["SECRET_KEY"], password)
    session[PENDING_PASSWORD_KEY] = {"user_id": user_id, "token": token}


def _take_password(user_id: int) -> str | None:
    """Return and forget the one-time password held for ``user_id``, or None."""
    pending = session.get(PENDING_PASSWORD_KEY)
    if not pending or pending.get("user_id") != user_id:
        return None

    session.pop(PENDING_PASSWORD_KEY)
    try:
        return secretbox.decrypt(current_app.config["SECRET_KEY"], pending["token"])
    except secretbox.SecretUnreadable:
        return None
