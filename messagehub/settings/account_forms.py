"""Forms of provider accounts, built from each provider's field list."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask_wtf import FlaskForm
from wtforms import FloatField, PasswordField, StringField
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional, Regexp, ValidationError

from messagehub.campaigns.forms import no_line_breaks
from messagehub.provider_accounts import AccountField, ProviderKind


def http_url(form, field) -> None:
    """Accept only an http or https URL with a host."""
    if not field.data:
        return
    parts = urlsplit(field.data.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter a URL starting with https:// (or http:// for a local test server).")
    field.data = field.data.strip().rstrip("/")


class AccountFormBase(FlaskForm):
    """The fields every provider account has."""

    name = StringField("Account name", validators=[DataRequired(), Length(max=100), no_line_breaks])
    rate_per_second = FloatField(
        "Send rate (messages per second)",
        # InputRequired, not DataRequired: 0 is a number the range check should name.
        validators=[InputRequired("Enter a number of messages per second."), NumberRange(0.01, 100_000)],
    )


def account_form_class(kind: ProviderKind, has_secrets: bool) -> type[AccountFormBase]:
    """Return a form class with ``kind``'s own fields after the common ones.

    With ``has_secrets`` the account exists and secret fields may stay empty
    to keep what is stored.
    """
    attributes = {spec.name: _field(spec, has_secrets) for spec in kind.fields}
    return type(f"{kind.name.title()}AccountForm", (AccountFormBase,), attributes)


def _field(spec: AccountField, has_secrets: bool):
    validators = [no_line_breaks]
    if spec.required and not (spec.secret and has_secrets):
        validators.insert(0, DataRequired())
    else:
        validators.insert(0, Optional())
    if spec.name in ("base_url", "endpoint_url"):
        validators.append(http_url)
    if spec.pattern:
        validators.append(Regexp(f"(?:{spec.pattern})$", message=spec.pattern_message))

    if spec.secret:
        return PasswordField(spec.label, validators=validators, description=spec.help)
    return StringField(spec.label, validators=validators, default=spec.default, description=spec.help)
