"""Forms of the campaign pages."""

from __future__ import annotations

import re

from email_validator import EmailNotValidError, validate_email
from flask_wtf import FlaskForm
from wtforms import SelectChoice, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional, ValidationError



def no_line_breaks(form, field) -> None:
    """Reject header values that contain a line break, which could start a new header."""
    if field.data and any(ch in field.data for ch in "\r\n\x00"):
        raise ValidationError("Line breaks are not allowed here.")


def email_address(form, field) -> None:
    """Check the address's syntax and keep it in normalised form."""
    if not field.data:
        return
    try:
        field.data = validate_email(field.data.strip(), check_deliverability=False).normalized
    except EmailNotValidError as e:
        raise ValidationError(str(e)) from e


class CampaignForm(FlaskForm):
    """Content, sender and audience of an email campaign."""

    name = StringField("Campaign name", validators=[DataRequired(), Length(max=200)])
    list_id = SelectField("Contact list", coerce=int, validators=[DataRequired("Choose a contact list.")])
    subject = StringField("Subject", validators=[DataRequired(), Length(max=900), no_line_breaks])
    from_name = StringField("Sender name", validators=[Optional(), Length(max=200), no_line_breaks])
    from_email = StringField("Sender address", validators=[DataRequired(), no_line_breaks, email_address])
    reply_to = StringField("Reply-to address", validators=[Optional(), no_line_breaks, email_address])
    text_body = TextAreaField("Plain-text body")
    html_body = TextAreaField("HTML body")
    # "outbox", "smtp", or "account:<id>"; the view fills in the choices.
    delivery_method = SelectField("Send through", choices=[])

    def validate_text_body(self, field) -> None:
        if not (field.data or "").strip() and not (self.html_body.data or "").strip():
            raise ValidationError("Write a plain-text body, an HTML body, or both.")


# A number in E.164, an alphanumeric sender id (up to 11 characters, at least
# one letter), or a Twilio messaging service SID.
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_SENDER_ID = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_MESSAGING_SERVICE = re.compile(r"MG[0-9a-f]{32}")


def sms_sender(form, field) -> None:
    """Accept an E.164 number, an alphanumeric sender id or a messaging service SID."""
    value = (field.data or "").strip()
    if not any(pattern.fullmatch(value) for pattern in (_E164, _SENDER_ID, _MESSAGING_SERVICE)):
        raise ValidationError(
            "Enter a number in E.164 form (+14155550100), a sender id of up to 11 letters and digits, "
            "or a Twilio messaging service SID (MG followed by 32 hex digits)."
        )
    field.data = value


def e164_number(form, field) -> None:
    """Accept only a phone number in E.164 form."""
    value = re.sub(r"[\s().-]", "", field.data or "")
    if not _E164.fullmatch(value):
        raise ValidationError("Enter the number in E.164 form: + then country code and number, e.g. +14155550100.")
    field.data = value


class SmsCampaignForm(FlaskForm):
    """Message, sender and audience of an SMS campaign."""

    name = StringField("Campaign name", validators=[DataRequired(), Length(max=200)])
    list_id = SelectField("Contact list", coerce=int, validators=[DataRequired("Choose a contact list.")])
    sms_sender = StringField("Sender", validators=[DataRequired(), sms_sender])
    text_body = TextAreaField("Message", validators=[DataRequired("Write the message.")])
    # "account:<id>" of an SMS account; the view fills in the choices.
    delivery_method = SelectField(
        "Send through", choices=[], validate_choice=False, validators=[DataRequired("Choose an SMS account to send through.")]
    )

    def validate_delivery_method(self, field) -> None:
        if field.data not in {choice.value for choice in field.choices}:
            raise ValidationError("Choose an SMS account to send through; add one in Settings if there is none.")


class SmsTestForm(FlaskForm):
    """Phone number of one test message, and the contact it is personalised as."""

    address = StringField("Send a test to", validators=[DataRequired(), e164_number])
    contact_id = StringField("As contact", validators=[Optional()])


class TestSendForm(FlaskForm):
    """Recipient address of one test message, and the contact it is personalised as."""

    address = StringField("Send a test to", validators=[DataRequired(), no_line_breaks, email_address])
    contact_id = StringField("As contact", validators=[Optional()])
