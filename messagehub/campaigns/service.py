"""Campaign operations shared by the pages and the command line: checks, previews, test sends."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from datetime import datetime
from typing import Iterator

from sqlalchemy import Engine, Select, func, select
from sqlalchemy.orm import Session

from messagehub.campaigns.audience_shapes import ShapeMemo, field_shapes
from messagehub.delivery_settings import DELIVERY_METHODS, SMTP_NOT_CONFIGURED, open_sender, smtp_configured
from messagehub.engine import status as campaign_status
from messagehub.engine.process import engine_settings
from messagehub.engine.sqlstore import recipient_context
from messagehub.messages.mime import build_from_content, make_message_id, message_id_domain
from messagehub.messages.templating import (
    AudienceCheck,
    CampaignTemplates,
    MissingFields,
    RenderedContent,
    TemplateProblem,
    check_audience,
)
from messagehub.messages.sms import SmsPlan, SmsSegments, count_segments
from messagehub.models import Campaign, Channel, Contact, Delivery, DeliveryStatus, OptOut, ProviderAccount, Setting
from messagehub.provider_accounts import KINDS, account_problem, accounts_for
from messagehub.providers.base import EmailContent, OutgoingSms, SendError, SendResult

log = logging.getLogger("messagehub.web")


def contact_context(contact: Contact) -> dict:
    """Return the template fields of one contact."""
    return recipient_context(contact.email or "", contact)


def contact_label(contact: Contact) -> str:
    """Return how a contact is named in messages to the user: address, else phone, else id."""
    return contact.email or contact.phone or f"contact {contact.id}"


def is_sms(campaign: Campaign) -> bool:
    """Tell whether the campaign sends text messages rather than email."""
    return campaign.channel == Channel.SMS.value


def reachable(channel: str):
    """Return the condition a contact meets when it can be sent ``channel`` messages."""
    if channel == Channel.SMS.value:
        opted_out = select(OptOut.id).where(OptOut.channel == channel, OptOut.address == Contact.phone).exists()
        return Contact.phone.like("+%") & Contact.unsubscribed.is_(False) & ~opted_out
    opted_out = select(OptOut.id).where(OptOut.channel == channel, OptOut.address == Contact.email).exists()
    return Contact.email.is_not(None) & Contact.unsubscribed.is_(False) & ~opted_out


def template_sources(campaign: Campaign) -> tuple[str, str, str]:
    """Return the campaign's subject, text body and HTML body as its messages use them."""
    if is_sms(campaign):
        return "", campaign.text_body, ""
    return campaign.subject, campaign.text_body, campaign.html_body


def compile_templates(campaign: Campaign) -> CampaignTemplates:
    """Compile the campaign's subject and bodies; raises TemplateSyntaxProblem, a TemplateProblem."""
    return CampaignTemplates.compile(*template_sources(campaign))


# The columns of a contact that its label and its template fields read.
_AUDIENCE_COLUMNS = (
    Contact.id, Contact.email, Contact.first_name, Contact.last_name, Contact.phone, Contact.country, Contact.attributes,
)


def audience(session: Session, list_id: int, channel: str = Channel.EMAIL.value) -> Iterator[tuple[str, dict]]:
    """Yield each contact of a list the campaign will send to as (label, template context), streaming."""
    # Plain rows rather than Contact objects: building and tracking an ORM
    # object per contact took longer than rendering its templates.
    query = (
        select(*_AUDIENCE_COLUMNS)
        .where(Contact.list_id == list_id, reachable(channel))
        .order_by(Contact.id)
        .execution_options(yield_per=1000)
    )
    phones: set[str] = set()
    for contact in session.execute(query):
        if channel != Channel.SMS.value:
            yield contact_label(contact), contact_context(contact)
        elif contact.phone not in phones:
            # The engine sends one message per number, to its first contact.
            phones.add(contact.phone)
            yield contact.phone, contact_context(contact)


def check_campaign(session: Session, campaign: Campaign) -> AudienceCheck:
    """Render every template for every recipient and report which contacts lack which fields.

    Where the templates allow it, contacts alike in every field the templates
    can test share one render (``audience_shapes``), with the same result.
    """
    templates = compile_templates(campaign)
    shapes = field_shapes(template_sources(campaign))
    checked = ShapeMemo(templates, shapes) if shapes is not None else templates
    return check_audience(checked, audience(session, campaign.list_id, campaign.channel))


# Part of every audience fingerprint. Raise it when a change to the templating
# code can change the outcome of a check, so that checks stored before are redone.
AUDIENCE_CHECK_VERSION = 1


def audience_fingerprint(session: Session, campaign: Campaign) -> str:
    """Return a SHA-256 digest of what the campaign's audience check depends on.

    That is the templates, the channel, the list, and aggregates of the list's
    contacts and of the channel's opt-outs. Adding or deleting a contact changes
    the count or the sum of ids, and editing one (unsubscribing included) moves
    the latest ``updated_at``, which the ORM sets on every update.
    """
    # NOTE: some changes leave the fingerprint as it was. These are an update
    # written without the ORM, one made with the clock set back, and one whose
    # updated_at was taken before that of another writer's earlier commit to
    # the same list. Launch then skips the check, and the engine fails each
    # recipient whose message lacks a field instead of sending it.
    contacts = session.execute(
        select(func.count(), func.sum(Contact.id), func.max(Contact.updated_at)).where(Contact.list_id == campaign.list_id)
    ).one()
    opt_outs = session.execute(
        select(func.count(), func.sum(OptOut.id), func.max(OptOut.id)).where(OptOut.channel == campaign.channel)
    ).one()
    parts = [
        AUDIENCE_CHECK_VERSION,
        campaign.channel,
        campaign.list_id,
        campaign.subject,
        campaign.text_body,
        campaign.html_body,
        [str(value) for value in contacts],
        [str(value) for value in opt_outs],
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def check_and_remember(session: Session, campaign: Campaign) -> AudienceCheck:
    """Run the full audience check, and store the fingerprint on a draft whose check passed.

    Launching the draft later skips the check while the fingerprint still
    matches. The caller commits. Raises TemplateProblem as ``check_campaign`` does.
    """
    # Taken before the contacts are read, so a change during the check leaves
    # a fingerprint that no longer matches, never one that hides the change.
    fingerprint = audience_fingerprint(session, campaign)
    try:
        result = check_campaign(session, campaign)
    except TemplateProblem:
        _store_check(campaign, None)
        raise

    _store_check(campaign, fingerprint if result.total and not result.failing else None)
    return result


def _store_check(campaign: Campaign, fingerprint: str | None) -> None:
    # Only a draft's check is of use, because launch does not check a campaign that ran before.
    if campaign.status == campaign_status.DRAFT and campaign.audience_checked != fingerprint:
        campaign.audience_checked = fingerprint


def sms_plan(session: Session, campaign: Campaign) -> SmsPlan:
    """Render the SMS for every recipient and count encodings and segments.

    Recipients whose message cannot be rendered are left out; the audience
    check reports them.
    """
    templates = compile_templates(campaign)
    plan = SmsPlan()
    for _, context in audience(session, campaign.list_id, campaign.channel):
        if templates.missing_fields(context):
            continue
        plan.add(templates.render(context).text)
    return plan


def delivery_problem(session: Session, campaign: Campaign, secret_key: str) -> str | None:
    """Return why the campaign's way of sending does not fit it, or None."""
    if campaign.delivery_method != "account":
        if is_sms(campaign):
            return "Choose a Twilio or Amazon SNS account to send text messages through."
        if campaign.delivery_method == "smtp" and not smtp_configured(session):
            # Caught here, or a background launch would queue the audience
            # and the engine would pause the campaign at once.
            return SMTP_NOT_CONFIGURED
        return None

    account = session.get(ProviderAccount, campaign.provider_account_id) if campaign.provider_account_id else None
    if account is None:
        return "The campaign's provider account was deleted: choose another one."
    kind = KINDS.get(account.kind)
    if kind is None or kind.channel != campaign.channel:
        return f"Account “{account.name}” cannot send {'text messages' if is_sms(campaign) else 'email'}."
    if is_sms(campaign) and not campaign.sms_sender:
        return "Give the campaign a sender: a number, a sender id or a messaging service."
    return account_problem(account, secret_key)


def launch_problem(session: Session, campaign: Campaign, secret_key: str, running_here: bool = False) -> str | None:
    """Return why the campaign cannot be sent now, or None.

    A draft is checked in full first: every template must render for every
    recipient. The check is skipped when a passing one was stored for the
    same templates and contacts (``check_and_remember``).
    """
    if running_here:
        return f"Campaign {campaign.id} is already sending."
    if campaign.status == campaign_status.FINISHED:
        return f"Campaign {campaign.id} has finished; duplicate it to send it again."
    if campaign.list_id is None:
        return "Choose a contact list first."
    problem = delivery_problem(session, campaign, secret_key)
    if problem:
        return problem
    if campaign.status != campaign_status.DRAFT:
        return None
    if campaign.audience_checked and campaign.audience_checked == audience_fingerprint(session, campaign):
        log.info(
            "skipped the audience check of campaign %s: a passing one is stored for the same templates and contacts",
            campaign.id, extra={"campaign_id": campaign.id},
        )
        return None

    try:
        result = check_campaign(session, campaign)
    except TemplateProblem as e:
        return str(e)
    if result.total == 0:
        if is_sms(campaign):
            return "The list has no contact with a phone number in E.164 form to send to."
        return "The list has no contact with an email address to send to."
    if result.failing:
        examples = "; ".join(f"{label} lacks {', '.join(fields)}" for label, fields in result.examples[:3])
        return (
            f"{result.failing} of {result.total} contacts cannot be personalised: {examples}. "
            "Add the fields or give the template defaults, e.g. {{ first_name | default('there') }}."
        )
    return None


def preview(campaign: Campaign, contact: Contact) -> RenderedContent:
    """Render the campaign as ``contact`` would receive it; raises MissingFields."""
    return compile_templates(campaign).render(contact_context(contact))


def send_test(engine: Engine, config: dict, campaign: Campaign, contact: Contact | None, address: str) -> SendResult:
    """Send one message of the campaign to ``address``, personalised as ``contact``.

    The subject gets a "[Test]" prefix so the message is not mistaken for the real one.
    """
    context = contact_context(contact) if contact is not None else {"email": address}
    content = compile_templates(campaign).render(context)
    settings = engine_settings(config)
    domain = message_id_domain(settings.message_id_domain, campaign.from_email)
    # Delivery ids start at 1, so id 0 keeps test Message-IDs apart from the
    # campaign's; the random suffix keeps test sends apart from each other.
    test_id = make_message_id(campaign.id, 0, domain, settings.install_token + secrets.token_hex(4))
    if is_sms(campaign):
        with Session(engine) as session:
            if session.execute(select(OptOut.id).where(OptOut.channel == campaign.channel, OptOut.address == address)).first():
                raise ValueError(f"{address} opted out of text messages; no campaign or test sends to it")
        return _send_one(engine, config, campaign, OutgoingSms(address, campaign.sms_sender, content.text, test_id))

    parts = EmailContent(
        subject=f"[Test] {content.subject}",
        text=content.text,
        html=content.html,
        from_name=campaign.from_name,
        from_email=campaign.from_email,
        reply_to=campaign.reply_to,
        to_name="",
        to_email=address,
    )
    return _send_one(engine, config, campaign, build_from_content(parts, test_id))


def _send_one(engine: Engine, config: dict, campaign: Campaign, message) -> SendResult:
    """Send one message through the campaign's sender, whichever kind it is."""
    sender = open_sender(campaign.delivery_method, engine, config, account_id=campaign.provider_account_id)
    try:
        if not hasattr(sender, "send_batch"):
            return sender.send(message, lambda: None)
        outcome = sender.send_batch([message])[0]
    finally:
        sender.close()

    if isinstance(outcome, SendError):
        raise outcome
    return outcome


# The history filter for sent deliveries whose acceptance was never confirmed:
# the engine starts each of their replies with this word.
UNCONFIRMED = "unconfirmed"


def history_query(campaign_id: int, status: str = "", search: str = "") -> Select:
    """Select a campaign's deliveries in queue order, by status (or UNCONFIRMED) and by part of the address."""
    query = select(Delivery).where(Delivery.campaign_id == campaign_id).order_by(Delivery.id)
    if status == UNCONFIRMED:
        query = query.where(Delivery.status == DeliveryStatus.SENT.value, Delivery.provider_reply.startswith(UNCONFIRMED))
    elif status:
        query = query.where(Delivery.status == status)
    if search:
        # The user's text is matched literally, so % and _ must not act as wildcards.
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(Delivery.address.ilike(pattern, escape="\\"))
    return query


def delivery_choices(session: Session, channel: str) -> list[tuple[str, str]]:
    """Return (value, label) of each way a ``channel`` campaign can be sent: outbox and SMTP for email, then accounts."""
    choices = []
    if channel == Channel.EMAIL.value:
        choices = [(value, label) for value, label in DELIVERY_METHODS.items() if value != "account"]
    for account in accounts_for(session, channel):
        choices.append((f"account:{account.id}", f"{KINDS[account.kind].label}: {account.name}"))
    return choices


# Setting row of the sender fields that new campaigns start with.
SENDING_DEFAULTS_KEY = "sending_defaults"


@dataclass
class SendingDefaults:
    """Sender fields and ways of sending that the new-campaign forms start with.

    ``delivery_method`` applies to email campaigns ("outbox", "smtp" or
    "account:<id>"), ``sms_delivery_method`` to SMS campaigns ("account:<id>").
    """

    from_name: str = ""
    from_email: str = ""
    reply_to: str = ""
    sms_sender: str = ""
    delivery_method: str = ""
    sms_delivery_method: str = ""


def load_sending_defaults(session: Session) -> SendingDefaults:
    """Return the stored sending defaults; fields never saved are empty."""
    row = session.get(Setting, SENDING_DEFAULTS_KEY)
    stored = row.value if row is not None else {}
    known = {field.name for field in dataclass_fields(SendingDefaults)}
    return SendingDefaults(**{name: str(value) for name, value in stored.items() if name in known})


def save_sending_defaults(session: Session, defaults: SendingDefaults) -> None:
    """Store the sending defaults; the caller commits."""
    row = session.get(Setting, SENDING_DEFAULTS_KEY)
    if row is None:
        session.add(Setting(key=SENDING_DEFAULTS_KEY, value=asdict(defaults)))
    else:
        row.value = asdict(defaults)


@dataclass
class SentMessage:
    """One delivery of a campaign and its content, rendered again for the history page.

    Templates cannot change after launch, so the content matches what was sent
    unless the contact's fields changed since, which ``edited_after`` records.
    ``contact`` is None when the contact was deleted; the content is then
    rendered from the delivery's address only, as the engine does.
    """

    delivery: Delivery
    contact: Contact | None
    # When the message was sent, or its last attempt ended; None before any attempt.
    handed_over_at: datetime | None = None
    content: RenderedContent | None = None
    # Why the content could not be rendered again, when ``content`` is None.
    error: str | None = None
    edited_after: bool = False
    segments: SmsSegments | None = None


def _handed_over_at(delivery: Delivery) -> datetime | None:
    if delivery.sent_at is not None:
        return delivery.sent_at
    if delivery.attempts:
        return delivery.updated_at
    return None


def sent_message(session: Session, campaign: Campaign, delivery: Delivery) -> SentMessage:
    """Render the campaign's templates again with the fields the engine rendered the message from.

    Deliveries handed over since those fields are kept on the row show exactly
    what was sent; older ones are rendered from the contact as it is now.
    """
    contact = session.get(Contact, delivery.contact_id) if delivery.contact_id is not None else None
    when = _handed_over_at(delivery)
    kept = delivery.context is not None
    edited_after = not kept and contact is not None and when is not None and contact.updated_at > when
    message = SentMessage(delivery, contact, handed_over_at=when, edited_after=edited_after)
    context = delivery.context if kept else recipient_context(delivery.address, contact)

    try:
        message.content = compile_templates(campaign).render(context)
    except MissingFields as e:
        message.error = f"The message cannot be rendered again: the contact now lacks {', '.join(sorted(e.fields))}."
        return message
    except TemplateProblem as e:
        message.error = str(e)
        return message

    if is_sms(campaign):
        message.segments = count_segments(message.content.text)
    return message
