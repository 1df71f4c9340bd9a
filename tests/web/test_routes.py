"""Every route of the app: the role it requires, and CSRF protection on every POST.

``REQUIRED_ROLES`` is the specification. Only the endpoint names and URL rules
come from the app's URL map, never the roles, so a view that lacks its role
check fails here, and a route missing from the table fails too.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import Rule
from werkzeug.security import generate_password_hash

from messagehub.auth.passwords import create_user
from messagehub.extensions import db
from messagehub.models import Base, Campaign, Contact, ContactList, ImportReport, ProviderAccount, User
from messagehub.provider_accounts import store_secrets
from messagehub.supervisor.choose import choose_supervisor
from tests.conftest import PASSWORD, AuthActions, make_app
from tests.waiting import wait_for

PUBLIC = "public"
LOGGED_IN = "any logged-in user"
OPERATOR = "operator"
ADMIN = "admin"

# The role each endpoint requires. Admins have every role, and operators also have the viewer's.
REQUIRED_ROLES = {
    "auth.login": PUBLIC,
    "auth.logout": LOGGED_IN,
    "auth.change_password": LOGGED_IN,
    "main.dashboard": LOGGED_IN,
    "main.running": LOGGED_IN,
    "contacts.lists": LOGGED_IN,
    "contacts.create_list": OPERATOR,
    "contacts.show_list": LOGGED_IN,
    "contacts.import_file": OPERATOR,
    "contacts.show_report": LOGGED_IN,
    "contacts.show_contact": LOGGED_IN,
    "contacts.upload_file": OPERATOR,
    "contacts.map_upload": OPERATOR,
    "contacts.cancel_upload": OPERATOR,
    "contacts.download_problems": LOGGED_IN,
    "contacts.edit_contact": OPERATOR,
    "contacts.delete_contact": OPERATOR,
    "contacts.unsubscribe_contact": OPERATOR,
    "contacts.resubscribe_contact": OPERATOR,
    "campaigns.index": LOGGED_IN,
    "campaigns.new": OPERATOR,
    "campaigns.edit": OPERATOR,
    "campaigns.show": LOGGED_IN,
    "campaigns.check": LOGGED_IN,
    "campaigns.preview": LOGGED_IN,
    "campaigns.test_send": OPERATOR,
    "campaigns.launch": OPERATOR,
    "campaigns.pause": OPERATOR,
    "campaigns.duplicate": OPERATOR,
    "campaigns.progress": LOGGED_IN,
    "campaigns.events": LOGGED_IN,
    "campaigns.deliveries": LOGGED_IN,
    "campaigns.export": LOGGED_IN,
    "jobs.index": LOGGED_IN,
    "jobs.monitor": LOGGED_IN,
    "jobs.stop": OPERATOR,
    "jobs.resume": OPERATOR,
    "jobs.restart": OPERATOR,
    "settings.index": LOGGED_IN,
    "settings.save_smtp": ADMIN,
    "settings.check_smtp_view": ADMIN,
    "settings.save_defaults": ADMIN,
    "settings.new_account": ADMIN,
    "settings.create_account": ADMIN,
    "settings.account": LOGGED_IN,
    "settings.save_account": ADMIN,
    "settings.check_account": ADMIN,
    "settings.delete_account": ADMIN,
    "users.index": ADMIN,
    "users.new": ADMIN,
    "users.create": ADMIN,
    "users.show": ADMIN,
    "users.change_role": ADMIN,
    "users.disable": ADMIN,
    "users.enable": ADMIN,
    "users.reset_password": ADMIN,
}

# Endpoints outside the table: Flask's static files.
UNCHECKED = {"static"}

# The user whose role is exactly the required one, and the users with lower roles.
HOLDER = {LOGGED_IN: "viewer", OPERATOR: "operator", ADMIN: "admin"}
BELOW = {PUBLIC: [], LOGGED_IN: [], OPERATOR: ["viewer"], ADMIN: ["operator", "viewer"]}

# Nothing listens on the discard port of 127.0.0.1, so "Test connection" fails
# fast and no request leaves the machine.
UNREACHABLE_URL = "http://127.0.0.1:9"

_names = itertools.count(1)


def checked_methods(rule: Rule) -> list[str]:
    return sorted(rule.methods - {"HEAD", "OPTIONS"})


def rules_of(app: Flask, endpoint: str) -> list[Rule]:
    rules = [rule for rule in app.url_map.iter_rules() if rule.endpoint == endpoint]
    if not rules:
        pytest.fail(f"{endpoint} is in REQUIRED_ROLES but not in the app's URL map; remove it from the table")
    return rules


def url_for_rule(rule: Rule, values: dict[str, object]) -> str:
    """Build the URL of ``rule`` with the ids of real rows."""
    missing = rule.arguments - values.keys()
    if missing:
        pytest.fail(f"no test value for URL argument {', '.join(sorted(missing))} of {rule.rule}; add one in make_rows")
    _, url = rule.build({name: values[name] for name in rule.arguments})
    return url


def request(client: FlaskClient, method: str, url: str):
    """Send one request with no form data and read the whole body, so streams end."""
    response = client.open(url, method=method)
    response.get_data()
    response.close()
    return response


def make_rows(app: Flask) -> dict[str, object]:
    """Create one row of each kind a URL points to, and return the URL argument values."""
    number = next(_names)
    with app.app_context():
        contact_list = ContactList(name=f"Route list {number}")
        db.session.add(contact_list)
        db.session.flush()
        contact = Contact(list_id=contact_list.id, email=f"route{number}@example.com", email_key=f"route{number}@example.com")
        report = ImportReport(list_id=contact_list.id, filename="routes.csv", status="finished")
        # A finished campaign: launch and resume reject it, so no request of
        # this test sends a message. Restart still starts a process for it,
        # which exits at once with "cannot run".
        campaign = Campaign(
            list_id=contact_list.id, name=f"Route campaign {number}", subject="Hello", from_email="news@example.com",
            text_body="Hello", delivery_method="outbox", status="finished",
        )
        account = ProviderAccount(
            name=f"Route Twilio {number}", kind="twilio", rate_per_second=1.0,
            settings={"account_sid": "AC" + "0" * 32, "base_url": UNREACHABLE_URL},
        )
        store_secrets(account, app.config["SECRET_KEY"], {"auth_token": "route-test-token"})
        target = User(username=f"route-target-{number}", role="viewer", password_hash=target_password_hash())
        db.session.add_all([contact, report, campaign, account, target])
        db.session.commit()
        return {
            "list_id": contact_list.id,
            "contact_id": contact.id,
            "report_id": report.id,
            "campaign_id": campaign.id,
            "account_id": account.id,
            "kind": "twilio",
            "user_id": target.id,
        }


@functools.cache
def target_password_hash() -> str:
    """Hash the password of the users that the user pages act on, once, because scrypt is slow by design."""
    return generate_password_hash("route target password")


def add_role_users(app: Flask) -> None:
    with app.app_context():
        for role in ("admin", "operator", "viewer"):
            create_user(db.session, role, PASSWORD, role)
        db.session.commit()


def wait_for_campaign_processes(app: Flask) -> None:
    """Wait until every campaign process a request started has exited."""
    supervisor = choose_supervisor(app.config)
    running = wait_for(supervisor.states, lambda states: all(s.active_state != "active" for s in states), timeout=20)
    assert all(s.active_state != "active" for s in running), f"campaign processes still running: {running}"


def database_rows(app: Flask) -> dict[str, list[tuple]]:
    """Return every row of every table, to show that a request changed nothing."""
    with app.app_context():
        return {
            table.name: [tuple(row) for row in db.session.execute(table.select()).all()]
            for table in Base.metadata.sorted_tables
        }


@pytest.fixture(scope="module")
def route_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One app for every role check, CSRF off, with background campaigns as plain processes."""
    instance_path: Path = tmp_path_factory.mktemp("routes") / "instance"
    instance_path.mkdir()
    app = make_app(instance_path, WTF_CSRF_ENABLED=False, SUPERVISOR="process")
    add_role_users(app)
    yield app
    wait_for_campaign_processes(app)
    with app.app_context():
        db.engine.dispose()


@pytest.fixture(scope="module")
def session_cookies(route_app: Flask) -> dict[str, str]:
    """Log each role in once and return its session cookie."""
    cookies = {}
    for role in ("admin", "operator", "viewer"):
        client = route_app.test_client()
        AuthActions(client).login(role)
        cookies[role] = client.get_cookie("session").value
    return cookies


@pytest.fixture
def browser(route_app: Flask, session_cookies: dict[str, str]):
    """Return a function that gives a new client, anonymous or logged in as a role.

    A new client per request keeps one request (a logout, say) from changing
    the session of the next.
    """

    def open_browser(role: str | None) -> FlaskClient:
        client = route_app.test_client()
        if role is not None:
            client.set_cookie("session", session_cookies[role])
        return client

    return open_browser


@pytest.fixture
def url_values(route_app: Flask) -> Iterator[dict[str, object]]:
    """Fresh rows for each test, so an earlier delete or disable does not change the next test."""
    yield make_rows(route_app)
    wait_for_campaign_processes(route_app)


def test_route_table_complete(route_app):
    endpoints = {rule.endpoint for rule in route_app.url_map.iter_rules()} - UNCHECKED

    missing = sorted(endpoints - REQUIRED_ROLES.keys())
    stale = sorted(REQUIRED_ROLES.keys() - endpoints)

    assert not missing, f"routes missing from REQUIRED_ROLES, add each with the role it requires: {missing}"
    assert not stale, f"REQUIRED_ROLES lists endpoints the app no longer has: {stale}"


@pytest.mark.parametrize("endpoint", sorted(REQUIRED_ROLES))
def test_route_role(route_app, browser, url_values, endpoint):
    required = REQUIRED_ROLES[endpoint]

    for rule in rules_of(route_app, endpoint):
        url = url_for_rule(rule, url_values)
        for method in checked_methods(rule):
            anonymous = request(browser(None), method, url)
            if required == PUBLIC:
                assert anonymous.status_code == 200, f"{method} {url} anonymous"
                continue
            assert anonymous.status_code == 302, f"{method} {url} anonymous"
            assert anonymous.headers["Location"].startswith("/login"), f"{method} {url} anonymous"

            for role in BELOW[required]:
                below = request(browser(role), method, url)
                assert below.status_code == 403, f"{method} {url} as {role}"

            allowed = request(browser(HOLDER[required]), method, url)
            assert allowed.status_code not in (401, 403, 500), f"{method} {url} as {HOLDER[required]}"


@pytest.fixture
def csrf_app(instance_path: Path) -> Iterator[Flask]:
    """The app with CSRF checks on, as in production."""
    app = make_app(instance_path, SUPERVISOR="process")
    add_role_users(app)
    yield app
    with app.app_context():
        db.engine.dispose()


def test_post_without_csrf_token_rejected(csrf_app):
    url_values = make_rows(csrf_app)
    client = csrf_app.test_client()
    AuthActions(client).login("admin")
    post_rules = [rule for rule in csrf_app.url_map.iter_rules() if "POST" in rule.methods]
    assert post_rules, "the app has no POST route"

    for rule in post_rules:
        url = url_for_rule(rule, url_values)
        before = database_rows(csrf_app)
        response = client.post(url, data={"name": "Sent without a token", "role": "viewer", "username": "no-token"})
        assert response.status_code == 400, f"POST {url}"
        assert "The CSRF token is missing." in response.get_data(as_text=True), f"POST {url}"
        assert database_rows(csrf_app) == before, f"POST {url} changed the database"
