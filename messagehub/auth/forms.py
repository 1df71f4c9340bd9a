"""Forms of the auth pages."""

from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from messagehub.auth.passwords import MIN_PASSWORD_LENGTH


class LoginForm(FlaskForm):
    """User name and password."""

    username = StringField("User name", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


class ChangePasswordForm(FlaskForm):
    """Current password and a new one, typed twice."""

    current = PasswordField("Current password", validators=[DataRequired()])
    new = PasswordField("New password", validators=[DataRequired(), Length(min=MIN_PASSWORD_LENGTH)])
    confirm = PasswordField("New password again", validators=[DataRequired(), EqualTo("new", "The passwords differ.")])
