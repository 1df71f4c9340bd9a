"""A local stand-in for SendGrid's v3 Mail Send API that checks every request against SendGrid's description.

It serves ``POST /v3/mail/send`` and ``GET /v3/scopes`` with SendGrid's reply
shapes: 202 with an ``X-Message-Id`` header and no body, or an error body
``{"errors": [{"message", "field", "help"}]}``. An accepted request is
recorded as one ``AcceptedEmail`` per personalization, with the
personalization's substitutions applied to the subject and content the way
SendGrid applies them.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.fakes.openapi_check import ApiDescription, RateLimited, StandInServer, Violation, json_response

MAIL_SEND_PATH = "/v3/mail/send"
SCOPES_PATH = "/v3/scopes"

# SendGrid's documented limits on one personalization.
SUBSTITUTIONS_MAX_BYTES = 10_000
CUSTOM_ARGS_MAX_BYTES = 10_000

INVALID_ADDRESS = "Does not contain a valid address."
INVALID_ADDRESS_HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message.personalizations.to"
UNAUTHORIZED = "The provided authorization grant is invalid, expired, or revoked"
FORBIDDEN = "access forbidden"
TOO_MANY_REQUESTS = "too many requests"
DUPLICATE_ADDRESS = (
    "Each unique email address in the personalizations array should only be included once. "
    "You have included {email} more than once."
)

ErrorItem = tuple[str | None, str, str | None]


@dataclass(frozen=True)
class AcceptedEmail:
    """One personalization of an accepted request, as SendGrid would deliver it.

    ``to_email`` and ``to_name`` are the personalization's first ``to``.
    ``text`` and ``html`` are None when the request had no content of that
    type. ``accepted_at`` is ``time.monotonic()`` when the request was accepted.
    """

    to_email: str
    to_name: str | None
    subject: str
    text: str | None
    html: str | None
    custom_args: dict[str, str]
    from_email: str
    from_name: str | None
    reply_to: str | None
    x_message_id: str
    accepted_at: float


class FakeSendGrid(StandInServer):
    """SendGrid's Mail Send API on 127.0.0.1, accepting ``Authorization: Bearer <api_key>``.

    ``scopes`` lists what ``GET /v3/scopes`` returns. Without "mail.send"
    among them, mail send requests get 403, as SendGrid replies to a key that
    lacks the permission.
    """

    def __init__(self, description: ApiDescription, api_key: str | None = None):
        super().__init__(description)
        self.api_key = api_key or f"SG.{secrets.token_urlsafe(16)}.{secrets.token_urlsafe(32)}"
        self.scopes = ["mail.send"]
        self._rejected_addresses: set[str] = set()
        self._accepted: list[AcceptedEmail] = []
        self._accepted_requests = 0

    def __repr__(self) -> str:
        return f"FakeSendGrid(url={self.url!r})"

    @property
    def accepted(self) -> list[AcceptedEmail]:
        """Return a copy of every accepted personalization, in the order the requests were accepted."""
        with self._lock:
            return list(self._accepted)

    @property
    def accepted_requests(self) -> int:
        """Return the number of mail send requests accepted with 202."""
        with self._lock:
            return self._accepted_requests

    def reject_address(self, email: str) -> None:
        """Reply 400 "Does not contain a valid address." to any request that sends to ``email``.

        SendGrid rejects the whole request and names each personalization's
        field, such as ``personalizations.3.to.0.email``.
        """
        with self._lock:
            self._rejected_addresses.add(email.lower())

    def respond(self, request: Request, problems: list[Violation]) -> Response:
        """Route ``request`` to the endpoint it names."""
        if request.method == "POST" and request.path == MAIL_SEND_PATH:
            return self._mail_send(request, problems)

        if request.method == "GET" and request.path == SCOPES_PATH:
            return self._scopes(request)

        return error_response(404, [(None, "not found", None)])

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _scopes(self, request: Request) -> Response:
        if not self._authorized(request):
            return error_response(401, [(None, UNAUTHORIZED, None)])

        return json_response({"scopes": list(self.scopes)}, 200)

    def _mail_send(self, request: Request, problems: list[Violation]) -> Response:
        """Reply to a mail send request: each rejection in SendGrid's order, then acceptance."""
        self.note_send_request()
        if not self._authorized(request):
            return error_response(401, [(None, UNAUTHORIZED, None)])

        if problems:
            return error_response(400, [(problem.field, problem.message, None) for problem in problems])

        if "mail.send" not in self.scopes:
            return error_response(403, [(None, FORBIDDEN, None)])

        limited = self.take_rate_token()
        if limited is not None:
            return rate_limited_response(limited)

        status = self.take_failure()
        if status is not None:
            return error_response(status, [(None, f"injected failure {status}", None)])

        body = request.get_json()
        return self._accept_or_reject(request, body)

    def _accept_or_reject(self, request: Request, body: dict[str, Any]) -> Response:
        breaches = documented_limit_breaches(body)
        for field_name, message, _ in breaches:
            self.record_rule_breach(request, f"{field_name}: {message}")
        if breaches:
            return error_response(400, breaches)

        rejections = self._rejections(body)
        if rejections:
            return error_response(400, rejections)

        message_id = secrets.token_urlsafe(16)
        self._record(body, message_id)

        self.delay_reply()
        return Response(status=202, headers={"X-Message-Id": message_id})

    def _rejections(self, body: dict[str, Any]) -> list[ErrorItem]:
        with self._lock:
            rejected = set(self._rejected_addresses)

        errors: list[ErrorItem] = []
        for index, personalization in enumerate(body["personalizations"]):
            for position, recipient in enumerate(personalization["to"]):
                if recipient["email"].lower() in rejected:
                    field_name = f"personalizations.{index}.to.{position}.email"
                    errors.append((field_name, INVALID_ADDRESS, INVALID_ADDRESS_HELP))

        return errors

    def _record(self, body: dict[str, Any], message_id: str) -> None:
        now = time.monotonic()
        emails = [delivered_email(body, each, message_id, now) for each in body["personalizations"]]
        with self._lock:
            self._accepted.extend(emails)
            self._accepted_requests += 1


def delivered_email(
    body: dict[str, Any], personalization: dict[str, Any], message_id: str, accepted_at: float
) -> AcceptedEmail:
    """Return what one personalization of ``body`` delivers, with its substitutions applied."""
    substitutions = personalization.get("substitutions", {})
    contents = {item["type"]: substitute(item["value"], substitutions) for item in body["content"]}
    recipient = personalization["to"][0]
    sender = body["from"]
    reply_to = body.get("reply_to")
    return AcceptedEmail(
        to_email=recipient["email"],
        to_name=recipient.get("name"),
        subject=substitute(personalization.get("subject", body["subject"]), substitutions),
        text=contents.get("text/plain"),
        html=contents.get("text/html"),
        custom_args=dict(personalization.get("custom_args", {})),
        from_email=sender["email"],
        from_name=sender.get("name"),
        reply_to=reply_to["email"] if reply_to else None,
        x_message_id=message_id,
        accepted_at=accepted_at,
    )


def substitute(text: str, substitutions: dict[str, str]) -> str:
    """Replace each substitution key in ``text`` by its value, in one pass.

    One pass means a value that happens to contain a key is left as it is.
    """
    if not substitutions:
        return text

    keys = sorted(substitutions, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(key) for key in keys))
    return pattern.sub(lambda match: substitutions[match.group(0)], text)


def documented_limit_breaches(body: dict[str, Any]) -> list[ErrorItem]:
    """Return the breaches of SendGrid's documented per-request rules that its description does not encode.

    The rules: an address appears once across all personalizations, and
    substitutions and custom_args take at most 10,000 bytes per
    personalization. SendGrid's error reference gives the wording of the
    first rule but not of the size limits, so those messages are the
    stand-in's own.
    """
    breaches: list[ErrorItem] = []
    seen: set[str] = set()
    for index, personalization in enumerate(body["personalizations"]):
        for kind in ("to", "cc", "bcc"):
            for position, recipient in enumerate(personalization.get(kind, [])):
                email = recipient["email"].lower()
                if email in seen:
                    message = DUPLICATE_ADDRESS.format(email=recipient["email"])
                    breaches.append((f"personalizations.{index}.{kind}.{position}.email", message, None))
                seen.add(email)

        breaches.extend(_size_breaches(index, personalization))

    return breaches


def _size_breaches(index: int, personalization: dict[str, Any]) -> list[ErrorItem]:
    breaches: list[ErrorItem] = []
    limits = (("substitutions", SUBSTITUTIONS_MAX_BYTES), ("custom_args", CUSTOM_ARGS_MAX_BYTES))
    for name, limit in limits:
        size = pairs_size(personalization.get(name, {}))
        if size > limit:
            message = f"The {name} of a personalization may not exceed {limit} bytes, but these take {size}."
            breaches.append((f"personalizations.{index}.{name}", message, None))

    return breaches


def pairs_size(pairs: dict[str, str]) -> int:
    """Return the UTF-8 size of the keys and values of ``pairs``, in bytes."""
    return sum(len(key.encode()) + len(str(value).encode()) for key, value in pairs.items())


def error_response(status: int, errors: list[ErrorItem], headers: dict[str, str] | None = None) -> Response:
    """Return SendGrid's error body ``{"errors": [{"message", "field", "help"}]}`` with ``status``."""
    items = [{"message": message, "field": field_name, "help": help_url} for field_name, message, help_url in errors]
    return json_response({"errors": items}, status, headers)


def rate_limited_response(limited: RateLimited) -> Response:
    """Return SendGrid's 429 with its rate limit headers and ``Retry-After``."""
    headers = {
        "Retry-After": str(limited.retry_after),
        "X-RateLimit-Limit": str(limited.limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(limited.reset_epoch),
    }
    return error_response(429, [(None, TOO_MANY_REQUESTS, None)], headers)
