"""Password hashing and the creation of user accounts, shared by the CLI and the web app."""

from __future__ import annotations

import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from messagehub.models import Role, User

MIN_PASSWORD_LENGTH = 10


class AccountError(Exception):
    """A user account cannot be created or changed as requested."""


def validate_password(password: str) -> None:
    """Raise AccountError unless the password is acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"The password must have at least {MIN_PASSWORD_LENGTH} characters.")


def set_password(user: User, password: str) -> None:
    """Hash and store a new password for ``user``."""
    validate_password(password)
    user.password_hash = generate_password_hash(password)


def verify_password(user: User, password: str) -> bool:
    """Tell whether ``password`` is the user's password."""
    return check_password_hash(user.password_hash, password)


def generate_password() -> str:
    """Return a random password that is easy to type once."""
    return secrets.token_urlsafe(12)


def create_user(session: Session, username: str, password: str, role: str, must_change: bool = False) -> User:
    """Add a user; the caller commits."""
    username = username.strip()
    if not username:
        raise AccountError("The user name must not be empty.")
    if role not in {r.value for r in Role}:
        raise AccountError(f"Unknown role {role!r}; choose admin, operator or viewer.")
    if session.execute(select(User).where(func.lower(User.username) == username.lower())).scalar():
        raise AccountError(f"A user named {username!r} exists already.")

    user = User(username=username, role=role, must_change_password=must_change)
    set_password(user, password)
    session.add(user)
    return user


def has_admin(session: Session) -> bool:
    """Tell whether any enabled admin account exists."""
    query = select(User.id).where(User.role == Role.ADMIN.value, User.disabled.is_(False)).limit(1)
    return session.execute(query).first() is not None
