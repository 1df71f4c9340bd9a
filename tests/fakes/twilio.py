"""A local stand-in for Twilio's REST API 2010-04-01 that checks every request against Twilio's description.

It serves ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (201 with
the Message resource) and ``GET /2010-04-01/Accounts/{Sid}.json`` (the Account
resource), with HTTP basic authentication by account SID and auth token.
Errors have Twilio's shape ``{"code", "message", "more_info", "status"}``.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime

from werkzeug.wrappers import Request, Response

from messagehub.messages.sms import count_segments
from tests.fakes.openapi_check import ApiDescription, StandInServer, Violation, json_response

API_VERSION = "2010-04-01"
_MESSAGES_PATH = re.compile(r"/2010-04-01/Accounts/(?P<sid>[^/]+)/Messages\.json")
_ACCOUNT_PATH = re.compile(r"/2010-04-01/Accounts/(?P<sid>[^/]+)\.json")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")

# Twilio's error codes and messages, from its error reference.
AUTHENTICATE = (20003, "Authenticate")
NOT_FOUND = 20404
TOO_MANY_REQUESTS = (20429, "Too Many Requests")
BODY_REQUIRED = (21602, "Message body is required.")
FROM_REQUIRED = (21603, "A 'From' phone number is required.")
TO_REQUIRED = (21604, "A 'To' phone number is required.")
INVALID_TO = 21211
UNSUBSCRIBED = (21610, "Attempt to send to unsubscribed recipient")

# Twilio's injected-failure codes follow its 20xxx pattern for HTTP
# statuses (20429, 20500, 20503): 20000 plus the status.
_STATUS_CODE_BASE = 20000


@dataclass(frozen=True)
class AcceptedSms:
    """A message the stand-in accepted.

    ``from_`` is None when the request named a messaging service instead.
    ``segments`` is how many SMS segments the body takes. ``accepted_at`` is
    ``time.monotonic()`` when it was accepted.
    """

    sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    segments: int
    accepted_at: float


class FakeTwilio(StandInServer):
    """Twilio's Messages and Accounts resources on 127.0.0.1 for one account.

    ``account_status`` is what the Account resource reports ("active",
    "suspended" or "closed"). It does not stop messages.
    """

    def __init__(self, description: ApiDescription, account_sid: str | None = None, auth_token: str | None = None):
        super().__init__(description)
        self.account_sid = account_sid or f"AC{secrets.token_hex(16)}"
        self.auth_token = auth_token or secrets.token_hex(16)
        self.account_status = "active"
        self._invalid_numbers: set[str] = set()
        self._opted_out_numbers: set[str] = set()
        self._accepted: list[AcceptedSms] = []

    def __repr__(self) -> str:
        return f"FakeTwilio(url={self.url!r}, account_sid={self.account_sid!r})"

    @property
    def accepted(self) -> list[AcceptedSms]:
        """Return a copy of every accepted message, in the order of acceptance."""
        with self._lock:
            return list(self._accepted)

    def invalid_number(self, number: str) -> None:
        """Reply 21211 "The 'To' number ... is not a valid phone number." to messages for ``number``."""
        with self._lock:
            self._invalid_numbers.add(number)

    def opted_out(self, number: str) -> None:
        """Reply 21610 "Attempt to send to unsubscribed recipient" to messages for ``number``."""
        with self._lock:
            self._opted_out_numbers.add(number)

    def respond(self, request: Request, problems: list[Violation]) -> Response:
        """Route ``request`` to the resource it names."""
        messages = _MESSAGES_PATH.fullmatch(request.path)
        if messages and request.method == "POST":
            return self._create_message(request, messages.group("sid"), problems)

        account = _ACCOUNT_PATH.fullmatch(request.path)
        if account and request.method == "GET":
            return self._fetch_account(request, account.group("sid"))

        return error_response(404, NOT_FOUND, f"The requested resource {request.path} was not found")

    def _authentication_failure(self, request: Request, path_sid: str) -> Response | None:
        """Return the reply to a request with wrong credentials or another account's path, else None."""
        credentials = request.authorization
        authorized = (
            credentials is not None
            and credentials.type == "basic"
            and credentials.username == self.account_sid
            and credentials.password == self.auth_token
        )
        if not authorized:
            return error_response(401, *AUTHENTICATE, headers={"WWW-Authenticate": 'Basic realm="Twilio API"'})

        if path_sid != self.account_sid:
            return error_response(404, NOT_FOUND, f"The requested resource {request.path} was not found")

        return None

    def _fetch_account(self, request: Request, sid: str) -> Response:
        failure = self._authentication_failure(request, sid)
        if failure is not None:
            return failure

        return json_response(self._account_resource(), 200)

    def _create_message(self, request: Request, sid: str, problems: list[Violation]) -> Response:
        """Reply to a message request: each rejection in Twilio's order, then acceptance."""
        self.note_send_request()
        failure = self._authentication_failure(request, sid)
        if failure is not None:
            return failure

        if problems:
            return violation_response(request, problems)

        limited = self.take_rate_token()
        if limited is not None:
            return error_response(429, *TOO_MANY_REQUESTS, headers={"Retry-After": str(limited.retry_after)})

        status = self.take_failure()
        if status is not None:
            return error_response(status, _STATUS_CODE_BASE + status, f"Injected failure {status}")

        return self._accept_or_reject(request)

    def _accept_or_reject(self, request: Request) -> Response:
        rejection = self._rejection(request)
        if rejection is not None:
            return rejection

        message = self._record(request)
        self.delay_reply()
        return json_response(self._message_resource(message), 201)

    def _rejection(self, request: Request) -> Response | None:
        """Return Twilio's reply to a message it would not accept, else None."""
        form = request.form
        if not form.get("From") and not form.get("MessagingServiceSid"):
            self.record_rule_breach(request, "neither From nor MessagingServiceSid is given")
            return error_response(400, *FROM_REQUIRED)

        if not form.get("Body") and not form.get("MediaUrl") and not form.get("ContentSid"):
            self.record_rule_breach(request, "neither Body, MediaUrl nor ContentSid is given")
            return error_response(400, *BODY_REQUIRED)

        to = form["To"]
        with self._lock:
            invalid = to in self._invalid_numbers or not _E164.fullmatch(to)
            opted_out = to in self._opted_out_numbers

        if invalid:
            return error_response(400, INVALID_TO, f"The 'To' number {to} is not a valid phone number.")

        if opted_out:
            return error_response(400, *UNSUBSCRIBED)

        return None

    def _record(self, request: Request) -> AcceptedSms:
        form = request.form
        body = form.get("Body", "")
        message = AcceptedSms(
            sid=f"SM{secrets.token_hex(16)}",
            to=form["To"],
            from_=form.get("From"),
            messaging_service_sid=form.get("MessagingServiceSid"),
            body=body,
            segments=count_segments(body).segments,
            accepted_at=time.monotonic(),
        )
        with self._lock:
            self._accepted.append(message)

        return message

    def _message_resource(self, message: AcceptedSms) -> dict[str, object]:
        """Return the Message resource as Twilio returns a new message, with status "queued"."""
        now = format_datetime(datetime.now(timezone.utc))
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{message.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": message.body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": message.from_,
            "messaging_service_sid": message.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(message.segments),
            "price": None,
            "price_unit": "USD",
            "sid": message.sid,
            "status": "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": message.to,
            "uri": f"{uri}.json",
        }

    def _account_resource(self) -> dict[str, object]:
        """Return the Account resource, which carries the auth token as Twilio's does."""
        created = format_datetime(datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}"
        return {
            "auth_token": self.auth_token,
            "date_created": created,
            "date_updated": created,
            "friendly_name": "MessageHub test account",
            "owner_account_sid": self.account_sid,
            "sid": self.account_sid,
            "status": self.account_status,
            "subresource_uris": {"messages": f"{uri}/Messages.json"},
            "type": "Full",
            "uri": f"{uri}.json",
        }


def error_response(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Return Twilio's error body ``{"code", "message", "more_info", "status"}``."""
    more_info = f"https://www.twilio.com/docs/errors/{code}"
    payload = {"code": code, "message": message, "more_info": more_info, "status": status}
    return json_response(payload, status, headers)


def violation_response(request: Request, problems: list[Violation]) -> Response:
    """Return Twilio's 400 for a request its description rejects."""
    if any(problem.message == "'To' is a required property" for problem in problems):
        return error_response(400, *TO_REQUIRED)

    if any(problem.field == "To" for problem in problems):
        to = request.form.get("To", "")
        return error_response(400, INVALID_TO, f"The 'To' number {to} is not a valid phone number.")

    # Twilio has no single code for a malformed request, so the HTTP status
    # takes its place, as the twilio SDK does when a body has no code.
    message = "; ".join(str(problem) for problem in problems)
    return error_response(400, 400, message)
