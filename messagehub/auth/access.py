"""Access rules: a login on every page, a role on every action."""

from __future__ import annotations

from functools import wraps

from flask import abort, redirect, request, url_for
from flask_login import current_user

from messagehub.models import Role

# Endpoints reachable without logging in.
PUBLIC_ENDPOINTS = {"auth.login", "static"}


def require_login():
    """Send anonymous visitors to the login page; run before every request."""
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return None
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if current_user.must_change_password and request.endpoint not in {"auth.change_password", "auth.logout"}:
        return redirect(url_for("auth.change_password"))
    return None


def role_required(*roles: Role):
    """Allow the view only to users holding one of ``roles`` (admins hold all)."""

    def decorator(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            if not current_user.is_authenticated or not current_user.has_role(*roles):
                abort(403)
            return view(*args, **kwargs)

        wrapped.required_roles = roles
        return wrapped

    return decorator


def can(*roles: Role | str) -> bool:
    """Return whether the current user has one of ``roles``; templates use it to hide buttons."""
    return current_user.is_authenticated and current_user.has_role(*roles)
