"""A user's day in the browser: import, campaign, preview, send in both modes, stop, resume, read-only viewer.

One test, because every step builds on the rows the previous steps created
through the pages, as a user's session does.
"""

from __future__ import annotations

import collections
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Dialog, Page, expect

from messagehub.contacts.importer import REJECTED, SKIPPED, WARNING, ContactRecord, Problem, open_csv
from tests import factories
from tests.browser.conftest import login, logout
from tests.smtpserver import SmtpTestServer
from tests.waiting import wait_for

SAMPLE = "contacts-10k-excel-bom.csv"
# Big enough that a foreground run spans several progress events, small
# enough that it takes seconds at the test server's pace.
SMALL_LIST_SIZE = 1000
# Milliseconds an import, a foreground run or a background run may take.
IMPORT_TIMEOUT_MS = 60_000
RUN_TIMEOUT_MS = 120_000

PERSONAL_SUBJECT = "Hello {{ first_name | default('there') }}"
PERSONAL_TEXT = "Dear {{ first_name | default('there') }},\nthe spring news is out.\n"
PERSONAL_HTML = "<p>Dear {{ first_name | default('there') }},</p><p>the spring news is out.</p>"

# Records each state of the progress panel, with an id per loaded document, so
# the test can tell updates swapped in by server-sent events from a reload.
PROGRESS_RECORDER = """
(() => {
  const documentId = Math.random().toString(36).slice(2);
  let last = null;
  const report = () => {
    const card = document.getElementById("progress-card");
    if (!card || !window.recordProgress) return;
    const value = card.dataset.status + " " + card.dataset.percent;
    if (value === last) return;
    last = value;
    window.recordProgress(documentId, card.dataset.status, Number(card.dataset.percent));
  };
  new MutationObserver(report).observe(document, {childList: true, subtree: true, attributes: true});
})();
"""

# Lists every control on the page that would change data: POST forms other
# than logging out, htmx attributes that send a write, and enabled buttons or
# links whose label or target names a change.
CHANGING_CONTROLS = r"""
() => {
  const verbs = /\b(new|add|create|edit|save|delete|remove|import|upload|launch|resume|restart|stop|pause|duplicate|send|test connection|unsubscribe|resubscribe|disable|enable|reset)\b/i;
  const found = [];
  const isLogout = (element) => element.closest("form") && element.closest("form").getAttribute("action") === "/logout";
  for (const form of document.querySelectorAll("form")) {
    const method = (form.getAttribute("method") || "get").toLowerCase();
    if (method !== "get" && form.getAttribute("action") !== "/logout") {
      found.push(`form ${method} ${form.getAttribute("action")}`);
    }
  }
  for (const element of document.querySelectorAll("[hx-post], [hx-put], [hx-patch], [hx-delete]")) {
    found.push(`htmx write on <${element.tagName.toLowerCase()}>`);
  }
  for (const element of document.querySelectorAll("a, button, input[type=submit], input[type=button]")) {
    if (element.disabled || isLogout(element)) continue;
    const label = (element.innerText || element.value || "").trim();
    const href = element.getAttribute("href") || "";
    if (verbs.test(label)) found.push(`<${element.tagName.toLowerCase()}> "${label}"`);
    if (/\/(new|edit|delete)(\/|\?|$)/.test(href)) found.push(`link to ${href}`);
  }
  return found;
}
"""


@dataclass
class Visited:
    """The pages the operator saw, for the viewer to visit again, and the dialogs that were accepted."""

    urls: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def add(self, page: Page) -> None:
        path = re.sub(r"^https?://[^/]+", "", page.url)
        if path not in self.urls:
            self.urls.append(path)


def parse(path: Path) -> list[ContactRecord | Problem]:
    """Parse ``path`` with the importer alone, without the web app or a database, and return each row's outcome."""
    with open_csv(path) as csv_file:
        return list(csv_file.rows())


def expected_import(items: list[ContactRecord | Problem]) -> dict[str, int]:
    """Count the parser's outcomes the way the import report must show them."""
    kinds = collections.Counter("added" if isinstance(item, ContactRecord) else item.kind for item in items)
    return {
        "rows read": kinds["added"] + kinds[SKIPPED] + kinds[REJECTED],
        "added": kinds["added"],
        "updated": 0,
        "skipped": kinds[SKIPPED],
        "rejected": kinds[REJECTED],
        "warnings": kinds[WARNING],
    }


def write_small_list(path: Path) -> list[dict[str, str]]:
    """Write a CSV of SMALL_LIST_SIZE contacts. The first has no first name, so its message shows the template's default."""
    contacts = [
        {"email": f"walk-{number:04d}@example.com", "first_name": f"Reader{number:04d}" if number else ""}
        for number in range(SMALL_LIST_SIZE)
    ]
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["email", "first_name"])
        writer.writeheader()
        writer.writerows(contacts)
    return contacts


def read_stats(page: Page, scope: str) -> dict[str, int]:
    """Return the numbered boxes of a ``.stats`` panel inside ``scope`` as {label: number}."""
    stats = {}
    for box in page.locator(f"{scope} .stats > div").all():
        number = box.locator("strong").inner_text()
        label = box.inner_text().removeprefix(number).strip()
        if re.fullmatch(r"[\d,]+", number):
            stats[label] = int(number.replace(",", ""))
    return stats


def sent_of(page: Page) -> tuple[int, int] | None:
    """Return the sent count and the audience the monitor panel shows, or None while htmx swaps it."""
    stats = read_stats(page, "#monitor-panel")
    labels = [label for label in stats if label.startswith("sent of ")]
    if not labels:
        return None
    return stats[labels[0]], int(labels[0].removeprefix("sent of ").replace(",", ""))


def id_from_url(page: Page, pattern: str) -> int:
    match = re.search(pattern, page.url)
    assert match, f"{page.url} does not match {pattern}"
    return int(match.group(1))


def create_list(page: Page, name: str) -> int:
    """Create a contact list through the Contacts page and return its id."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Contacts").click()
    page.get_by_label("List name").fill(name)
    page.get_by_role("button", name="Create list").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    return id_from_url(page, r"/contacts/(\d+)$")


def import_csv(page: Page, path: Path, list_name: str) -> dict[str, int]:
    """Go through the import wizard from the list page, wait for the report and return its counts."""
    # Step 1: upload.
    page.get_by_label("CSV file").set_input_files(path)
    page.get_by_role("button", name="Upload and preview").click()

    # Step 2: the first rows, and each column's field prefilled from its name.
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Import {path.name} into {list_name}")
    expect(page.locator("#preview tbody tr").first).to_be_visible()
    expect(page.get_by_label("email", exact=True)).to_have_value("email")
    expect(page.get_by_label("first_name", exact=True)).to_have_value("first_name")
    page.get_by_role("button", name="Import", exact=True).click()

    # Step 3: the report, which updates itself until the import ends.
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Import of {path.name}")
    expect(page.locator("#import-report .flash")).to_contain_text("Import finished", timeout=IMPORT_TIMEOUT_MS)
    return read_stats(page, "#import-report")


def create_campaign(page: Page, name: str, list_name: str) -> int:
    """Create a personalised email campaign sent through the SMTP server, and return its id."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Campaigns").click()
    page.get_by_role("link", name="New email campaign").click()
    page.get_by_label("Campaign name").fill(name)
    page.get_by_label("Contact list").select_option(label=list_name)
    page.get_by_label("Sender name").fill("Walkthrough News")
    page.get_by_label("Sender address").fill("news@example.com")
    page.get_by_label("Subject").fill(PERSONAL_SUBJECT)
    page.get_by_label("Plain-text body").fill(PERSONAL_TEXT)
    page.get_by_label("HTML body").fill(PERSONAL_HTML)
    page.get_by_label("Send through").select_option(label="SMTP server")
    page.get_by_role("button", name="Save draft").click()
    expect_flash(page, "Campaign saved as a draft")
    return id_from_url(page, r"/campaigns/(\d+)$")


def expect_flash(page: Page, text: str) -> None:
    """Wait for a flash message containing ``text`` at the top of the page."""
    expect(page.locator("main > .flash[role=status]").filter(has_text=text)).to_be_visible()


def launch(page: Page, mode: str) -> None:
    """Choose the run mode in the launch form and press Launch. The page's dialog handler accepts the confirmation."""
    page.get_by_label(f"In the {mode}").check()
    page.get_by_role("button", name="Launch campaign").click()


def test_walkthrough_operator_then_viewer(page: Page, shared_data: Path, smtp_relay: SmtpTestServer, tmp_path: Path) -> None:
    visited = Visited()
    page.on("dialog", lambda dialog: accept(dialog, visited))
    progress: list[tuple[str, str, float]] = []
    page.expose_function("recordProgress", lambda document, status, percent: progress.append((document, status, percent)))
    page.add_init_script(PROGRESS_RECORDER)

    # Log in and import the 10k sample through the import wizard.
    login(page, "operator")
    visited.add(page)
    big_list = "Customers 10k"
    create_list(page, big_list)
    visited.add(page)
    big_report = import_csv(page, shared_data / SAMPLE, big_list)
    visited.add(page)

    sample = parse(shared_data / SAMPLE)
    assert big_report == expected_import(sample)

    # Find one of the imported contacts by searching the list, and open it.
    page.get_by_role("link", name="Back to the list").click()
    expect(page.locator("#contact-count")).to_contain_text(f"{big_report['added']:,} contacts")
    visited.add(page)
    searched = next(item for item in sample if isinstance(item, ContactRecord) and item.email and item.first_name)
    page.get_by_label("Search contacts").fill(searched.email)
    expect(page.locator("#contact-count")).to_contain_text("1 contact matching")
    page.get_by_role("link", name=searched.email).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(searched.first_name)
    visited.add(page)

    # A small list for the sends, imported the same way.
    small_csv = tmp_path / "walkthrough-small.csv"
    contacts = write_small_list(small_csv)
    small_list = "Walkthrough readers"
    create_list(page, small_list)
    small_report = import_csv(page, small_csv, small_list)

    assert small_report["added"] == len(contacts)
    assert small_report["rejected"] == 0

    # An email campaign with personalisation, previewed as one contact.
    foreground_id = create_campaign(page, "Walkthrough foreground", small_list)
    visited.add(page)
    chosen = contacts[7]
    page.get_by_label("Preview as").select_option(label=f"{chosen['email']} {chosen['first_name']}")
    preview = page.locator("#preview")

    expect(preview).to_contain_text(f"Subject: Hello {chosen['first_name']}")
    expect(preview).to_contain_text(f"Dear {chosen['first_name']},")

    page.get_by_role("link", name="Open full preview").click()
    page.get_by_label("Contact (address or id)").fill(contacts[0]["email"])
    page.get_by_role("button", name="Preview").click()
    expect(page.locator(".card")).to_contain_text("Subject: Hello there")
    visited.add(page)
    page.get_by_role("link", name="Back to the campaign").click()

    # Launch in the foreground and watch the progress stream in.
    dialogs_before = len(visited.dialogs)
    launch(page, "foreground")
    expect(page.locator("h1 .badge")).to_have_text("finished", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#progress-card")).to_contain_text("100.0%")

    assert len(visited.dialogs) == dialogs_before + 1
    assert streamed_to_completion(progress), f"progress seen: {progress}"

    received = wait_for(lambda: len(messages_to_list(smtp_relay, contacts)), lambda count: count >= len(contacts))
    [named] = smtp_relay.messages_to(chosen["email"])
    [unnamed] = smtp_relay.messages_to(contacts[0]["email"])

    assert received == len(contacts)
    assert factories.parse(named.data)["Subject"] == f"Hello {chosen['first_name']}"
    assert factories.parse(unnamed.data)["Subject"] == "Hello there"

    # Its history: every recipient with the outcome "sent".
    page.get_by_role("link", name="Recipients and outcomes").click()
    visited.add(page)
    rows = page.locator("table tbody tr")

    expect(rows.first).to_contain_text(contacts[0]["email"])
    assert rows.count() > 0
    assert page.locator("table tbody .badge.sent").count() == rows.count()

    # A second campaign, duplicated onto the big list and launched in the background.
    page.get_by_role("link", name="Back to the campaign").click()
    page.get_by_role("button", name="Duplicate").click()
    page.get_by_label("Campaign name").fill("Walkthrough background")
    page.get_by_label("Contact list").select_option(label=big_list)
    page.get_by_role("button", name="Save draft").click()
    background_id = id_from_url(page, r"/campaigns/(\d+)$")
    visited.add(page)
    launch(page, "background")
    page.wait_for_url(f"**/jobs/{background_id}")
    # The launch form is boosted by htmx, and the page it lands on must still be
    # a whole page with the header, not only the monitor's live panel.
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    expect_flash(page, "launched in the background")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Background Jobs").click()
    job_row = page.locator(f'#job-rows tr[data-campaign="{background_id}"]')
    visited.add(page)

    expect(job_row).to_contain_text("Walkthrough background")
    expect(job_row).to_have_attribute("data-active-state", "active")

    # Its monitor page: watch it send, stop it, see it paused, resume it, see it finish.
    job_row.get_by_role("link", name="Monitor").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Walkthrough background")
    visited.add(page)
    panel_badge = page.locator("#monitor-panel .card .badge").first
    sent_before_stop, _ = wait_for(
        lambda: sent_of(page), lambda sent: sent is not None and sent[0] > 0, RUN_TIMEOUT_MS / 1000
    )
    dialogs_before = len(visited.dialogs)
    page.locator("#monitor-panel").get_by_role("button", name="Stop").click()
    expect_flash(page, f"Stopping campaign {background_id}")
    expect(panel_badge).to_have_text("paused", timeout=RUN_TIMEOUT_MS)
    sent_when_paused, audience = wait_for(lambda: sent_of(page), lambda sent: sent is not None, 10)

    assert sent_before_stop > 0
    assert len(visited.dialogs) == dialogs_before + 1
    assert sent_when_paused < audience

    page.locator("#monitor-panel").get_by_role("button", name="Resume").click()
    expect_flash(page, f"Campaign {background_id} resumed")
    expect(panel_badge).to_have_text("finished", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#monitor-panel .card")).to_contain_text("100.0%")

    # The viewer sees every one of those pages and nothing that changes data.
    logout(page)
    login(page, "viewer")
    for url in visited.urls:
        response = page.goto(url)

        assert response is not None, url
        assert response.status == 200, url
        assert page.evaluate(CHANGING_CONTROLS) == [], url

    assert f"/campaigns/{foreground_id}" in visited.urls
    assert f"/jobs/{background_id}" in visited.urls


def accept(dialog: Dialog, visited: Visited) -> None:
    """Accept a confirmation as the user would, and remember that one was asked."""
    visited.dialogs.append(dialog.message)
    dialog.accept()


def streamed_to_completion(progress: list[tuple[str, str, float]]) -> bool:
    """Tell whether one document showed a value between 0 and 100 % and then 100 %, without a reload between."""
    for document in dict.fromkeys(entry[0] for entry in progress):
        percents = [percent for entry_document, _, percent in progress if entry_document == document]
        if 100 in percents and any(0 < percent < 100 for percent in percents[: percents.index(100)]):
            return True
    return False


def messages_to_list(server: SmtpTestServer, contacts: list[dict[str, str]]) -> list:
    addresses = {contact["email"] for contact in contacts}
    return [message for message in server.messages if addresses & set(message.recipients)]
