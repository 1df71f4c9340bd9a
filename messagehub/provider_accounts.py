"""Provider accounts: what each API provider needs, how it is stored, and its sender.

Flask-free: the settings pages and the campaign processes both use it. Secret
fields are stored encrypted (``messagehub.secretbox``) as one token per
account and are decrypted only to open a sender.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from messagehub import secretbox
from messagehub.secretbox import SecretUnreadable
from messagehub.models import Channel, ProviderAccount
from messagehub.providers.base import BatchSender


@dataclass(frozen=True)
class AccountField:
    """One setting of a provider account as the settings form shows it."""

    name: str
    label: str
    required: bool = True
    secret: bool = False
    help: str = ""
    default: str = ""
    # A regular expression the whole value must match, and what to say when it does not.
    pattern: str = ""
    pattern_message: str = ""


@dataclass(frozen=True)
class ProviderKind:
    """A provider MessageHub can send through, and the fields its accounts have."""

    name: str
    label: str
    channel: str
    module: str
    sender_class: str
    fields: tuple[AccountField, ...] = field(default_factory=tuple)
    # The sender takes the account's rate as ``rate``, to size its batches of concurrent requests.
    takes_rate: bool = False

    @property
    def default_rate(self) -> float:
        """Messages per second the provider allows by default (its module's ``DEFAULT_RATE``)."""
        return float(importlib.import_module(self.module).DEFAULT_RATE)

    @property
    def setting_fields(self) -> tuple[AccountField, ...]:
        return tuple(f for f in self.fields if not f.secret)

    @property
    def secret_fields(self) -> tuple[AccountField, ...]:
        return tuple(f for f in self.fields if f.secret)


_BASE_URL_HELP = "Leave empty for the provider's own API; set it to reach a proxy or a local test server."
_AWS_ENDPOINT_HELP = "Leave empty for AWS itself; set it to reach a VPC endpoint or a local test server."

KINDS: dict[str, ProviderKind] = {
    kind.name: kind
    for kind in (
        ProviderKind(
            "sendgrid",
            "SendGrid",
            Channel.EMAIL.value,
            "messagehub.providers.sendgrid",
            "SendGridSender",
            (
                AccountField("api_key", "API key", secret=True, help="A key with the mail.send scope."),
                AccountField("base_url", "API base URL", required=False, help=_BASE_URL_HELP),
            ),
        ),
        ProviderKind(
            "ses",
            "Amazon SES",
            Channel.EMAIL.value,
            "messagehub.providers.ses",
            "SesSender",
            (
                AccountField("region", "AWS region", default="eu-west-1"),
                AccountField("access_key_id", "Access key ID"),
                AccountField("secret_access_key", "Secret access key", secret=True),
                AccountField("configuration_set", "Configuration set", required=False),
                AccountField("endpoint_url", "Endpoint URL", required=False, help=_AWS_ENDPOINT_HELP),
            ),
            takes_rate=True,
        ),
        ProviderKind(
            "twilio",
            "Twilio",
            Channel.SMS.value,
            "messagehub.providers.twilio",
            "TwilioSender",
            (
                AccountField(
                    "account_sid", "Account SID", help="AC followed by 32 hexadecimal digits.",
                    pattern=r"AC[0-9a-fA-F]{32}", pattern_message="Enter the SID as AC followed by 32 hexadecimal digits.",
                ),
                AccountField("auth_token", "Auth token", secret=True),
                AccountField("base_url", "API base URL", required=False, help=_BASE_URL_HELP),
            ),
            takes_rate=True,
        ),
        ProviderKind(
            "sns",
            "Amazon SNS",
            Channel.SMS.value,
            "messagehub.providers.sns",
            "SnsSender",
            (
                AccountField("region", "AWS region", default="eu-west-1"),
                AccountField("access_key_id", "Access key ID"),
                AccountField("secret_access_key", "Secret access key", secret=True),
                AccountField(
                    "sms_type", "SMS type", required=False, default="Transactional",
                    help="Transactional (the default) or Promotional.",
                ),
                AccountField("endpoint_url", "Endpoint URL", required=False, help=_AWS_ENDPOINT_HELP),
            ),
            takes_rate=True,
        ),
    )
}


class AccountProblem(Exception):
    """An account cannot be used as it is stored: unknown kind, missing field."""


def kind_of(account: ProviderAccount) -> ProviderKind:
    """Return the provider kind of ``account``."""
    try:
        return KINDS[account.kind]
    except KeyError:
        raise AccountProblem(f"Account {account.name!r} has an unknown provider {account.kind!r}.") from None


def channel_of(account: ProviderAccount) -> str:
    """Return "email" or "sms": what the account sends."""
    return kind_of(account).channel


def read_secrets(account: ProviderAccount, secret_key: str) -> dict[str, str]:
    """Return the account's secret fields, decrypted."""
    if not account.secrets_encrypted:
        return {}
    return json.loads(secretbox.decrypt(secret_key, account.secrets_encrypted))


def store_secrets(account: ProviderAccount, secret_key: str, changed: dict[str, str]) -> None:
    """Encrypt ``changed`` into the account; a secret left empty keeps its stored value."""
    secrets = read_secrets(account, secret_key) if account.secrets_encrypted else {}
    secrets.update({name: value for name, value in changed.items() if value})
    account.secrets_encrypted = secretbox.encrypt(secret_key, json.dumps(secrets))


def accounts_for(session: Session, channel: str) -> list[ProviderAccount]:
    """Return the accounts that send ``channel`` messages, by name."""
    accounts = session.query(ProviderAccount).order_by(ProviderAccount.name).all()
    return [account for account in accounts if KINDS.get(account.kind) and KINDS[account.kind].channel == channel]


def missing_fields(account: ProviderAccount, values: dict[str, str]) -> list[str]:
    """Return the labels of the required fields ``values`` lacks."""
    return [f.label for f in kind_of(account).fields if f.required and not values.get(f.name)]


def account_problem(account: ProviderAccount, secret_key: str) -> str | None:
    """Return why the account cannot send as stored, or None."""
    try:
        missing = missing_fields(account, {**account.settings, **read_secrets(account, secret_key)})
    except (AccountProblem, SecretUnreadable) as e:
        return str(e)
    if missing:
        return f"Account “{account.name}” lacks {', '.join(missing)}: complete it in Settings."
    return None


def open_account_sender(account: ProviderAccount, secret_key: str, timeout: float) -> BatchSender:
    """Build the API sender of ``account`` with its secrets decrypted."""
    kind = kind_of(account)
    values = {**account.settings, **read_secrets(account, secret_key)}
    missing = missing_fields(account, values)
    if missing:
        raise AccountProblem(f"Account “{account.name}” lacks {', '.join(missing)}: complete it in Settings.")

    arguments = {f.name: values[f.name] for f in kind.fields if values.get(f.name)}
    if kind.takes_rate:
        arguments["rate"] = account.rate_per_second
    sender_class = getattr(importlib.import_module(kind.module), kind.sender_class)
    try:
        return sender_class(**arguments, timeout=timeout)
    except ValueError as e:
        # The sender checks formats (an account SID, a region, a URL) before any request.
        raise AccountProblem(f"Account “{account.name}” cannot be used: {e}. Correct it in Settings.") from e
