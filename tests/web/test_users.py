"""User administration pages: adding users, roles, disabling, password resets and who may use them."""

from __future__ import annotations

import logging
import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from messagehub.auth.passwords import create_user
from messagehub.extensions import db
from messagehub.models import User
from tests.conftest import PASSWORD, AuthActions

NEW_PASSWORD = "a brand new password"


def user_row(app: Flask, username: str) -> User:
    """Return the user named ``username``, detached from the session."""
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.username == username)).scalar_one()
        db.session.expunge(user)
        return user


def shown_password(html: str) -> str | None:
    """Return the one-time password a user page shows, or None."""
    match = re.search(r'<pre class="plain" id="one-time-password">([^<]+)</pre>', html)
    return match.group(1) if match else None


def other_client(app: Flask, username: str, password: str = PASSWORD) -> FlaskClient:
    """Return a second browser, logged in as ``username`` through the login form."""
    client = app.test_client()
    AuthActions(client).login(username, password)
    return client


def add_admin(app: Flask, username: str = "second-admin") -> None:
    with app.app_context():
        create_user(db.session, username, PASSWORD, "admin")
        db.session.commit()


@pytest.fixture
def admin(client: FlaskClient, auth: AuthActions) -> FlaskClient:
    """Return the client, logged in as the admin."""
    auth.login("admin")
    return client


def test_add_user_generated_password(app, admin):
    response = admin.post("/users/new", data={"username": "carol", "role": "viewer", "password": ""})
    first = admin.get(response.headers["Location"])
    second = admin.get(response.headers["Location"])

    password = shown_password(first.get_data(as_text=True))
    carol = user_row(app, "carol")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/users/{carol.id}"
    assert password is not None
    assert first.headers["Cache-Control"] == "no-store"
    assert shown_password(second.get_data(as_text=True)) is None
    assert carol.role == "viewer"
    assert carol.must_change_password is True


def test_new_user_must_change_password(app, admin):
    response = admin.post("/users/new", data={"username": "carol", "role": "operator", "password": ""})
    password = shown_password(admin.get(response.headers["Location"]).get_data(as_text=True))
    carol = other_client(app, "carol", password)

    forced = carol.get("/campaigns/")
    changed = carol.post("/account/password", data={"current": password, "new": NEW_PASSWORD, "confirm": NEW_PASSWORD})

    assert forced.status_code == 302
    assert forced.headers["Location"] == "/account/password"
    assert changed.status_code == 303
    assert carol.get("/campaigns/").status_code == 200
    assert user_row(app, "carol").must_change_password is False


def test_add_user_typed_password(app, admin):
    response = admin.post("/users/new", data={"username": "dave", "role": "viewer", "password": "typed by the admin"})
    page = admin.get(response.headers["Location"]).get_data(as_text=True)
    dave = other_client(app, "dave", "typed by the admin")

    assert response.status_code == 303
    assert shown_password(page) is None
    assert "must change it" in page
    assert dave.get("/").headers["Location"] == "/account/password"


def test_add_user_duplicate_keeps_input(admin):
    response = admin.post("/users/new", data={"username": "Operator", "role": "viewer", "password": "typed by the admin"})

    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "A user named &#39;Operator&#39; exists already." in page
    assert 'value="Operator"' in page
    assert 'value="typed by the admin"' in page
    assert '<option selected value="viewer">' in page


def test_add_user_short_password(app, admin):
    response = admin.post("/users/new", data={"username": "erin", "role": "viewer", "password": "short"})

    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "at least 10 characters" in page
    assert 'value="erin"' in page
    with app.app_context():
        assert db.session.execute(db.select(User).where(User.username == "erin")).scalar() is None


def test_new_user_fields_labelled(admin):
    page = admin.get("/users/new").get_data(as_text=True)

    assert '<label for="username">User name</label>' in page
    assert '<label for="role">Role</label>' in page
    assert '<label for="password">One-time password</label>' in page


def test_users_list_columns(app, admin):
    with app.app_context():
        db.session.execute(db.update(User).where(User.username == "viewer").values(disabled=True))
        db.session.commit()

    page = admin.get("/users/").get_data(as_text=True)

    for heading in ("User name", "Role", "State", "Must change password", "Created"):
        assert f'<th scope="col">{heading}</th>' in page
    assert f'href="/users/{user_row(app, "viewer").id}">viewer</a>' in page
    assert '<span class="badge failed">disabled</span>' in page


def test_reset_password(app, admin):
    operator = user_row(app, "operator")

    response = admin.post(f"/users/{operator.id}/password")
    password = shown_password(admin.get(response.headers["Location"]).get_data(as_text=True))

    assert response.status_code == 303
    assert password is not None
    assert user_row(app, "operator").must_change_password is True
    assert other_client(app, "operator").get("/").headers["Location"].startswith("/login")
    assert other_client(app, "operator", password).get("/").headers["Location"] == "/account/password"


def test_reset_own_password_rejected(app, admin):
    own = user_row(app, "admin")

    response = admin.post(f"/users/{own.id}/password", follow_redirects=True)

    assert "You cannot reset your own password here." in response.get_data(as_text=True)
    assert user_row(app, "admin").password_hash == own.password_hash


def test_disabled_user_cannot_log_in(app, admin):
    operator = user_row(app, "operator")

    response = admin.post(f"/users/{operator.id}/disable")
    refused = app.test_client()
    login = AuthActions(refused).login("operator")

    assert response.status_code == 303
    assert user_row(app, "operator").disabled is True
    assert "Wrong user name or password, or the account is disabled." in login.get_data(as_text=True)
    assert refused.get("/").headers["Location"].startswith("/login")


def test_disable_ends_live_session(app, admin):
    operator_client = other_client(app, "operator")
    assert operator_client.get("/campaigns/").status_code == 200

    admin.post(f"/users/{user_row(app, 'operator').id}/disable")
    response = operator_client.get("/campaigns/")

    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_enable_allows_login_again(app, admin):
    operator = user_row(app, "operator")
    admin.post(f"/users/{operator.id}/disable")

    response = admin.post(f"/users/{operator.id}/enable")

    assert response.status_code == 303
    assert user_row(app, "operator").disabled is False
    assert other_client(app, "operator").get("/").status_code == 200


def test_change_role(app, admin):
    viewer = user_row(app, "viewer")

    response = admin.post(f"/users/{viewer.id}", data={"role": "operator"})

    assert response.status_code == 303
    assert user_row(app, "viewer").role == "operator"


def test_last_admin_demote_rejected(app, admin):
    own = user_row(app, "admin")

    response = admin.post(f"/users/{own.id}", data={"role": "viewer"}, follow_redirects=True)

    assert "admin is the last active admin and cannot be demoted." in response.get_data(as_text=True)
    assert user_row(app, "admin").role == "admin"


def test_last_admin_disable_rejected(app, admin):
    own = user_row(app, "admin")

    response = admin.post(f"/users/{own.id}/disable", follow_redirects=True)

    assert "admin is the last active admin and cannot be disabled." in response.get_data(as_text=True)
    assert user_row(app, "admin").disabled is False


def test_disabled_admin_not_counted(app, admin):
    add_admin(app)
    with app.app_context():
        db.session.execute(db.update(User).where(User.username == "second-admin").values(disabled=True))
        db.session.commit()

    response = admin.post(f"/users/{user_row(app, 'admin').id}/disable", follow_redirects=True)

    assert "last active admin" in response.get_data(as_text=True)
    assert user_row(app, "admin").disabled is False


def test_own_demote_rejected(app, admin):
    add_admin(app)

    response = admin.post(f"/users/{user_row(app, 'admin').id}", data={"role": "operator"}, follow_redirects=True)

    assert "You cannot change your own role." in response.get_data(as_text=True)
    assert user_row(app, "admin").role == "admin"


def test_own_disable_rejected(app, admin):
    add_admin(app)

    response = admin.post(f"/users/{user_row(app, 'admin').id}/disable", follow_redirects=True)

    assert "You cannot disable your own account." in response.get_data(as_text=True)
    assert user_row(app, "admin").disabled is False


def test_other_admin_demoted(app, admin):
    add_admin(app)

    response = admin.post(f"/users/{user_row(app, 'second-admin').id}", data={"role": "viewer"})

    assert response.status_code == 303
    assert user_row(app, "second-admin").role == "viewer"


def test_destructive_actions_confirmed(app, admin):
    page = admin.get(f"/users/{user_row(app, 'operator').id}").get_data(as_text=True)

    assert re.search(r'action="/users/\d+/disable" hx-boost="true"\s+hx-confirm="Disable operator\?', page)
    assert re.search(r'action="/users/\d+/password" hx-boost="true"\s+hx-confirm="Reset the password of operator\?', page)


def test_changes_audited_without_password(app, admin, caplog, monkeypatch):
    # make_app migrates in this process, and migrations/env.py calls
    # logging.config.fileConfig(), which by default disables every logger that
    # exists at that moment, the audit logger too.
    monkeypatch.setattr(logging.getLogger("messagehub.audit"), "disabled", False)
    caplog.set_level(logging.INFO, logger="messagehub.audit")
    operator = user_row(app, "operator")

    added = admin.post("/users/new", data={"username": "carol", "role": "viewer", "password": "typed by the admin"})
    admin.post(f"/users/{operator.id}", data={"role": "viewer"})
    admin.post(f"/users/{operator.id}/disable")
    admin.post(f"/users/{operator.id}/enable")
    reset = admin.post(f"/users/{operator.id}/password")
    password = shown_password(admin.get(reset.headers["Location"]).get_data(as_text=True))

    lines = [record.getMessage() for record in caplog.records if record.name == "messagehub.audit"]
    assert added.status_code == 303
    assert any(line.startswith("user admin added user carol") for line in lines)
    assert f"user admin changed the role of user operator (id {operator.id}) from operator to viewer" in lines
    assert f"user admin disabled user operator (id {operator.id})" in lines
    assert f"user admin enabled user operator (id {operator.id})" in lines
    assert f"user admin reset the password of user operator (id {operator.id})" in lines
    assert not any("typed by the admin" in line or password in line for line in lines)


def test_users_link_only_for_admins(client, auth):
    auth.login("admin")
    admin_page = client.get("/").get_data(as_text=True)
    auth.logout()
    auth.login("operator")
    operator_page = client.get("/").get_data(as_text=True)

    assert 'href="/users/"' in admin_page
    assert 'href="/users/"' not in operator_page


USER_ROUTES = [
    ("GET", "/users/"),
    ("GET", "/users/new"),
    ("POST", "/users/new"),
    ("GET", "/users/{id}"),
    ("POST", "/users/{id}"),
    ("POST", "/users/{id}/disable"),
    ("POST", "/users/{id}/enable"),
    ("POST", "/users/{id}/password"),
]


@pytest.mark.parametrize("role", ["operator", "viewer"])
def test_users_routes_forbidden(app, client, auth, role):
    target = user_row(app, "viewer")
    auth.login(role)

    for method, path in USER_ROUTES:
        data = {"username": "mallory", "role": "admin", "password": ""} if path == "/users/new" else {"role": "admin"}
        response = client.open(path.format(id=target.id), method=method, data=data if method == "POST" else None)
        assert response.status_code == 403, f"{method} {path} as {role}"

    assert user_row(app, "viewer").role == "viewer"
    assert user_row(app, "viewer").disabled is False
    assert user_row(app, "viewer").password_hash == target.password_hash
    with app.app_context():
        assert db.session.execute(db.select(User).where(User.username == "mallory")).scalar() is None
