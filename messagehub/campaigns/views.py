"""Campaign pages: list, edit, check, preview, test send, send now and live progress."""

from __future__ import annotations

import json
import logging
import time

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user
from sqlalchemy import select
from wtforms import SelectChoice

from messagehub.auth.access import role_required
from messagehub.campaigns import export as export_csv
from messagehub.campaigns import foreground, service
from messagehub.campaigns.forms import CampaignForm, SmsCampaignForm, SmsTestForm, TestSendForm
from messagehub.delivery_settings import SenderNotConfigured
from messagehub.engine import status as campaign_status
from messagehub.extensions import db
from messagehub.htmx import wants_panel
from messagehub.jobs import service as jobs_service
from messagehub.messages.templating import CampaignTemplates, MissingFields, TemplateProblem, TemplateSyntaxProblem
from messagehub.models import Campaign, CampaignStatus, Channel, Contact, ContactList, Delivery, DeliveryStatus, Role
from messagehub.providers.base import SendError
from messagehub.supervisor.base import SupervisorError
from messagehub.supervisor.choose import choose_supervisor

bp = Blueprint("campaigns", __name__, url_prefix="/campaigns")
log = logging.getLogger("messagehub.web")
audit = logging.getLogger("messagehub.audit")

STATUSES = [status.value for status in CampaignStatus]
# Seconds between two progress events on the server-sent event stream.
EVENT_INTERVAL = 0.5

# Seconds between two checks, while a progress stream runs, that the campaign's run is still alive.
RECONCILE_INTERVAL = 10.0


def _campaign_or_404(campaign_id: int) -> Campaign:
    return db.get_or_404(Campaign, campaign_id)


def _list_choices() -> list[SelectChoice]:
    lists = db.session.execute(select(ContactList).order_by(ContactList.name)).scalars()
    return [SelectChoice(0, "Choose a list…")] + [SelectChoice(item.id, item.name) for item in lists]


@bp.get("/")
def index():
    """List campaigns, optionally filtered by status."""
    selected = request.args.get("status", "")
    query = select(Campaign).order_by(Campaign.id.desc())
    if selected in STATUSES:
        query = query.where(Campaign.status == selected)
    campaigns = db.session.execute(query).scalars().all()
    return render_template("campaigns/index.html", campaigns=campaigns, statuses=STATUSES, selected=selected)


def _delivery_choices(channel: str) -> list[SelectChoice]:
    """Return the ways a campaign of ``channel`` can be sent: outbox and SMTP for email, then accounts."""
    return [SelectChoice(value, label) for value, label in service.delivery_choices(db.session, channel)]


def _campaign_form(channel: str, campaign: Campaign | None = None) -> CampaignForm | SmsCampaignForm:
    """Build the form of a campaign of ``channel``, with its lists and ways of sending to choose from."""
    form_class = SmsCampaignForm if channel == Channel.SMS.value else CampaignForm
    form = form_class(obj=campaign)
    form.list_id.choices = _list_choices()
    form.delivery_method.choices = _delivery_choices(channel)
    if campaign is not None and campaign.delivery_method == "account" and not form.is_submitted():
        form.delivery_method.data = f"account:{campaign.provider_account_id}"
    return form


@bp.route("/new", methods=["GET", "POST"])
@role_required(Role.OPERATOR)
def new():
    """Create a draft email campaign, or an SMS campaign with ``?channel=sms``."""
    channel = request.args.get("channel", Channel.EMAIL.value)
    if channel not in (Channel.EMAIL.value, Channel.SMS.value):
        channel = Channel.EMAIL.value
    form = _campaign_form(channel)
    if request.method == "GET":
        _fill_defaults(form, channel)
    if form.validate_on_submit() and _templates_compile(form, channel):
        campaign = Campaign(channel=channel)
        _fill(campaign, form)
        db.session.add(campaign)
        db.session.commit()
        audit.info("user %s created campaign %s", current_user.username, campaign.id, extra={"campaign_id": campaign.id})
        flash("Campaign saved as a draft. Check it, preview it, then send it.", "success")
        return redirect(url_for("campaigns.show", campaign_id=campaign.id), code=303)

    return render_template("campaigns/edit.html", form=form, campaign=None, channel=channel), 400 if form.errors else 200


def _fill_defaults(form: CampaignForm | SmsCampaignForm, channel: str) -> None:
    """Start an empty new-campaign form with the sending defaults of the settings page."""
    defaults = service.load_sending_defaults(db.session)
    if channel == Channel.SMS.value:
        form.sms_sender.data = defaults.sms_sender
        method = defaults.sms_delivery_method
    else:
        form.from_name.data = defaults.from_name
        form.from_email.data = defaults.from_email
        form.reply_to.data = defaults.reply_to
        method = defaults.delivery_method

    # A default account that was deleted since is no longer among the choices.
    if method in {choice.value for choice in form.delivery_method.choices}:
        form.delivery_method.data = method


@bp.route("/<int:campaign_id>/edit", methods=["GET", "POST"])
@role_required(Role.OPERATOR)
def edit(campaign_id: int):
    """Change a campaign that has not been sent yet."""
    campaign = _campaign_or_404(campaign_id)
    if campaign.status != campaign_status.DRAFT:
        flash("Only a draft can be edited; this campaign has been launched.", "error")
        return redirect(url_for("campaigns.show", campaign_id=campaign_id), code=303)

    form = _campaign_form(campaign.channel, campaign)
    if form.validate_on_submit() and _templates_compile(form, campaign.channel):
        _fill(campaign, form)
        db.session.commit()
        flash("Campaign saved.", "success")
        return redirect(url_for("campaigns.show", campaign_id=campaign.id), code=303)

    return render_template("campaigns/edit.html", form=form, campaign=campaign, channel=campaign.channel), 400 if form.errors else 200


def _templates_compile(form: CampaignForm | SmsCampaignForm, channel: str) -> bool:
    """Attach a template syntax error to the field it is in; tell whether all compile."""
    try:
        if channel == Channel.SMS.value:
            CampaignTemplates.compile("", form.text_body.data or "", "")
        else:
            CampaignTemplates.compile(form.subject.data, form.text_body.data or "", form.html_body.data or "")
    except TemplateSyntaxProblem as e:
        getattr(form, e.field).errors.append(str(e))
        return False
    return True


# Fields a campaign's form edits and a duplicate copies, besides the name.
_CONTENT_FIELDS = (
    "channel", "list_id", "subject", "from_name", "from_email", "reply_to", "text_body", "html_body",
    "delivery_method", "provider_account_id", "sms_sender",
)
# Bodies are kept exactly as typed; every other text field is stripped.
_VERBATIM_FIELDS = ("text_body", "html_body")


def _fill(campaign: Campaign, form: CampaignForm | SmsCampaignForm) -> None:
    for name in ("name", *_CONTENT_FIELDS):
        if name not in form or name == "delivery_method":
            continue
        value = form[name].data
        setattr(campaign, name, value.strip() if isinstance(value, str) and name not in _VERBATIM_FIELDS else value)

    method = form.delivery_method.data or ""
    if method.startswith("account:"):
        campaign.delivery_method = "account"
        campaign.provider_account_id = int(method.partition(":")[2])
    else:
        campaign.delivery_method = method
        campaign.provider_account_id = None


@bp.get("/<int:campaign_id>")
def show(campaign_id: int):
    """Show a campaign: content, audience check, progress and actions."""
    campaign = _campaign_or_404(campaign_id)
    contacts = []
    if campaign.list_id:
        contacts = db.session.execute(
            select(Contact)
            .where(Contact.list_id == campaign.list_id, service.reachable(campaign.channel))
            .order_by(Contact.id)
            .limit(20)
        ).scalars().all()
    return render_template(
        "campaigns/show.html",
        campaign=campaign,
        contacts=contacts,
        test_form=SmsTestForm() if service.is_sms(campaign) else TestSendForm(),
        sending_here=foreground.is_running(campaign_id),
        delivery_problem=service.delivery_problem(db.session, campaign, current_app.config["SECRET_KEY"]),
    )


@bp.get("/<int:campaign_id>/check")
def check(campaign_id: int):
    """Render every template for every recipient and show who lacks which field."""
    campaign = _campaign_or_404(campaign_id)
    try:
        # A passing check is stored, so that launching the draft need not repeat it.
        result = service.check_and_remember(db.session, campaign)
        plan = service.sms_plan(db.session, campaign) if service.is_sms(campaign) else None
    except TemplateProblem as e:
        db.session.commit()
        return render_template("campaigns/_check.html", error=str(e), result=None, campaign=campaign, plan=None)

    db.session.commit()
    return render_template("campaigns/_check.html", error=None, result=result, campaign=campaign, plan=plan)


@bp.get("/<int:campaign_id>/preview")
def preview(campaign_id: int):
    """Show the campaign as one contact would receive it."""
    campaign = _campaign_or_404(campaign_id)
    contact = _chosen_contact(campaign, request.args.get("contact", ""))
    content, error = None, None
    if contact is None:
        error = "No contact found for that address in the campaign's list."
    else:
        try:
            content = service.preview(campaign, contact)
        except MissingFields as e:
            error = f"This contact lacks {', '.join(sorted(e.fields))}; add the field or give the template a default."
        except TemplateProblem as e:
            error = str(e)
    template = "campaigns/_preview.html" if wants_panel() else "campaigns/preview.html"
    return render_template(template, campaign=campaign, contact=contact, content=content, error=error)


def _chosen_contact(campaign: Campaign, identifier: str) -> Contact | None:
    """Find a contact of the campaign's list by id, address or number; the first one if none is named."""
    query = select(Contact).where(Contact.list_id == campaign.list_id, service.reachable(campaign.channel))
    identifier = identifier.strip()
    # Ids fit in 18 digits; a longer digit string is a phone number typed without "+".
    if identifier.isdigit() and len(identifier) <= 18:
        query = query.where(Contact.id == int(identifier))
    elif identifier.isdigit():
        query = query.where(Contact.phone == "+" + identifier)
    elif identifier.startswith("+"):
        query = query.where(Contact.phone == identifier)
    elif identifier:
        query = query.where(Contact.email_key == identifier.casefold())
    return db.session.execute(query.order_by(Contact.id).limit(1)).scalar()


@bp.post("/<int:campaign_id>/test")
@role_required(Role.OPERATOR)
def test_send(campaign_id: int):
    """Send one test message to an address the user typed."""
    campaign = _campaign_or_404(campaign_id)
    form = SmsTestForm() if service.is_sms(campaign) else TestSendForm()
    if not form.validate_on_submit():
        for name, errors in form.errors.items():
            for error in errors:
                flash(f"Test message not sent: {form[name].label.text}: {error}", "error")
        return redirect(url_for("campaigns.show", campaign_id=campaign_id), code=303)

    contact = _chosen_contact(campaign, form.contact_id.data or "")
    if contact is None and (form.contact_id.data or "").strip():
        flash(
            f"Test message not sent: no contact “{form.contact_id.data.strip()}” in the campaign's list "
            "(give its id, address or number, or leave the field empty).",
            "error",
        )
        return redirect(url_for("campaigns.show", campaign_id=campaign_id), code=303)

    try:
        result = service.send_test(db.engine, current_app.config, campaign, contact, form.address.data)
    except (MissingFields, TemplateProblem, SenderNotConfigured, SendError, ValueError) as e:
        log.warning("error sending a test of campaign %s: %s", campaign_id, e, extra={"campaign_id": campaign_id})
        flash(f"Test message not sent: {_plain_error(e)}", "error")
    else:
        audit.info("user %s sent a test of campaign %s", current_user.username, campaign_id, extra={"campaign_id": campaign_id})
        flash(f"Test message sent to {form.address.data}: {result.reply}", "success")
    return redirect(url_for("campaigns.show", campaign_id=campaign_id), code=303)


def _plain_error(error: Exception) -> str:
    if isinstance(error, MissingFields):
        return f"the contact lacks {', '.join(sorted(error.fields))}."
    if isinstance(error, SendError):
        return error.reply
    return str(error)


@bp.post("/<int:campaign_id>/launch")
@role_required(Role.OPERATOR)
def launch(campaign_id: int):
    """Check the campaign, then run it in the background (its own unit) or in this web process."""
    campaign = _campaign_or_404(campaign_id)
    mode = request.form.get("mode", jobs_service.BACKGROUND)
    if mode not in (jobs_service.BACKGROUND, jobs_service.FOREGROUND):
        flash("Choose background or foreground.", "error")
        return redirect(url_for("campaigns.show", campaign_id=campaign_id), code=303)

    problem = service.launch_problem(db.session, campaign, current_app.config["SECRET_KEY"], foreground.is_running(campaign_id))
    if problem:
        flash(problem, "error")
        return redirect(url_for("campaigns.show", campaign_id=campaign_id), code=303)

    if mode == jobs_service.BACKGROUND:
        return _launch_background(campaign)
    return _launch_foreground(campaign)


def _launch_background(campaign: Campaign):
    try:
        jobs_service.launch_background(db.engine, db.session, choose_supervisor(current_app.config), campaign, current_user.username)
    except (SupervisorError, campaign_status.StatusError) as e:
        flash(f"The campaign could not start in the background: {e}", "error")
        return redirect(url_for("campaigns.show", campaign_id=campaign.id), code=303)

    flash("Campaign launched in the background. It keeps running if you close this page.", "success")
    return redirect(url_for("jobs.monitor", campaign_id=campaign.id), code=303)


def _launch_foreground(campaign: Campaign):
    kind = jobs_service.start_kind(campaign)
    try:
        jobs_service.check_no_live_run(campaign, choose_supervisor(current_app.config))
        foreground.start(campaign.id, current_app.config)
    except (foreground.AlreadyRunning, SenderNotConfigured, campaign_status.StatusError, LookupError, SupervisorError) as e:
        flash(str(e), "error")
        return redirect(url_for("campaigns.show", campaign_id=campaign.id), code=303)

    db.session.expire(campaign)
    jobs_service.mark_foreground(db.session, campaign, kind, current_user.username, "web")
    audit.info("user %s started campaign %s in the foreground", current_user.username, campaign.id, extra={"campaign_id": campaign.id})
    flash("Sending started in the web app. Progress updates live below.", "success")
    return redirect(url_for("campaigns.show", campaign_id=campaign.id), code=303)


@bp.post("/<int:campaign_id>/pause")
@role_required(Role.OPERATOR)
def pause(campaign_id: int):
    """Pause a running campaign after the message in flight."""
    campaign = _campaign_or_404(campaign_id)
    try:
        campaign_status.check_transition(campaign_id, campaign.status, campaign_status.PAUSED)
    except campaign_status.StatusError as e:
        flash(str(e), "error")
        return redirect(url_for("campaigns.show", campaign_id=campaign_id), code=303)

    # The status change reaches a run in any process at its next batch; the
    # event stops a run in this process before its next message.
    campaign.status = campaign_status.PAUSED
    db.session.commit()
    foreground.stop(campaign_id)
    audit.info("user %s paused campaign %s", current_user.username, campaign_id, extra={"campaign_id": campaign_id})
    flash("Pausing: the run stops within a second, after the message in flight. Resume it to carry on where it stopped.", "success")
    return redirect(url_for("campaigns.show", campaign_id=campaign_id), code=303)


@bp.post("/<int:campaign_id>/duplicate")
@role_required(Role.OPERATOR)
def duplicate(campaign_id: int):
    """Create a draft with the same content and list, to send a campaign again."""
    original = _campaign_or_404(campaign_id)
    copy = Campaign(name=f"Copy of {original.name}"[:200])
    for name in _CONTENT_FIELDS:
        setattr(copy, name, getattr(original, name))
    db.session.add(copy)
    db.session.commit()
    audit.info("user %s duplicated campaign %s as %s", current_user.username, campaign_id, copy.id, extra={"campaign_id": copy.id})
    flash(f"Draft created from “{original.name}”. Check it, then launch it.", "success")
    return redirect(url_for("campaigns.edit", campaign_id=copy.id), code=303)


@bp.get("/<int:campaign_id>/progress")
def progress(campaign_id: int):
    """Return the progress panel of a campaign."""
    return render_template("campaigns/_progress.html", campaign=_campaign_or_404(campaign_id))


@bp.get("/<int:campaign_id>/events")
def events(campaign_id: int):
    """Stream the progress panel as server-sent events until the campaign stops running."""
    _campaign_or_404(campaign_id)
    app = current_app._get_current_object()

    @stream_with_context
    def stream():
        last = None
        reconciled = float("-inf")
        while True:
            # A run that died with its process would keep this stream going for good.
            if time.monotonic() - reconciled >= RECONCILE_INTERVAL:
                jobs_service.reconcile_or_log(db.session, choose_supervisor(app.config))
                reconciled = time.monotonic()
            db.session.expire_all()
            campaign = db.session.get(Campaign, campaign_id)
            html = render_template("campaigns/_progress.html", campaign=campaign, streaming=True)
            if html != last:
                yield _sse("progress", html)
                last = html
            if campaign.status != campaign_status.RUNNING:
                yield _sse("done", json.dumps({"status": campaign.status}))
                return
            db.session.rollback()
            time.sleep(app.config.get("EVENT_INTERVAL", EVENT_INTERVAL))

    return Response(stream(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(event: str, data: str) -> str:
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {event}\n{lines}\n"


# Recipients shown per page of a campaign's history.
HISTORY_PAGE_SIZE = 100
DELIVERY_STATUSES = [status.value for status in DeliveryStatus]
# The history's filters: each status, then the sent rows whose delivery the provider never confirmed.
HISTORY_FILTERS = [*DELIVERY_STATUSES, service.UNCONFIRMED]


@bp.get("/<int:campaign_id>/deliveries")
def deliveries(campaign_id: int):
    """List the campaign's recipients with each outcome, filtered by status and address.

    With ``?delivery=<id>`` the page also shows the message that delivery
    carried; an htmx request for it gets only that panel.
    """
    campaign = _campaign_or_404(campaign_id)
    opened = _opened_delivery(campaign, request.args.get("delivery", type=int))
    if opened is not None and wants_panel():
        return render_template("campaigns/_delivery.html", campaign=campaign, message=opened)

    selected = request.args.get("status", "")
    if selected not in HISTORY_FILTERS:
        selected = ""
    search = request.args.get("q", "").strip()
    page = db.paginate(service.history_query(campaign_id, selected, search), per_page=HISTORY_PAGE_SIZE, error_out=False)
    return render_template(
        "campaigns/deliveries.html",
        campaign=campaign, page=page, selected=selected, search=search, statuses=HISTORY_FILTERS, message=opened,
    )


def _opened_delivery(campaign: Campaign, delivery_id: int | None) -> service.SentMessage | None:
    """Render the message of one delivery of ``campaign``; 404 when it belongs to another campaign."""
    if delivery_id is None:
        return None
    delivery = db.session.get(Delivery, delivery_id)
    if delivery is None or delivery.campaign_id != campaign.id:
        abort(404)
    return service.sent_message(db.session, campaign, delivery)


@bp.get("/<int:campaign_id>/export")
def export(campaign_id: int):
    """Download one CSV row per delivery: address, name, outcome, provider reply and id, sent time."""
    campaign = _campaign_or_404(campaign_id)
    chunks = export_csv.result_csv(export_csv.result_rows(db.engine, campaign.id))
    audit.info("user %s exported the results of campaign %s", current_user.username, campaign.id, extra={"campaign_id": campaign.id})
    return Response(
        chunks,
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="campaign-{campaign.id}-results.csv"'},
    )
