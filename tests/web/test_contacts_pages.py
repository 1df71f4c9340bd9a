"""The contacts pages: lists, search, one contact's changes, and the import wizard with its report."""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from messagehub.contacts.problem_csv import FORMULA_PREFIXES
from messagehub.extensions import db
from messagehub.models import Contact, ContactList, ImportProblem, ImportReport
from tests import factories
from tests.conftest import PASSWORD, AuthActions, make_app
from tests.waiting import wait_for

EXCEL_BOM = "contacts-10k-excel-bom.csv"

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """Create one app for the whole module with CSRF off. Each test works on lists of its own."""
    from messagehub.auth.passwords import create_user

    instance_path = tmp_path_factory.mktemp("contacts") / "instance"
    instance_path.mkdir()
    app = make_app(instance_path, WTF_CSRF_ENABLED=False)
    with app.app_context():
        for role in ("operator", "viewer"):
            create_user(db.session, role, PASSWORD, role)
        db.session.commit()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture(scope="module")
def session_cookies(app: Flask) -> dict[str, str]:
    """Log each role in once, because password hashing is slow by design, and return its session cookie."""
    cookies = {}
    for role in ("operator", "viewer"):
        client = app.test_client()
        AuthActions(client).login(role)
        cookies[role] = client.get_cookie("session").value
    return cookies


@pytest.fixture
def operator(app: Flask, session_cookies: dict[str, str]) -> FlaskClient:
    client = app.test_client()
    client.set_cookie("session", session_cookies["operator"])
    return client


@pytest.fixture
def viewer(app: Flask, session_cookies: dict[str, str]) -> FlaskClient:
    client = app.test_client()
    client.set_cookie("session", session_cookies["viewer"])
    return client


def list_name() -> str:
    """Return a list name no other test of the module uses."""
    return f"List {next(_numbers)}"


class PageParser(HTMLParser):
    """Collect the cell texts of each table with an id, and the selected option of each select."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.selected: dict[str, str] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table" and attributes.get("id"):
            self._table = self.tables.setdefault(attributes["id"], [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "select":
            self._select = attributes["name"]
        elif tag == "option" and "selected" in attributes and self._select is not None:
            self.selected[self._select] = attributes["value"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        # The options of a select are not part of the cell's text.
        if self._cell is not None and self._select is None:
            self._cell.append(data)


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


def read_sample(path: Path) -> list[list[str]]:
    """Read the Excel sample with the csv module, header included, cells stripped."""
    with path.open(encoding="utf-8-sig", newline="") as text:
        return [[cell.strip() for cell in row] for row in csv.reader(text, delimiter=";")]


def create_list(app: Flask, client: FlaskClient) -> int:
    name = list_name()
    response = client.post("/contacts/", data={"name": name})
    assert response.status_code == 303
    with app.app_context():
        return db.session.execute(db.select(ContactList.id).where(ContactList.name == name)).scalar_one()


def upload(client: FlaskClient, list_id: int, path: Path, country: str = ""):
    """Post step 1 of the wizard: the file and the default country."""
    with path.open("rb") as file:
        response = client.post(
            f"/contacts/{list_id}/uploads",
            data={"file": (file, path.name), "default_country": country},
            content_type="multipart/form-data",
        )
    # Werkzeug's test client spools a large multipart body into a temporary
    # file that it leaves open; close it here rather than in the garbage collector.
    response.request.environ["wsgi.input"].close()
    return response


def token_of(mapping_url: str) -> str:
    return re.search(r"upload=([0-9a-f]+)", mapping_url).group(1)


def start_import(client: FlaskClient, list_id: int, mapping_url: str, targets: list[str], country: str = ""):
    """Post step 2 of the wizard: a target for each column."""
    data = {"upload": token_of(mapping_url), "default_country": country}
    data.update({f"map-{position}": target for position, target in enumerate(targets)})
    return client.post(f"/contacts/{list_id}/imports", data=data)


def wait_for_import(client: FlaskClient, report_url: str) -> str:
    page = wait_for(
        lambda: client.get(report_url, headers={"HX-Request": "true"}).get_data(as_text=True),
        lambda html: "Importing…" not in html,
        timeout=60,
        interval=0.2,
    )
    assert "Importing…" not in page, "the import did not finish"
    return page


def contact_by_email(app: Flask, list_id: int, email: str) -> Contact | None:
    with app.app_context():
        query = db.select(Contact).where(Contact.list_id == list_id, Contact.email == email)
        contact = db.session.execute(query).scalar_one_or_none()
        if contact is not None:
            db.session.expunge(contact)
        return contact


# The import wizard


def test_mapping_preview_excel_bom(app, operator, shared_data):
    list_id = create_list(app, operator)
    rows = read_sample(shared_data / EXCEL_BOM)

    response = upload(operator, list_id, shared_data / EXCEL_BOM)
    page = operator.get(response.headers["Location"])
    html = page.get_data(as_text=True)
    parsed = parse(html)
    preview = parsed.tables["preview"]

    assert response.status_code == 303
    assert page.status_code == 200
    assert "Read as <strong>UTF-8 with byte order mark</strong>" in html
    assert "separated by <strong>semicolons</strong>" in html
    assert preview[0] == ["Line", *rows[0]]
    assert preview[1:] == [[str(line), *row] for line, row in enumerate(rows[1:6], start=2)]
    assert [parsed.selected[f"map-{position}"] for position in range(len(rows[0]))] == [
        "email", "first_name", "last_name", "phone", "country", "attribute", "attribute", "attribute", "attribute",
    ]


def test_upload_named_by_token(app, operator, shared_data):
    list_id = create_list(app, operator)
    uploads = Path(app.instance_path) / "uploads"

    response = upload(operator, list_id, shared_data / EXCEL_BOM)
    token = token_of(response.headers["Location"])
    stored = sorted(path.name for path in uploads.iterdir() if path.stem == token)
    named = [path.name for path in uploads.iterdir() if "contacts" in path.name]

    assert stored == [f"{token}.csv", f"{token}.json"]
    assert named == []


def test_remapped_columns_honoured(app, operator, shared_data):
    list_id = create_list(app, operator)
    rows = read_sample(shared_data / EXCEL_BOM)
    header = rows[0]
    targets = ["email", "last_name", "first_name", "phone", "country", "attribute", "ignore", "attribute", "attribute"]

    mapping = upload(operator, list_id, shared_data / EXCEL_BOM).headers["Location"]
    response = start_import(operator, list_id, mapping, targets)
    page = wait_for_import(operator, response.headers["Location"])
    left = [path for path in (Path(app.instance_path) / "uploads").iterdir() if path.stem == token_of(mapping)]
    first = dict(zip(header, rows[1]))
    contact = contact_by_email(app, list_id, first["email"])
    with app.app_context():
        attribute_sets = db.session.execute(db.select(Contact.attributes).where(Contact.list_id == list_id)).scalars()
        names = set().union(*attribute_sets)

    assert "Import finished" in page
    assert left == []
    assert contact.first_name == first["last_name"]
    assert contact.last_name == first["first_name"]
    assert "city" not in names
    assert {"language", "signed_up", "tags"} <= names


def test_mapping_error_keeps_choices(app, operator, shared_data):
    list_id = create_list(app, operator)
    targets = ["email", "first_name", "first_name", "phone", "country", "ignore", "ignore", "ignore", "attribute"]

    mapping = upload(operator, list_id, shared_data / EXCEL_BOM, country="de").headers["Location"]
    response = start_import(operator, list_id, mapping, targets, country="de")
    html = response.get_data(as_text=True)
    parsed = parse(html)

    assert response.status_code == 400
    assert "More than one column is mapped to first_name" in html
    assert [parsed.selected[f"map-{position}"] for position in range(len(targets))] == targets
    assert 'name="default_country" placeholder="US" type="text" value="de"' in html
    with app.app_context():
        assert db.session.execute(db.select(ImportReport).where(ImportReport.list_id == list_id)).first() is None


def test_upload_of_binary_file_explained(app, operator, tmp_path):
    list_id = create_list(app, operator)
    path = tmp_path / "photo.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    uploads = Path(app.instance_path) / "uploads"
    uploads.mkdir(exist_ok=True)
    before = set(uploads.iterdir())

    response = upload(operator, list_id, path, country="FR")
    html = response.get_data(as_text=True)

    assert response.status_code == 400
    assert "photo.csv: the file contains NUL bytes" in html
    assert 'value="FR"' in html
    assert set(uploads.iterdir()) == before


def test_cancel_removes_upload(app, operator, shared_data):
    list_id = create_list(app, operator)
    mapping = upload(operator, list_id, shared_data / EXCEL_BOM).headers["Location"]

    token = token_of(mapping)

    response = operator.post(f"/contacts/{list_id}/uploads/cancel", data={"upload": token})
    again = operator.get(mapping)

    assert response.status_code == 303
    assert [path for path in (Path(app.instance_path) / "uploads").iterdir() if path.stem == token] == []
    assert again.status_code == 303


@pytest.fixture(scope="module")
def excel_report(app: Flask, shared_data: Path) -> ImportReport:
    """Import the Excel sample once, without the wizard, for the tests that only read its report."""
    return factories.import_file(app, shared_data / EXCEL_BOM, list_name())


def test_rejected_csv_has_every_problem(app, operator, excel_report):
    report = excel_report
    with app.app_context():
        problems = db.session.execute(
            db.select(ImportProblem).where(ImportProblem.report_id == report.id).order_by(ImportProblem.line)
        ).scalars().all()
        expected = [(str(p.line), p.kind, p.field) for p in problems]
        formula = next(p for p in problems if p.kind == "rejected" and p.value.startswith("@"))

    response = operator.get(f"/contacts/imports/{report.id}/rejected-rows.csv")
    body = response.get_data()
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"), newline="")))
    by_line = {row[0]: row for row in rows[1:]}

    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert body.startswith(b"\xef\xbb\xbfline,kind,field,value,reason\r\n")
    assert [(row[0], row[1], row[2]) for row in rows[1:]] == expected
    assert sum(1 for row in rows[1:] if row[1] == "rejected") == report.rejected
    assert sum(1 for row in rows[1:] if row[1] == "skipped") == report.skipped
    assert by_line[str(formula.line)][3] == "'" + formula.value
    assert not [cell for row in rows[1:] for cell in row if cell.startswith(FORMULA_PREFIXES)]


def test_report_links_rejected_csv(app, operator, excel_report):
    report = excel_report

    html = operator.get(f"/contacts/imports/{report.id}").get_data(as_text=True)

    assert f'href="/contacts/imports/{report.id}/rejected-rows.csv"' in html
    assert "Download rejected rows as CSV" in html


def test_viewer_sees_no_upload_form(app, viewer):
    list_id = factories.make_list(app, [{"email": "ann@example.com"}], list_name())

    html = viewer.get(f"/contacts/{list_id}").get_data(as_text=True)

    assert "/uploads" not in html
    assert 'type="file"' not in html


# Lists and search


def test_lists_page_counts(app, operator):
    name = list_name()
    contacts = [
        {"email": "ann@example.com", "phone": "+4930123456"},
        {"email": "bob@example.com", "unsubscribed": True},
        {"phone": "+4930654321"},
    ]
    factories.make_list(app, contacts, name)

    tables = parse(operator.get("/contacts/").get_data(as_text=True)).tables
    row = next(row for row in tables["contact-lists"] if row and row[0] == name)

    assert row[1:5] == ["3", "2", "2", "1"]
    assert row[5] == "never"


def test_duplicate_list_name_refused(app, operator):
    name = list_name()
    factories.make_list(app, [], name)

    response = operator.post("/contacts/", data={"name": name})
    html = response.get_data(as_text=True)

    assert response.status_code == 400
    assert f"A list named &#39;{name}&#39; exists already" in html
    assert f'value="{name}"' in html


def people(count: int) -> list[dict]:
    """Contacts with distinct addresses, names and numbers for the search tests."""
    first_names = ["Ann", "Bob", "Chloé", "Dmitri", "Eve"]
    return [
        {
            "email": f"person{number:03d}@{'example.com' if number % 2 else 'example.org'}",
            "first_name": first_names[number % len(first_names)],
            "last_name": f"Lee{number:03d}",
            "phone": f"+4930{5550000 + number}",
        }
        for number in range(count)
    ]


def matching(contacts: list[dict], search: str) -> list[str]:
    """Return the addresses of the contacts the search should find, computed from the test data."""
    needle = search.lower()
    # Digits count only in a search that looks like a phone number.
    digits = re.sub(r"\D", "", search).lstrip("0") if re.fullmatch(r"[\d\s()+./-]+", search) else ""
    found = []
    for contact in contacts:
        name = f"{contact['first_name']} {contact['last_name']}".lower()
        if needle in contact["email"].lower() or needle in name or (digits and digits in contact["phone"]):
            found.append(contact["email"])
    return found


def result_emails(html: str) -> list[str]:
    return re.findall(r'<a href="/contacts/\d+/contacts/\d+">([^<]+)</a>', html)


@pytest.mark.parametrize("search", ["PERSON01", "example.ORG", "bob lee01", "chlo", "030 5550 004", "+49305550012"])
def test_search_finds_part(app, operator, search):
    contacts = people(40)
    list_id = factories.make_list(app, contacts, list_name())

    html = operator.get(f"/contacts/{list_id}", query_string={"q": search}).get_data(as_text=True)
    expected = matching(contacts, search)

    assert expected
    assert result_emails(html) == expected
    assert f"{len(expected)} contact" in html


def test_search_paginates_keeping_query(app, operator):
    contacts = people(130)
    list_id = factories.make_list(app, contacts, list_name())
    expected = matching(contacts, "example.com")

    first = operator.get(f"/contacts/{list_id}", query_string={"q": "example.com"}).get_data(as_text=True)
    next_url = re.search(r'href="([^"]*page=2[^"]*)"', first).group(1).replace("&amp;", "&")
    second = operator.get(next_url).get_data(as_text=True)

    assert len(expected) == 65
    assert result_emails(first) == expected[:50]
    assert "q=example.com" in next_url
    assert result_emails(second) == expected[50:]
    assert "Page 2 of 2" in second


def test_search_partial_for_htmx(app, operator):
    contacts = people(10)
    list_id = factories.make_list(app, contacts, list_name())

    response = operator.get(
        f"/contacts/{list_id}", query_string={"q": "ann"}, headers={"HX-Request": "true", "HX-Target": "contact-results"}
    )
    html = response.get_data(as_text=True)

    assert "<html" not in html
    assert 'id="contact-count"' in html
    assert 'hx-swap-oob="true"' in html
    assert result_emails(html) == matching(contacts, "ann")


def test_search_without_js_form(app, operator):
    list_id = factories.make_list(app, people(3), list_name())

    html = operator.get(f"/contacts/{list_id}").get_data(as_text=True)

    assert f'<form method="get" action="/contacts/{list_id}"' in html
    assert '<label for="q">' in html


# One contact


@pytest.fixture
def two_contacts(app) -> tuple[int, int, int]:
    """Create a list with Ann and Bob, and return the ids of the list, Ann and Bob."""
    list_id = factories.make_list(
        app,
        [
            {"email": "ann@example.com", "first_name": "Ann", "attributes": {"city": "Paris"}},
            {"email": "bob@example.com", "first_name": "Bob", "country": "DE"},
        ],
        list_name(),
    )
    with app.app_context():
        ids = db.session.execute(db.select(Contact.id).where(Contact.list_id == list_id).order_by(Contact.id)).scalars()
        ann, bob = ids
    return list_id, ann, bob


def contact_form(**fields) -> dict:
    return {"email": "bob@example.com", "first_name": "Bob", "last_name": "", "phone": "", "country": "DE", **fields}


def test_contact_page_shows_attributes(app, operator, two_contacts):
    list_id, ann, _ = two_contacts

    html = operator.get(f"/contacts/{list_id}/contacts/{ann}").get_data(as_text=True)

    assert "<code>city</code>" in html
    assert "Paris" in html


def test_edit_normalises_values(app, operator, two_contacts):
    list_id, _, bob = two_contacts

    response = operator.post(
        f"/contacts/{list_id}/contacts/{bob}/edit",
        data=contact_form(email=" Robert@EXAMPLE.com ", last_name=" Roe ", phone="030 1234567", country="de"),
    )
    contact = contact_by_email(app, list_id, "Robert@example.com")

    assert response.status_code == 303
    assert response.headers["Location"] == f"/contacts/{list_id}/contacts/{bob}"
    assert contact.id == bob
    assert contact.email_key == "robert@example.com"
    assert contact.last_name == "Roe"
    assert contact.phone == "+49301234567"
    assert contact.country == "DE"


def test_edit_invalid_phone_explained(app, operator, two_contacts):
    list_id, _, bob = two_contacts

    response = operator.post(f"/contacts/{list_id}/contacts/{bob}/edit", data=contact_form(phone="+49 30"))
    html = response.get_data(as_text=True)

    assert response.status_code == 400
    assert "Invalid phone number:" in html
    assert 'value="+49 30"' in html
    assert contact_by_email(app, list_id, "bob@example.com").phone is None


def test_edit_duplicate_email_refused(app, operator, two_contacts):
    list_id, _, bob = two_contacts

    response = operator.post(
        f"/contacts/{list_id}/contacts/{bob}/edit", data=contact_form(email="ANN@example.com", first_name="Robert")
    )
    html = response.get_data(as_text=True)

    assert response.status_code == 400
    assert "Another contact of this list has the address ANN@example.com" in html
    assert 'id="email" maxlength="320" name="email" type="email" value="ANN@example.com"' in html
    assert 'value="Robert"' in html
    assert contact_by_email(app, list_id, "bob@example.com").first_name == "Bob"


def test_same_email_other_list_allowed(app, operator, two_contacts):
    _, _, bob = two_contacts
    other_list = factories.make_list(app, [{"email": "carol@example.com"}], list_name())
    with app.app_context():
        carol = db.session.execute(db.select(Contact.id).where(Contact.list_id == other_list)).scalar_one()

    response = operator.post(f"/contacts/{other_list}/contacts/{carol}/edit", data=contact_form(email="bob@example.com"))

    assert response.status_code == 303
    assert bob != carol


def test_delete_contact(app, operator, two_contacts):
    list_id, ann, _ = two_contacts

    response = operator.post(f"/contacts/{list_id}/contacts/{ann}/delete")
    followed = operator.get(response.headers["Location"]).get_data(as_text=True)

    assert response.status_code == 303
    assert response.headers["Location"] == f"/contacts/{list_id}"
    assert contact_by_email(app, list_id, "ann@example.com") is None
    assert "Contact ann@example.com deleted." in followed


def test_unsubscribe_and_resubscribe(app, operator, two_contacts):
    list_id, ann, _ = two_contacts
    url = f"/contacts/{list_id}/contacts/{ann}"

    unsubscribed = operator.post(f"{url}/unsubscribe")
    after_unsubscribe = contact_by_email(app, list_id, "ann@example.com").unsubscribed
    page = operator.get(url).get_data(as_text=True)
    resubscribed = operator.post(f"{url}/resubscribe")

    assert unsubscribed.status_code == 303
    assert after_unsubscribe is True
    assert "This contact is unsubscribed" in page
    assert "/resubscribe" in page
    assert resubscribed.status_code == 303
    assert contact_by_email(app, list_id, "ann@example.com").unsubscribed is False


def test_contact_in_other_list_not_found(app, operator, two_contacts):
    list_id, ann, _ = two_contacts
    other_list = factories.make_list(app, [], list_name())

    response = operator.post(f"/contacts/{other_list}/contacts/{ann}/delete")

    assert response.status_code == 404
    assert contact_by_email(app, list_id, "ann@example.com") is not None


@pytest.mark.parametrize(
    ("method", "action"),
    [("get", "edit"), ("post", "edit"), ("post", "delete"), ("post", "unsubscribe"), ("post", "resubscribe")],
)
def test_viewer_cannot_change_contact(app, viewer, two_contacts, method, action):
    list_id, ann, _ = two_contacts

    response = viewer.open(
        f"/contacts/{list_id}/contacts/{ann}/{action}", method=method.upper(), data=contact_form(email="x@example.com")
    )
    contact = contact_by_email(app, list_id, "ann@example.com")

    assert response.status_code == 403
    assert contact is not None
    assert contact.unsubscribed is False


def test_viewer_sees_no_change_buttons(app, viewer, two_contacts):
    list_id, ann, _ = two_contacts

    html = viewer.get(f"/contacts/{list_id}/contacts/{ann}").get_data(as_text=True)
    forms = re.findall(r'<form method="post" action="([^"]+)"', html)

    assert "ann@example.com" in html
    assert forms == ["/logout"]
    assert "/edit" not in html
