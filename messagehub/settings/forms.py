"""Forms of the settings page."""

from flask_wtf import FlaskForm
from wtforms import BooleanField, FloatField, IntegerField, PasswordField, SelectChoice, SelectField, StringField
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from messagehub.campaigns.forms import email_address, no_line_breaks
from messagehub.campaigns.forms import sms_sender as sms_sender_value


class SmtpForm(FlaskForm):
    """Connection settings of the SMTP server campaigns are sent through."""

    host = StringField("Server host name", validators=[DataRequired(), no_line_breaks])
    port = IntegerField("Port", default=587, validators=[DataRequired(), NumberRange(1, 65535)])
    security = SelectField(
        "Security",
        choices=[
            SelectChoice("starttls", "STARTTLS (usually port 587)"),
            SelectChoice("tls", "Implicit TLS (usually port 465)"),
            SelectChoice("none", "None (port 25, trusted networks only)"),
        ],
    )
    username = StringField("User name", validators=[Optional(), no_line_breaks])
    password = PasswordField("Password", validators=[Optional()])
    timeout = FloatField("Timeout in seconds", default=30.0, validators=[DataRequired(), NumberRange(1, 600)])
    verify_tls = BooleanField("Verify the server's TLS certificate", default=True)


class SmtpCheckForm(FlaskForm):
    """Optional address for the connection test's message."""

    test_recipient = StringField("Send a test message to", validators=[Optional(), no_line_breaks, email_address])
    sender = StringField("From address of the test message", validators=[Optional(), no_line_breaks, email_address])


class SendingDefaultsForm(FlaskForm):
    """Sender fields and ways of sending that new campaigns start with; each may stay empty."""

    from_name = StringField("Sender name", validators=[Optional(), Length(max=200), no_line_breaks])
    from_email = StringField("Sender address", validators=[Optional(), no_line_breaks, email_address])
    reply_to = StringField("Reply-to address", validators=[Optional(), no_line_breaks, email_address])
    sms_sender = StringField("SMS sender", validators=[Optional(), sms_sender_value])
    # "" means no default. Other values are those of the new-campaign form's "Send through", and the view fills them in.
    delivery_method = SelectField("Send email through", choices=[])
    sms_delivery_method = SelectField("Send text messages through", choices=[])
