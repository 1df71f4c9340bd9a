"""Logins, roles and CSRF on the real app."""

from __future__ import annotations

import pytest

from messagehub.extensions import db
from messagehub.models import User
from tests.conftest import PASSWORD, csrf_token, make_app


@pytest.mark.parametrize("path", ["/", "/contacts/", "/campaigns/", "/settings/", "/campaigns/new"])
def test_pages_require_login(client, path):
    response = client.get(path)

    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_login_page_public(client):
    response = client.get("/login")

    assert response.status_code == 200
    assert "Log in to MessageHub" in response.get_data(as_text=True)


def test_login_then_dashboard(client, auth):
    response = auth.login()

    assert response.status_code == 303
    assert "Dashboard" in client.get("/").get_data(as_text=True)


def test_wrong_password_message(client, auth):
    response = auth.login(password="not the password")

    assert response.status_code == 200
    assert "Wrong user name or password" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302


def test_disabled_user_cannot_log_in(app, client, auth):
    with app.app_context():
        db.session.execute(db.update(User).where(User.username == "operator").values(disabled=True))
        db.session.commit()

    auth.login()

    assert client.get("/").status_code == 302


def test_logout_ends_session(client, auth):
    auth.login()
    auth.logout()

    assert client.get("/").status_code == 302


def test_login_redirect_stays_on_site(client, auth):
    page = client.get("/login")
    token = csrf_token(page.get_data(as_text=True))
    response = client.post(
        "/login?next=//evil.example/x", data={"username": "operator", "password": PASSWORD, "csrf_token": token}
    )

    assert response.headers["Location"] == "/"


def test_viewer_cannot_create_list(client, auth):
    auth.login("viewer")

    response = client.post("/contacts/", data={"name": "Customers"})

    assert response.status_code == 403


def test_viewer_sees_no_create_form(client, auth):
    auth.login("viewer")

    page = client.get("/contacts/").get_data(as_text=True)

    assert "Create list" not in page


def test_one_time_password_must_be_changed(app, runner, client, auth):
    with app.app_context():
        db.session.execute(db.delete(User))
        db.session.commit()
    result = runner.invoke(args=["user", "ensure-admin"])
    password = result.output.split("one-time password: ")[1].split()[0]

    auth.login("admin", password)
    forced = client.get("/campaigns/")

    assert forced.status_code == 302
    assert forced.headers["Location"] == "/account/password"
    client.post("/account/password", data={"current": password, "new": "a new long password", "confirm": "a new long password"})
    assert client.get("/campaigns/").status_code == 200


def test_ensure_admin_runs_once(runner):
    # The app fixture created an admin already.
    result = runner.invoke(args=["user", "ensure-admin"])

    assert result.exit_code == 0
    assert "one-time password" not in result.output


def test_user_create_command(app, runner):
    result = runner.invoke(args=["user", "create", "carol", "--role", "viewer", "--password", "a long password 1"])

    assert result.exit_code == 0, result.output
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.username == "carol")).scalar_one()
        assert user.role == "viewer"
        assert user.password_hash != "a long password 1"


def test_user_create_rejects_short_password(runner):
    result = runner.invoke(args=["user", "create", "dave", "--password", "short"])

    assert result.exit_code != 0
    assert "at least 10 characters" in result.output


def test_post_without_csrf_token_rejected(instance_path):
    app = make_app(instance_path)
    with app.app_context():
        from messagehub.auth.passwords import create_user

        create_user(db.session, "operator", PASSWORD, "operator")
        db.session.commit()
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    client.post("/login", data={"username": "operator", "password": PASSWORD, "csrf_token": token})

    response = client.post("/contacts/", data={"name": "No token"})

    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)


def test_login_without_csrf_token_rejected(instance_path):
    app = make_app(instance_path)
    client = app.test_client()

    response = client.post("/login", data={"username": "operator", "password": PASSWORD})

    assert response.status_code == 400


def test_contacts_import_command(app, runner, shared_data):
    result = runner.invoke(args=["contacts", "import", "From terminal", str(shared_data / "contacts-latin-cp1252.csv")])

    assert result.exit_code == 0, result.output
    assert "\nfinished: " in result.output
    assert "rejected" in result.output
    assert "  line " in result.output


def test_reset_password_command(app, runner, client, auth):
    result = runner.invoke(args=["user", "reset-password", "operator"])
    password = result.output.split("operator: ")[1].split()[0]

    auth.login("operator", password)

    assert result.exit_code == 0
    assert client.get("/").headers["Location"] == "/account/password"


def test_smtp_check_keeps_stored_form_values(app, client, auth):
    from messagehub.delivery_settings import load_smtp_settings
    from tests import factories

    factories.use_smtp_server(app, 9)  # nothing listens on the discard port of 127.0.0.1
    auth.login("admin")

    page = client.post("/settings/smtp/check", data={"test_recipient": "", "sender": ""}).get_data(as_text=True)

    assert 'id="verify_tls" name="verify_tls" type="checkbox" value="y" checked' in page or 'checked id="verify_tls"' in page
    with app.app_context():
        assert load_smtp_settings(db.session, app.config["SECRET_KEY"]).verify_tls is True
