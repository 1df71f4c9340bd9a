"""Checks and changes of one contact edited by hand, with the importer's rules.

This module imports no Flask.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import phonenumbers
from email_validator import EmailNotValidError
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from messagehub.contacts.importer import COUNTRY_CODES, InvalidPhoneNumber, normalize_email, normalize_phone
from messagehub.models import Channel, Contact, OptOut

NO_CONTACT_MESSAGE = "Enter an email address or a phone number: a contact needs at least one of them."


class InvalidContact(ValueError):
    """Values of an edited contact that cannot be saved, with one message per form field name."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(", ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class ContactValues:
    """The normalised values of a contact, ready to store.

    ``email`` is email-validator's normalised address and ``email_key`` its
    case-folded form, as the importer stores them. ``phone`` is in E.164 form
    and ``country`` an upper-case ISO 3166 alpha-2 code.
    """

    email: str | None
    email_key: str | None
    first_name: str
    last_name: str
    phone: str | None
    country: str | None


def check_contact(email: str, first_name: str, last_name: str, phone: str, country: str) -> ContactValues:
    """Validate and normalise the fields of a contact form as the importer does a row.

    A national phone number is read in ``country``. Unlike the importer, a
    bad phone number or country is an error here and is not dropped.

    :raises InvalidContact: a value is invalid, or neither email nor phone is given.
    """
    errors: dict[str, str] = {}
    checked_country = _check_country(country.strip(), errors)
    checked_email = _check_email(email.strip(), errors)
    checked_phone = _check_phone(phone.strip(), checked_country, errors)

    if not errors and checked_email is None and checked_phone is None:
        errors["email"] = NO_CONTACT_MESSAGE
    if errors:
        raise InvalidContact(errors)

    return ContactValues(
        email=checked_email,
        email_key=checked_email.casefold() if checked_email is not None else None,
        first_name=_normalize_name(first_name),
        last_name=_normalize_name(last_name),
        phone=checked_phone,
        country=checked_country,
    )


def save_contact(session: Session, contact: Contact, values: ContactValues) -> None:
    """Store ``values`` in ``contact`` and commit.

    :raises InvalidContact: another contact of the list has the same address,
        found before writing or by the unique constraint when two saves race.
    """
    if values.email_key is not None and _email_taken(session, contact, values.email_key):
        raise InvalidContact({"email": _duplicate_message(values.email)})

    contact.email = values.email
    contact.email_key = values.email_key
    contact.first_name = values.first_name
    contact.last_name = values.last_name
    contact.phone = values.phone
    contact.country = values.country
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise InvalidContact({"email": _duplicate_message(values.email)}) from None


def opt_outs_of(session: Session, contact: Contact) -> list[OptOut]:
    """Return the opt-outs recorded for the contact's address or number, by any campaign."""
    conditions = []
    if contact.email:
        conditions.append((OptOut.channel == Channel.EMAIL.value) & (OptOut.address == contact.email))
    if contact.phone:
        conditions.append((OptOut.channel == Channel.SMS.value) & (OptOut.address == contact.phone))
    if not conditions:
        return []

    return list(session.execute(select(OptOut).where(or_(*conditions)).order_by(OptOut.id)).scalars())


def _check_country(value: str, errors: dict[str, str]) -> str | None:
    if not value:
        return None

    code = value.upper()
    if code not in COUNTRY_CODES:
        errors["country"] = f'"{value}" is not an ISO 3166 country code: use two letters such as DE or US.'
        return None

    return code


def _check_email(value: str, errors: dict[str, str]) -> str | None:
    if not value:
        return None

    try:
        return normalize_email(value)
    except EmailNotValidError as error:
        errors["email"] = f"Invalid email address: {error}"
        return None


def _check_phone(value: str, country: str | None, errors: dict[str, str]) -> str | None:
    if not value:
        return None

    region = country if country in phonenumbers.SUPPORTED_REGIONS else None
    if region is None and not value.startswith(("+", "00")):
        errors["phone"] = "Write the number with its country code, such as +49 30 1234567, or fill in the country."
        return None

    try:
        return normalize_phone(value, region)
    except InvalidPhoneNumber as error:
        errors["phone"] = f"Invalid phone number: {error}."
        return None


def _normalize_name(value: str) -> str:
    # NFC as in the importer, so that a name typed here and the same name
    # imported compare equal.
    return unicodedata.normalize("NFC", value.strip())


def _email_taken(session: Session, contact: Contact, email_key: str) -> bool:
    query = select(Contact.id).where(
        Contact.list_id == contact.list_id, Contact.email_key == email_key, Contact.id != contact.id
    )
    return session.execute(query.limit(1)).first() is not None


def _duplicate_message(email: str | None) -> str:
    return f"Another contact of this list has the address {email}: each address may appear once per list."
