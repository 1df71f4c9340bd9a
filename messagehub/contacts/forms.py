"""Forms of the contacts pages."""

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import StringField
from wtforms.validators import DataRequired, Length, Optional, Regexp


class ListForm(FlaskForm):
    """Name of a new contact list."""

    name = StringField("List name", validators=[DataRequired(), Length(max=200)])


class ImportForm(FlaskForm):
    """A CSV file and the country its national phone numbers belong to."""

    file = FileField("CSV file", validators=[FileRequired("Choose a file to import.")])
    default_country = StringField(
        "Default country for phone numbers",
        validators=[Optional(), Regexp(r"^[A-Za-z]{2}$", message="Use a two-letter country code such as US or DE.")],
    )
