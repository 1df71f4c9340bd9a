"""The import wizard and its reports.

Step 1 stores the uploaded file under a random token (``upload_file``).
Step 2 shows its encoding, delimiter and first rows, and a choice of field
per column (``map_upload``). Step 3 imports it in a thread of the web app
(``import_file``), and the report page polls the progress until the end.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from flask import Response, current_app, flash, redirect, render_template, request, stream_with_context, url_for
from flask_login import current_user
from sqlalchemy import Engine, select

from messagehub.auth.access import role_required
from messagehub.contacts.blueprint import bp
from messagehub.contacts.csvfile import CsvFileError, CsvTable, open_table
from messagehub.contacts.forms import ImportForm, MappingForm
from messagehub.contacts.importer import (
    ATTRIBUTE,
    COLUMN_TARGETS,
    IGNORE,
    ColumnMappingError,
    attribute_names,
    default_targets,
    map_columns_as,
)
from messagehub.contacts.list_views import contacts_page, render_list_page
from messagehub.contacts.loading import fail_report, load_file, start_report
from messagehub.contacts.problem_csv import problem_csv_chunks
from messagehub.contacts.uploads import (
    UPLOAD_FOLDER,
    PendingUpload,
    claim_upload,
    discard_upload,
    find_upload,
    remove_expired_uploads,
    save_upload,
)
from messagehub.extensions import db
from messagehub.htmx import wants_panel
from messagehub.models import ContactList, ImportProblem, ImportReport, Role

log = logging.getLogger("messagehub.web")
audit = logging.getLogger("messagehub.audit")

PREVIEW_ROWS = 5
PROBLEMS_PAGE_SIZE = 500

MISSING_UPLOAD_MESSAGE = (
    "The uploaded file was not found: it was imported or cancelled already, or it is older than a day. "
    "Upload it again."
)


@bp.post("/<int:list_id>/uploads")
@role_required(Role.OPERATOR)
def upload_file(list_id: int):
    """Store an uploaded CSV file and go on to the column mapping (step 1 of the wizard)."""
    contact_list = db.get_or_404(ContactList, list_id)
    form = ImportForm()
    if form.validate_on_submit():
        upload = _store_upload(contact_list, form)
        if upload is not None:
            return redirect(url_for("contacts.map_upload", list_id=list_id, upload=upload.token), code=303)

    return render_list_page(contact_list, contacts_page(list_id, ""), "", form), 400


@bp.get("/<int:list_id>/imports/new")
@role_required(Role.OPERATOR)
def map_upload(list_id: int):
    """Show the file's encoding, delimiter and first rows with a field choice per column (step 2)."""
    contact_list = db.get_or_404(ContactList, list_id)
    upload = _find_own_upload(list_id, request.args.get("upload", ""))
    if upload is None:
        flash(MISSING_UPLOAD_MESSAGE, "error")
        return redirect(url_for("contacts.show_list", list_id=list_id), code=303)

    form = MappingForm(upload=upload.token, default_country=upload.default_country or "")
    return _render_mapping(contact_list, upload, form, targets=None)


@bp.post("/<int:list_id>/uploads/cancel")
@role_required(Role.OPERATOR)
def cancel_upload(list_id: int):
    """Remove a stored upload the user decided not to import."""
    upload = _find_own_upload(list_id, request.form.get("upload", ""))
    if upload is not None:
        discard_upload(_upload_folder(), upload.token)
        flash(f"The import of {upload.filename} was cancelled and the file removed.", "info")
    return redirect(url_for("contacts.show_list", list_id=list_id), code=303)


@bp.post("/<int:list_id>/imports")
@role_required(Role.OPERATOR)
def import_file(list_id: int):
    """Start importing a stored upload with the chosen mapping (step 3), or a posted file as it is.

    A POST with a ``file`` and no ``upload`` imports that file at once with
    the columns mapped by their header names, as the command line does.
    """
    contact_list = db.get_or_404(ContactList, list_id)
    if "upload" not in request.form:
        return _import_posted_file(contact_list)

    form = MappingForm()
    upload = _find_own_upload(list_id, form.upload.data or "")
    columns = _columns_of(upload) if upload is not None else None
    if upload is None or columns is None:
        flash(MISSING_UPLOAD_MESSAGE, "error")
        return redirect(url_for("contacts.show_list", list_id=list_id), code=303)

    targets = _posted_targets(columns)
    if not form.validate_on_submit() or isinstance(targets, ColumnMappingError):
        error = targets if isinstance(targets, ColumnMappingError) else None
        return _render_mapping(contact_list, upload, form, _chosen_targets(columns), error), 400

    if not claim_upload(_upload_folder(), upload.token):
        flash(f"{upload.filename} is being imported already.", "info")
        return redirect(url_for("contacts.show_list", list_id=list_id), code=303)

    country = (form.default_country.data or "").upper() or None
    report = _start_import(contact_list, upload, country, targets)
    return redirect(url_for("contacts.show_report", report_id=report.id), code=303)


@bp.get("/imports/<int:report_id>")
def show_report(report_id: int):
    """Show an import's progress while it runs and its report, with every problem row, when it is done."""
    report = db.get_or_404(ImportReport, report_id)
    problems = db.paginate(
        select(ImportProblem)
        .where(ImportProblem.report_id == report_id)
        .order_by(ImportProblem.line, ImportProblem.id),
        per_page=PROBLEMS_PAGE_SIZE,
        error_out=False,
    )
    template = "contacts/_report.html" if wants_panel() else "contacts/report.html"
    return render_template(template, report=report, problems=problems)


@bp.get("/imports/<int:report_id>/rejected-rows.csv")
def download_problems(report_id: int):
    """Send every rejected, skipped and warned row of an import as CSV, safe to open in a spreadsheet."""
    report = db.get_or_404(ImportReport, report_id)

    return Response(
        stream_with_context(problem_csv_chunks(_problems_of(report.id))),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="import-{report.id}-rejected-rows.csv"'},
    )


def _problems_of(report_id: int) -> Iterator[ImportProblem]:
    """Yield the report's problems in file order, reading a thousand rows at a time."""
    # The query runs only when the response streams. By then the view's own
    # session is closed, so it uses the session of the request context that
    # stream_with_context pushes again.
    query = (
        select(ImportProblem)
        .where(ImportProblem.report_id == report_id)
        .order_by(ImportProblem.line, ImportProblem.id)
        .execution_options(yield_per=1000)
    )
    yield from db.session.execute(query).scalars()


def _store_upload(contact_list: ContactList, form: ImportForm) -> PendingUpload | None:
    """Save the posted file and check that it reads as CSV; on failure add the error to the form."""
    upload = _save_posted_file(contact_list, form)
    folder = _upload_folder()

    try:
        with open_table(upload.csv_path(folder)):
            pass
    except CsvFileError as e:
        discard_upload(folder, upload.token)
        form.file.errors.append(f"{upload.filename}: {e}")
        return None

    return upload


def _save_posted_file(contact_list: ContactList, form: ImportForm) -> PendingUpload:
    """Store the file of the upload form under a new token, after removing the expired uploads."""
    folder = _upload_folder()
    # NOTE: nothing removes expired uploads on a timer. They go at the next
    # upload, so an abandoned file can stay longer than a day on a quiet server.
    remove_expired_uploads(folder)

    filename = form.file.data.filename or "upload.csv"
    country = (form.default_country.data or "").upper() or None
    return save_upload(folder, form.file.data.stream, contact_list.id, current_user.id, filename, country)


def _import_posted_file(contact_list: ContactList):
    """Import a file posted with the upload form at once, with the columns mapped by their header names."""
    form = ImportForm()
    if not form.validate_on_submit():
        for errors in form.errors.values():
            for error in errors:
                flash(error, "error")
        return redirect(url_for("contacts.show_list", list_id=contact_list.id), code=303)

    upload = _save_posted_file(contact_list, form)
    claim_upload(_upload_folder(), upload.token)

    report = _start_import(contact_list, upload, upload.default_country, targets=None)
    return redirect(url_for("contacts.show_report", report_id=report.id), code=303)


def _start_import(
    contact_list: ContactList, upload: PendingUpload, country: str | None, targets: list[str] | None
) -> ImportReport:
    """Create the report and import the claimed upload in a thread of its own."""
    path = upload.csv_path(_upload_folder())
    report = start_report(db.session, contact_list.id, upload.filename, path.stat().st_size)
    db.session.commit()

    audit.info(
        "user %s started import %s of %s into list %s", current_user.username, report.id, upload.filename, contact_list.id
    )
    thread = threading.Thread(
        target=_import_and_clean_up,
        args=(db.engine, report.id, path, country, targets),
        name=f"import-{report.id}",
        daemon=True,
    )
    thread.start()
    return report


def _import_and_clean_up(
    engine: Engine, report_id: int, path: Path, country: str | None, targets: list[str] | None
) -> None:
    try:
        load_file(engine, report_id, path, country, targets=targets)
    except Exception:
        # A thread cannot pass the error to a caller, so log it and close the
        # report, and the page stops showing a running import.
        log.exception("error importing upload %s into report %s", path.name, report_id)
        fail_report(engine, report_id, "The import stopped on an unexpected error; it was logged for the administrator.")
    finally:
        path.unlink(missing_ok=True)


def _render_mapping(
    contact_list: ContactList,
    upload: PendingUpload,
    form: MappingForm,
    targets: list[str] | None,
    error: ColumnMappingError | None = None,
):
    """Render step 2 with ``targets`` chosen, or the header names' defaults when None."""
    try:
        with open_table(upload.csv_path(_upload_folder())) as table:
            return render_template(
                "contacts/mapping.html",
                contact_list=contact_list,
                upload=upload,
                form=form,
                table=table,
                preview=_preview(table),
                columns=_column_choices(table.columns, targets),
                error=error,
            )
    except CsvFileError as e:
        # The file was checked at upload, so only a change on disk since then ends here.
        discard_upload(_upload_folder(), upload.token)
        flash(f"{upload.filename}: {e}", "error")
        return redirect(url_for("contacts.show_list", list_id=contact_list.id), code=303)


def _preview(table: CsvTable) -> list[tuple[int, list[str], str | None]]:
    """Return the first data rows, each cut or padded to the number of columns."""
    width = len(table.columns)
    return [(line, (cells + [""] * width)[:width], error) for line, cells, error in table.head(PREVIEW_ROWS)]


def _column_choices(columns: list[str], targets: list[str] | None) -> list[dict]:
    """Describe each column for the mapping form: its label, the chosen target and the options."""
    chosen = targets if targets is not None else default_targets(columns)
    fields = [(field, field) for field in COLUMN_TARGETS if field not in (ATTRIBUTE, IGNORE)]
    choices = []
    for position, (column, target, name) in enumerate(zip(columns, chosen, attribute_names(columns))):
        label = column or f"column {position + 1}"
        options = [*fields, (ATTRIBUTE, f"attribute “{name}”"), (IGNORE, "ignore this column")]
        choices.append({"position": position, "label": label, "target": target, "options": options})

    return choices


def _chosen_targets(columns: list[str]) -> list[str]:
    """Return the targets posted for each column, with unknown or missing ones as IGNORE, to show the form again."""
    chosen = [request.form.get(f"map-{position}", IGNORE) for position in range(len(columns))]
    return [target if target in COLUMN_TARGETS else IGNORE for target in chosen]


def _posted_targets(columns: list[str]) -> list[str] | ColumnMappingError:
    """Return the posted target of each column, or the error that makes the mapping unusable."""
    targets = [request.form.get(f"map-{position}", "") for position in range(len(columns))]
    missing = tuple(position for position, target in enumerate(targets) if target not in COLUMN_TARGETS)
    if missing:
        names = ", ".join(f'"{columns[position] or position + 1}"' for position in missing)
        return ColumnMappingError(f"Choose what each column maps to: no choice was sent for {names}.", missing)

    try:
        map_columns_as(columns, targets)
    except ColumnMappingError as e:
        return e

    return targets


def _columns_of(upload: PendingUpload) -> list[str] | None:
    """Return the header cells of the stored file, or None when it cannot be read any more."""
    try:
        with open_table(upload.csv_path(_upload_folder())) as table:
            return table.columns
    except (CsvFileError, OSError):
        return None


def _find_own_upload(list_id: int, token: str) -> PendingUpload | None:
    """Return the stored upload for ``token`` when it belongs to this list and the current user."""
    upload = find_upload(_upload_folder(), token)
    if upload is None or upload.list_id != list_id or upload.user_id != current_user.id:
        return None

    return upload


def _upload_folder() -> Path:
    return Path(current_app.instance_path) / UPLOAD_FOLDER
