"""Forms of the campaign pages."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email
from flask_wtf import FlaskForm
from wtforms import SelectChoice, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional, ValidationError

from messagehub.delivery_settings import DELIVERY_METHODS


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
    delivery_method = SelectField(
        "Send through", choices=[SelectChoice(value, label) for value, label in DELIVERY_METHODS.items()]
    )

    def validate_text_body(self, field) -> None:
        if not (field.data or "").strip() and not (self.html_body.data or "").strip():
            raise ValidationError("Write a plain-text body, an HTML body, or both.")


class TestSendForm(FlaskForm):
    """Recipient address of one test message, and the contact it is personalised as."""

    address = StringField("Send a test to", validators=[DataRequired(), no_line_breaks, email_address])
    contact_id = StringField("As contact", validators=[Optional()])
