"""A full-page screenshot of every page of the app, for a person to look at.

Every GET route of the URL map is visited as an admin, its ids filled with
rows made for the purpose, and saved as tests/browser/screenshots/<endpoint>.png
at laptop width. A few key pages are also saved as <endpoint>.phone.png at
phone width.
Routes that return no full HTML page (htmx fragments, server-sent events,
CSV downloads) are recognised by their response and left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from urllib.parse import parse_qs, urlsplit

from flask import Flask, url_for
from playwright.sync_api import Browser, BrowserContext, Page
from playwright.sync_api import Error as PlaywrightError
from sqlalchemy import select
from werkzeug.routing import Rule

from messagehub.auth.passwords import create_user
from messagehub.extensions import db
from messagehub.jobs import service as jobs_service
from messagehub.models import Campaign, Contact
from messagehub.supervisor.choose import choose_supervisor
from tests import factories
from tests.background import wait_settled
from tests.browser.conftest import LAPTOP, PHONE, SCREENSHOTS, SUMMARY, login
from tests.conftest import PASSWORD

# Pages also shot at phone width: the ones a user checks on the go.
PHONE_PAGES = {"main.dashboard", "campaigns.show", "jobs.index", "contacts.lists", "contacts.show_list"}
# Pages shown only to a visitor who is not logged in.
LOGGED_OUT_PAGES = {"auth.login"}
# Flask's static files are not pages.
NOT_PAGES = {"static"}
# The sample imported for the contact pages, in Windows-1252, smaller than the 10k files.
UPLOADED = "contacts-latin-cp1252.csv"
# Seconds the campaign sent for the history pages may take.
RUN_TIMEOUT = 60.0
# Nothing listens on the discard port of 127.0.0.1, so the account never reaches a provider.
UNREACHABLE_URL = "http://127.0.0.1:9"
ERROR_TEXTS = ("Traceback", "Internal Server Error")

# Lists form fields that have no label a screen reader would read.
UNLABELLED_FIELDS = """
() => [...document.querySelectorAll("input, select, textarea")]
  .filter((element) => !["hidden", "submit", "button", "reset", "image"].includes(element.type))
  .filter((element) => !(element.labels && element.labels.length) && !element.getAttribute("aria-label")
                       && !element.getAttribute("aria-labelledby") && !element.getAttribute("title"))
  .map((element) => `${element.tagName.toLowerCase()} name=${element.name || "?"}`)
"""
# Tells whether the page is wider than the window, so the user must scroll sideways.
OVERFLOWS = "() => document.documentElement.scrollWidth > window.innerWidth"


@dataclass
class Shots:
    """What the visits found, one list per kind of outcome."""

    saved: list[Path] = field(default_factory=list)
    partials: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    bad_status: list[str] = field(default_factory=list)
    redirected: list[str] = field(default_factory=list)
    error_text: list[str] = field(default_factory=list)
    no_values: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    phone_overflow: list[str] = field(default_factory=list)


def make_rows(app: Flask, shared_data: Path) -> tuple[dict[str, object], dict[str, dict[str, object]]]:
    """Create a row of each kind a URL names, and return the URL values and per-endpoint overrides."""
    report = factories.import_file(app, shared_data / UPLOADED, list_name="Screenshot customers")
    sent_id = sent_campaign(app)
    draft_id = factories.make_campaign(app, report.list_id, name="Screenshot draft")
    account_id = factories.make_account(
        app, "twilio", {"account_sid": "AC" + "0" * 32, "auth_token": "screenshot", "base_url": UNREACHABLE_URL},
        rate=1.0, name="Screenshot Twilio",
    )
    with app.app_context():
        contact_id = db.session.execute(select(Contact.id).where(Contact.list_id == report.list_id).limit(1)).scalar()
        user = create_user(db.session, "screenshot-viewer", PASSWORD, "viewer")
        db.session.commit()
        user_id = user.id

    values = {
        "list_id": report.list_id,
        "contact_id": contact_id,
        "report_id": report.id,
        "campaign_id": sent_id,
        "account_id": account_id,
        "user_id": user_id,
        "kind": "twilio",
    }
    # Only a draft can be edited, and a sent campaign's edit page redirects.
    overrides = {"campaigns.edit": {"campaign_id": draft_id}}
    return values, overrides


def sent_campaign(app: Flask) -> int:
    """Send a campaign to a small list in the background, so the jobs and history pages have rows."""
    contacts = [{"email": f"shot-{number:02d}@example.com", "first_name": f"Shot{number:02d}"} for number in range(25)]
    list_id = factories.make_list(app, contacts, name="Screenshot readers")
    campaign_id = factories.make_campaign(app, list_id, name="Screenshot campaign", delivery_method="smtp")
    with app.app_context():
        campaign = db.session.get(Campaign, campaign_id)
        jobs_service.launch_background(db.engine, db.session, choose_supervisor(app.config), campaign, "admin")

    status = wait_settled(app, campaign_id, RUN_TIMEOUT)
    assert status == "finished"
    return campaign_id


def pending_upload(page: Page, list_url: str, path: Path) -> str:
    """Upload ``path`` through step 1 of the import wizard and return the token of the stored upload."""
    page.goto(list_url)
    page.get_by_label("CSV file").set_input_files(path)
    page.get_by_role("button", name="Upload and preview").click()
    page.wait_for_url("**/imports/new?upload=*")
    return parse_qs(urlsplit(page.url).query)["upload"][0]


def page_rules(app: Flask) -> list[Rule]:
    """Return the GET rules of the app, one per endpoint, sorted by endpoint."""
    rules = {}
    for rule in app.url_map.iter_rules():
        if "GET" in rule.methods and rule.endpoint not in NOT_PAGES:
            rules.setdefault(rule.endpoint, rule)
    return [rules[endpoint] for endpoint in sorted(rules)]


def build_url(rule: Rule, values: dict[str, object], overrides: dict[str, dict[str, object]]) -> str | None:
    """Return the rule's URL with real ids, or None when a URL argument has no value.

    An override that is not an argument of the rule goes into the query string.
    """
    chosen = {name: values[name] for name in rule.arguments if name in values}
    chosen.update(overrides.get(rule.endpoint, {}))
    if rule.arguments - chosen.keys():
        return None
    _, url = rule.build(chosen)
    return url


def is_full_page(context: BrowserContext, url: str) -> bool:
    """Tell whether ``url`` returns a whole HTML document rather than a fragment, stream or file.

    :raises playwright.sync_api.Error: the response could not be read to its end.
    """
    response = context.request.get(url, timeout=15_000)
    is_html = response.headers.get("content-type", "").startswith("text/html")
    return is_html and "<html" in response.text().lower()


def shoot(page: Page, endpoint: str, url: str, suffix: str, shots: Shots) -> None:
    """Open ``url``, check what it shows, and save a full-page screenshot."""
    response = page.goto(url, wait_until="networkidle")
    path = SCREENSHOTS / f"{endpoint}{suffix}.png"
    save_whole_page(page, path)
    shots.saved.append(path)

    if response is None or response.status != 200:
        shots.bad_status.append(f"{endpoint} {url}: {response.status if response else 'no response'}")
    if not page.url.endswith(url):
        shots.redirected.append(f"{endpoint} {url} -> {page.url}")
    text = page.inner_text("body")
    if any(error in text for error in ERROR_TEXTS):
        shots.error_text.append(f"{endpoint} {url}")
    shots.unlabelled.extend(f"{endpoint}: {field}" for field in page.evaluate(UNLABELLED_FIELDS))
    if suffix == ".phone" and page.evaluate(OVERFLOWS):
        shots.phone_overflow.append(endpoint)


def save_whole_page(page: Page, path: Path) -> None:
    """Save a screenshot of the whole page, iframes included."""
    # Headless chromium 156 leaves a sandboxed srcdoc iframe (the HTML part of
    # a preview) blank in a full_page capture when it lies below the first
    # screen, so the window is made as tall as the page for the capture.
    window = page.viewport_size
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": window["width"], "height": max(height, window["height"])})
    page.screenshot(path=path)
    page.set_viewport_size(window)


def visit_all(browser: Browser, live_server: str, app: Flask, shared_data: Path) -> Shots:
    """Visit every page at laptop width, and the phone pages at phone width too."""
    values, overrides = make_rows(app, shared_data)
    shots = Shots()
    laptop = browser.new_context(base_url=live_server, viewport=LAPTOP)
    phone = browser.new_context(base_url=live_server, viewport=PHONE, is_mobile=True, has_touch=True)
    visitor = browser.new_context(base_url=live_server, viewport=LAPTOP)
    laptop_page, phone_page, visitor_page = laptop.new_page(), phone.new_page(), visitor.new_page()
    login(laptop_page, "admin")
    login(phone_page, "admin")
    # The mapping step shows an upload of the user who made it, so the admin makes one.
    with app.test_request_context():
        list_url = url_for("contacts.show_list", list_id=values["list_id"])
    overrides["contacts.map_upload"] = {"upload": pending_upload(laptop_page, list_url, shared_data / UPLOADED)}

    for rule in page_rules(app):
        url = build_url(rule, values, overrides)
        if url is None:
            shots.no_values.append(f"{rule.endpoint} {rule.rule}")
            continue

        context, page = (visitor, visitor_page) if rule.endpoint in LOGGED_OUT_PAGES else (laptop, laptop_page)
        try:
            full_page = is_full_page(context, url)
        except PlaywrightError as e:
            shots.unreadable.append(f"{rule.endpoint} {url}: {str(e).splitlines()[0]}")
            continue
        if not full_page:
            shots.partials.append(rule.endpoint)
            continue

        shoot(page, rule.endpoint, url, "", shots)
        if rule.endpoint in PHONE_PAGES:
            shoot(phone_page, rule.endpoint, url, ".phone", shots)

    for context in (laptop, phone, visitor):
        context.close()
    return shots


def clear_screenshots() -> None:
    """Delete the screenshots of an earlier run, so a page that is gone leaves no picture behind."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()


def write_findings(shots: Shots) -> Path:
    """Write what a person should look at next to the screenshots, and return the file."""
    path = SCREENSHOTS / "findings.txt"
    sections = {
        "Left out (no full HTML page)": shots.partials,
        "Wider than a phone screen": shots.phone_overflow,
        "Form fields without a label": shots.unlabelled,
    }
    lines = []
    for title, items in sections.items():
        lines.append(f"{title}: {len(items)}")
        lines.extend(f"  {item}" for item in items)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_screenshots_every_page(browser: Browser, live_server: str, live_app: Flask, shared_data: Path) -> None:
    clear_screenshots()
    shots = visit_all(browser, live_server, live_app, shared_data)
    findings = write_findings(shots)
    SUMMARY.append(f"{len(shots.saved)} screenshots in {SCREENSHOTS}, notes in {findings.name}")

    assert shots.no_values == [], "add a value for these URL arguments in make_rows"
    assert shots.unreadable == []
    assert shots.bad_status == []
    assert shots.redirected == []
    assert shots.error_text == []
    assert shots.unlabelled == []
    assert shots.phone_overflow == []
    assert len(shots.saved) > len(PHONE_PAGES)
    assert all(path.stat().st_size > 0 for path in shots.saved)
    assert {f"{endpoint}.phone.png" for endpoint in PHONE_PAGES} <= {path.name for path in shots.saved}
