"""Contact lists: the overview with counts, and one list's contacts with search."""

from __future__ import annotations

import re

from flask import flash, redirect, render_template, request, url_for
from sqlalchemy import ColumnElement, Select, case, func, or_, select

from messagehub.auth.access import role_required
from messagehub.contacts.blueprint import bp
from messagehub.contacts.forms import ImportForm, ListForm
from messagehub.extensions import db
from messagehub.models import Contact, ContactList, ImportReport, Role

PAGE_SIZE = 50

# The id of the element the search form and the page links swap.
RESULTS_ID = "contact-results"

# A search made only of these characters may be a phone number written with spaces or dashes.
PHONE_LIKE = re.compile(r"[\d\s()+./-]+")

# Names the pages use for the encodings the importer detects.
ENCODING_NAMES = {
    "utf-8": "UTF-8",
    "utf-8-sig": "UTF-8 with byte order mark",
    "utf-16-le": "UTF-16 (little-endian)",
    "utf-16-be": "UTF-16 (big-endian)",
    "utf-32-le": "UTF-32 (little-endian)",
    "utf-32-be": "UTF-32 (big-endian)",
    "cp1252": "Windows-1252",
}

DELIMITER_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs"}


@bp.app_template_filter("encoding_name")
def encoding_name(codec: str) -> str:
    """Return a reader's name for a Python codec name."""
    return ENCODING_NAMES.get(codec, codec)


@bp.app_template_filter("delimiter_name")
def delimiter_name(delimiter: str) -> str:
    """Return a reader's name for a CSV delimiter, such as "semicolons"."""
    return DELIMITER_NAMES.get(delimiter, repr(delimiter))


@bp.get("/")
def lists():
    """Show every contact list with its counts and its last import."""
    return _render_lists(ListForm())


@bp.post("/")
@role_required(Role.OPERATOR)
def create_list():
    """Create an empty contact list."""
    form = ListForm()
    if not form.validate_on_submit():
        return _render_lists(form), 400

    name = form.name.data.strip()
    if db.session.execute(select(ContactList.id).where(ContactList.name == name)).first():
        form.name.errors.append(f"A list named {name!r} exists already: choose another name.")
        return _render_lists(form), 400

    contact_list = ContactList(name=name)
    db.session.add(contact_list)
    db.session.commit()
    flash(f"List {name!r} created. Import a CSV file to fill it.", "success")
    return redirect(url_for("contacts.show_list", list_id=contact_list.id), code=303)


@bp.get("/<int:list_id>")
def show_list(list_id: int):
    """Show a list's contacts, searchable and paginated; htmx requests get the results table only."""
    contact_list = db.get_or_404(ContactList, list_id)
    search = request.args.get("q", "").strip()
    page = contacts_page(list_id, search)

    if request.headers.get("HX-Target") == RESULTS_ID:
        return render_template(
            "contacts/_contacts.html", contact_list=contact_list, page=page, search=search, results_id=RESULTS_ID, partial=True
        )

    return render_list_page(contact_list, page, search, ImportForm())


def render_list_page(contact_list: ContactList, page, search: str, form: ImportForm) -> str:
    """Render a list's page with the contacts of ``page`` and the upload form ``form``."""
    reports = db.session.execute(
        select(ImportReport).where(ImportReport.list_id == contact_list.id).order_by(ImportReport.id.desc()).limit(5)
    ).scalars()
    return render_template(
        "contacts/list.html",
        contact_list=contact_list,
        page=page,
        search=search,
        reports=list(reports),
        form=form,
        results_id=RESULTS_ID,
    )


def contacts_page(list_id: int, search: str):
    """Return the page of matching contacts given by the ``page`` query argument, 50 to a page."""
    return db.paginate(search_contacts(list_id, search), per_page=PAGE_SIZE, error_out=False)


def search_contacts(list_id: int, search: str) -> Select:
    """Select the list's contacts whose email, name or phone contains ``search``, ignoring case."""
    query = select(Contact).where(Contact.list_id == list_id).order_by(Contact.id)
    if not search:
        return query

    return query.where(or_(*_search_conditions(search)))


def _search_conditions(search: str) -> list[ColumnElement[bool]]:
    # NOTE: on SQLite, ilike() folds the case of ASCII letters only, so "élodie"
    # does not find "Élodie" there; PostgreSQL folds every letter.
    pattern = "%" + _escape_like(search) + "%"
    full_name = Contact.first_name + " " + Contact.last_name
    conditions = [
        Contact.email.ilike(pattern, escape="\\"),
        full_name.ilike(pattern, escape="\\"),
        Contact.phone.like(pattern, escape="\\"),
    ]

    # Phone numbers are stored in E.164 form, so a search such as "0151 234"
    # looks for the digits "151234", without spaces and leading zeros.
    digits = re.sub(r"\D", "", search).lstrip("0")
    if PHONE_LIKE.fullmatch(search) and digits:
        conditions.append(Contact.phone.like(f"%{digits}%"))

    return conditions


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _render_lists(form: ListForm) -> str:
    return render_template("contacts/lists.html", lists=_list_summaries(), form=form)


def _list_summaries() -> list:
    """Return each list with its contact counts and its last import, by name."""
    counts = (
        select(
            Contact.list_id,
            func.count(Contact.id).label("contacts"),
            func.count(Contact.email).label("with_email"),
            func.count(Contact.phone).label("with_phone"),
            func.count(case((Contact.unsubscribed.is_(True), 1))).label("unsubscribed"),
        )
        .group_by(Contact.list_id)
        .subquery()
    )
    last_import = (
        select(ImportReport.list_id, func.max(ImportReport.id).label("report_id"))
        .group_by(ImportReport.list_id)
        .subquery()
    )
    query = (
        select(
            ContactList,
            func.coalesce(counts.c.contacts, 0).label("contacts"),
            func.coalesce(counts.c.with_email, 0).label("with_email"),
            func.coalesce(counts.c.with_phone, 0).label("with_phone"),
            func.coalesce(counts.c.unsubscribed, 0).label("unsubscribed"),
            ImportReport,
        )
        .outerjoin(counts, counts.c.list_id == ContactList.id)
        .outerjoin(last_import, last_import.c.list_id == ContactList.id)
        .outerjoin(ImportReport, ImportReport.id == last_import.c.report_id)
        .order_by(func.lower(ContactList.name))
    )

    return list(db.session.execute(query).all())
