"""Forms of the contacts pages."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import HiddenField, StringField
from wtforms.validators import DataRequired, Length, Optional, Regexp

COUNTRY_CODE = Regexp(r"^[A-Za-z]{2}$", message="Use a two-letter country code such as US or DE.")


def stripped(value: str | None) -> str:
    """Return the field's text without surrounding whitespace, and "" for a value that is not set."""
    return (value or "").strip()


class ListForm(FlaskForm):
    """Name of a new contact list."""

    name = StringField("List name", validators=[DataRequired(), Length(max=200)])


class ImportForm(FlaskForm):
    """A CSV file and the country its national phone numbers belong to."""

    file = FileField("CSV file", validators=[FileRequired("Choose a file to import.")])
    default_country = StringField("Default country for phone numbers", validators=[Optional(), COUNTRY_CODE])


class MappingForm(FlaskForm):
    """The stored upload and default country of the wizard's mapping step.

    The column choices are ``map-<position>`` select fields, one per column of
    the file, read by the view because their number depends on the file.
    """

    upload = HiddenField(validators=[DataRequired("The upload to import is missing: upload the file again.")])
    default_country = StringField("Default country for phone numbers", validators=[Optional(), COUNTRY_CODE])


class ContactForm(FlaskForm):
    """One contact's fields as a user edits them; ``messagehub.contacts.editing`` normalises them."""

    email = StringField("Email", filters=[stripped], validators=[Length(max=320)])
    first_name = StringField("First name", filters=[stripped], validators=[Length(max=200)])
    last_name = StringField("Last name", filters=[stripped], validators=[Length(max=200)])
    phone = StringField("Phone", filters=[stripped], validators=[Length(max=40)])
    country = StringField("Country", filters=[stripped], validators=[Optional(), COUNTRY_CODE])
