"""Campaign operations shared by the pages and the command line: checks, previews, test sends."""

from __future__ import annotations

import secrets
from typing import Iterator

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from messagehub.delivery_settings import open_sender
from messagehub.engine import status as campaign_status
from messagehub.engine.process import engine_settings
from messagehub.engine.sqlstore import recipient_context
from messagehub.messages.mime import build_message, make_message_id
from messagehub.messages.templating import (
    AudienceCheck,
    CampaignTemplates,
    RenderedContent,
    TemplateProblem,
    check_audience,
)
from messagehub.models import Campaign, Contact
from messagehub.providers.base import SendResult


def contact_context(contact: Contact) -> dict:
    """Return the template fields of one contact."""
    return recipient_context(contact.email or "", contact)


def contact_label(contact: Contact) -> str:
    """Return how a contact is named in messages to the user: address, else phone, else id."""
    return contact.email or contact.phone or f"contact {contact.id}"


def compile_templates(campaign: Campaign) -> CampaignTemplates:
    """Compile the campaign's subject and bodies; raises TemplateSyntaxProblem, a TemplateProblem."""
    return CampaignTemplates.compile(campaign.subject, campaign.text_body, campaign.html_body)


def audience(session: Session, list_id: int) -> Iterator[tuple[str, dict]]:
    """Yield each sendable contact of a list as (label, template context), streaming."""
    query = (
        select(Contact)
        .where(Contact.list_id == list_id, Contact.email.is_not(None), Contact.unsubscribed.is_(False))
        .order_by(Contact.id)
        .execution_options(yield_per=1000)
    )
    for contact in session.execute(query).scalars():
        yield contact_label(contact), contact_context(contact)


def check_campaign(session: Session, campaign: Campaign) -> AudienceCheck:
    """Render every template for every recipient and report which contacts lack which fields."""
    templates = compile_templates(campaign)
    return check_audience(templates, audience(session, campaign.list_id))


def launch_problem(session: Session, campaign: Campaign, running_here: bool = False) -> str | None:
    """Return why the campaign cannot be sent now, or None.

    A draft is checked in full first: every template must render for every recipient.
    """
    if running_here:
        return f"Campaign {campaign.id} is already sending."
    if campaign.status == campaign_status.FINISHED:
        return f"Campaign {campaign.id} has finished; duplicate it to send it again."
    if campaign.list_id is None:
        return "Choose a contact list first."
    if campaign.status != campaign_status.DRAFT:
        return None

    try:
        result = check_campaign(session, campaign)
    except TemplateProblem as e:
        return str(e)
    if result.total == 0:
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
    domain = settings.message_id_domain or campaign.from_email.rpartition("@")[2] or "localhost"
    message = build_message(
        subject=f"[Test] {content.subject}",
        text=content.text,
        html=content.html,
        from_name=campaign.from_name,
        from_email=campaign.from_email,
        reply_to=campaign.reply_to,
        to_name="",
        to_email=address,
        # Delivery ids start at 1, so id 0 keeps test Message-IDs apart from
        # the campaign's; the random suffix keeps test sends apart from each other.
        message_id=make_message_id(campaign.id, 0, domain, settings.install_token + secrets.token_hex(4)),
    )
    sender = open_sender(campaign.delivery_method, engine, config)
    try:
        return sender.send(message, lambda: None)
    finally:
        sender.close()

