"""Campaign operations shared by the pages and the command line: checks, previews, test sends."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from datetime import datetime
from typing import Iterator

from sqlalchemy import Engine, Select, select
from sqlalchemy.orm import Session

from messagehub.delivery_settings import DELIVERY_METHODS, open_sender
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
from messagehub.models import Campaign, Channel, Contact, Delivery, OptOut, ProviderAccount, Setting
from messagehub.provider_accounts import KINDS, account_problem, accounts_for
from messagehub.providers.base import EmailContent, OutgoingSms, SendError, SendResult


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


def compile_templates(campaign: Campaign) -> CampaignTemplates:
    """Compile the campaign's subject and bodies; raises TemplateSyntaxProblem, a TemplateProblem."""
    if is_sms(campaign):
        return CampaignTemplates.compile("", campaign.text_body, "")
    return CampaignTemplates.compile(campaign.subject, campaign.text_body, campaign.html_body)


def audience(session: Session, list_id: int, channel: str = Channel.EMAIL.value) -> Iterator[tuple[str, dict]]:
    """Yield each contact of a list the campaign will send to as (label, template context), streaming."""
    query = (
        select(Contact)
        .where(Contact.list_id == list_id, reachable(channel))
        .order_by(Contact.id)
        .execution_options(yield_per=1000)
    )
    phones: set[str] = set()
    for contact in session.execute(query).scalars():
        if channel != Channel.SMS.value:
            yield contact_label(contact), contact_context(contact)
        elif contact.phone not in phones:
            # The engine sends one message per number, to its first contact.
            phones.add(contact.phone)
            yield contact.phone, contact_context(contact)


def check_campaign(session: Session, campaign: Campaign) -> AudienceCheck:
    """Render every template for every recipient and report which contacts lack which fields."""
    templates = compile_templates(campaign)
    return check_audience(templates, audience(session, campaign.list_id, campaign.channel))


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

    A draft is checked in full first: every template must render for every recipient.
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


def history_query(campaign_id: int, status: str = "", search: str = "") -> Select:
    """Select a campaign's deliveries in queue order, by status and by part of the address."""
    query = select(Delivery).where(Delivery.campaign_id == campaign_id).order_by(Delivery.id)
    if status:
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
