"""Contact lists, their contacts, and CSV imports."""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from sqlalchemy import func, or_, select

from messagehub.auth.access import role_required
from messagehub.contacts.forms import ImportForm, ListForm
from messagehub.contacts.loading import fail_report, load_file, start_report
from messagehub.extensions import db
from messagehub.models import Contact, ContactList, ImportProblem, ImportReport, Role

bp = Blueprint("contacts", __name__, url_prefix="/contacts")
log = logging.getLogger("messagehub.web")

PAGE_SIZE = 50

# Names the import report uses for the encodings the importer detects.
ENCODING_NAMES = {
    "utf-8": "UTF-8",
    "utf-8-sig": "UTF-8 with byte order mark",
    "utf-16-le": "UTF-16 (little-endian)",
    "utf-16-be": "UTF-16 (big-endian)",
    "utf-32-le": "UTF-32 (little-endian)",
    "utf-32-be": "UTF-32 (big-endian)",
    "cp1252": "Windows-1252",
}


@bp.app_template_filter("encoding_name")
def encoding_name(codec: str) -> str:
    """Return a reader's name for a Python codec name."""
    return ENCODING_NAMES.get(codec, codec)


@bp.get("/")
def lists():
    """Show every contact list with its size."""
    counts = select(ContactList, func.count(Contact.id)).outerjoin(Contact).group_by(ContactList.id).order_by(ContactList.name)
    return render_template("contacts/lists.html", lists=db.session.execute(counts).all(), form=ListForm())


@bp.post("/")
@role_required(Role.OPERATOR)
def create_list():
    """Create an empty contact list."""
    form = ListForm()
    if not form.validate_on_submit():
        counts = select(ContactList, func.count(Contact.id)).outerjoin(Contact).group_by(ContactList.id)
        return render_template("contacts/lists.html", lists=db.session.execute(counts).all(), form=form), 400

    name = form.name.data.strip()
    if db.session.execute(select(ContactList).where(ContactList.name == name)).scalar():
        flash(f"A list named {name!r} exists already.", "error")
        return redirect(url_for("contacts.lists"), code=303)

    contact_list = ContactList(name=name)
    db.session.add(contact_list)
    db.session.commit()
    flash(f"List {name!r} created. Import a CSV file to fill it.", "success")
    return redirect(url_for("contacts.show_list", list_id=contact_list.id), code=303)


@bp.get("/<int:list_id>")
def show_list(list_id: int):
    """Show a list's contacts, searchable and paginated, and its imports."""
    contact_list = db.get_or_404(ContactList, list_id)
    search = request.args.get("q", "").strip()
    query = select(Contact).where(Contact.list_id == list_id).order_by(Contact.id)
    if search:
        pattern = f"%{search.lower()}%"
        query = query.where(
            or_(
                Contact.email_key.like(pattern),
                func.lower(Contact.first_name).like(pattern),
                func.lower(Contact.last_name).like(pattern),
                Contact.phone.like(pattern),
            )
        )
    page = db.paginate(query, per_page=PAGE_SIZE, error_out=False)
    reports = db.session.execute(
        select(ImportReport).where(ImportReport.list_id == list_id).order_by(ImportReport.id.desc()).limit(5)
    ).scalars()
    return render_template(
        "contacts/list.html", contact_list=contact_list, page=page, search=search, reports=list(reports), form=ImportForm()
    )


@bp.post("/<int:list_id>/imports")
@role_required(Role.OPERATOR)
def import_file(list_id: int):
    """Save the uploaded file and import it in the background; the report page shows progress."""
    contact_list = db.get_or_404(ContactList, list_id)
    form = ImportForm()
    if not form.validate_on_submit():
        for errors in form.errors.values():
            for error in errors:
                flash(error, "error")
        return redirect(url_for("contacts.show_list", list_id=list_id), code=303)

    path = _save_upload(form.file.data)
    report = start_report(db.session, contact_list.id, form.file.data.filename or "upload.csv", path.stat().st_size)
    db.session.commit()

    country = (form.default_country.data or "").upper() or None
    engine = db.engine
    thread = threading.Thread(
        target=_import_and_clean_up, args=(engine, report.id, path, country), name=f"import-{report.id}", daemon=True
    )
    thread.start()
    return redirect(url_for("contacts.show_report", report_id=report.id), code=303)


def _save_upload(upload) -> Path:
    uploads = Path(current_app.instance_path) / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    path = uploads / f"{uuid.uuid4().hex}.csv"
    upload.save(path)
    return path


def _import_and_clean_up(engine, report_id: int, path: Path, country: str | None) -> None:
    try:
        load_file(engine, report_id, path, country)
    except Exception:
        # A thread cannot pass the error to a caller, so log it and close the
        # report, and the page stops showing a running import.
        log.exception("error importing upload %s into report %s", path.name, report_id)
        fail_report(engine, report_id, "The import stopped on an unexpected error; it was logged for the administrator.")
    finally:
        path.unlink(missing_ok=True)


@bp.get("/imports/<int:report_id>")
def show_report(report_id: int):
    """Show an import's progress while it runs and its report when it is done."""
    report = db.get_or_404(ImportReport, report_id)
    problems = db.session.execute(
        select(ImportProblem).where(ImportProblem.report_id == report_id).order_by(ImportProblem.line).limit(1000)
    ).scalars()
    template = "contacts/_report.html" if request.headers.get("HX-Request") else "contacts/report.html"
    return render_template(template, report=report, problems=list(problems))


@bp.get("/<int:list_id>/contacts/<int:contact_id>")
def show_contact(list_id: int, contact_id: int):
    """Show one contact with every attribute."""
    contact = db.get_or_404(Contact, contact_id)
    if contact.list_id != list_id:
        abort(404)
    return render_template("contacts/contact.html", contact=contact)
