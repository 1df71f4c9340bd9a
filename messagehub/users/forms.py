"""Forms of the user administration pages."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import SelectChoice, SelectField, StringField
from wtforms.validators import DataRequired, Length, Optional

from messagehub.auth.passwords import MIN_PASSWORD_LENGTH
from messagehub.campaigns.forms import no_line_breaks
from messagehub.models import Role

ROLE_CHOICES = [
    SelectChoice(Role.ADMIN.value, "Admin: everything, including users and settings"),
    SelectChoice(Role.OPERATOR.value, "Operator: creates and launches campaigns"),
    SelectChoice(Role.VIEWER.value, "Viewer: reads only"),
]


class NewUserForm(FlaskForm):
    """User name, role and an optional one-time password of a new user."""

    username = StringField("User name", validators=[DataRequired(), Length(max=80), no_line_breaks])
    role = SelectField("Role", choices=ROLE_CHOICES, default=Role.OPERATOR.value)
    # A text field, not a password field: the admin passes this password on,
    # so they need to read it, and the form keeps it when validation fails.
    password = StringField(
        "One-time password",
        validators=[
            Optional(),
            Length(min=MIN_PASSWORD_LENGTH, message=f"The password must have at least {MIN_PASSWORD_LENGTH} characters."),
        ],
    )


class RoleForm(FlaskForm):
    """The role of an existing user."""

    role = SelectField("Role", choices=ROLE_CHOICES)
