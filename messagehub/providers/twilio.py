"""Send text messages through Twilio's Programmable Messaging API, one message per request.

The adapter uses the twilio SDK's Messages resource for the request and its
error classes, with an HTTP client of its own (``messagehub.providers.twilio_http``).
Twilio has no batch send, so a batch's messages go out as concurrent
requests (``messagehub.providers.request_pool``). No log line or error text
built here contains the auth token, and the SDK's request log leaves out the
Authorization header.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Union

from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http import HttpClient
from twilio.http.response import Response
from twilio.rest import Client

from messagehub.providers.base import (
    ConnectionLost,
    Outcome,
    OutgoingSms,
    PermanentFailure,
    ProviderUnavailable,
    SendResult,
    TemporaryFailure,
    Throttled,
)
from messagehub.providers.request_pool import RequestPool, batch_limit_for
from messagehub.providers.sendgrid import parse_retry_after
from messagehub.providers.twilio_http import TransportError, make_http_client

log = logging.getLogger(__name__)

DEFAULT_URL = "https://api.twilio.com"

# Messages per second. Twilio's FAQ "How quickly can I send SMS messages?"
# gives 1 message segment per second for a long code (3 for a US or Canadian
# toll-free number, 30 for a short code). Twilio queues faster requests
# rather than rejecting them, and returns 429 only past the account's REST
# API concurrency limit.
# NOTE: the limit counts segments, so messages of 2 or more segments leave
# Twilio's queue more slowly than this rate.
DEFAULT_RATE: float = 1.0

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_MESSAGING_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")

# Twilio error codes.
UNSUBSCRIBED_RECIPIENT = 21610
TOO_MANY_REQUESTS = 20429
AUTHENTICATION_FAILED = 20003

# Codes that reject the sender rather than the recipient, so that every
# message of the campaign would fail the same way: 21212 invalid From
# number, 21606 From number not able to send this message.
SENDER_CODES = frozenset({21212, 21606})

# The SDK raises TwilioServiceException for errors in the RFC 9457 problem
# format and TwilioRestException for Twilio's older error format, which the
# 2010-04-01 API uses. Both carry ``status`` and ``code``.
TwilioApiError = Union[TwilioRestException, TwilioServiceException]
_API_ERRORS = (TwilioRestException, TwilioServiceException)

IN_DOUBT_REPLY = "no reply from Twilio within the timeout after the request was sent, so it may have been accepted"

# The steps that ``check`` reports.
REACH_STEP = "reach the API"
CREDENTIALS_STEP = "credentials accepted"
ACTIVE_STEP = "account active"


class TwilioSender:
    """Send text messages through Twilio, one request per message (see ``BatchSender``).

    ``base_url`` is the API's origin (default https://api.twilio.com). The
    TWILIO_EDGE and TWILIO_REGION environment variables do not change it.
    ``timeout`` is in seconds and applies to the connection and to each read
    of the reply. ``rate`` is the account's messages per second, which sets
    how many messages a batch takes (``batch_limit_for``). A batch's requests
    go out at once over as many connections, kept open until ``close``.
    Without a rate, messages go one at a time. Not thread-safe: use one
    sender per thread.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        base_url: str | None = None,
        timeout: float = 30.0,
        rate: float | None = None,
    ):
        if not _ACCOUNT_SID.fullmatch(account_sid):
            raise ValueError(f"invalid Twilio account SID {account_sid!r}: expected AC and 32 hexadecimal digits")

        if not auth_token:
            raise ValueError("missing Twilio auth token")

        if timeout <= 0:
            raise ValueError(f"invalid Twilio timeout {timeout}: expected seconds above 0")

        self.account_sid = account_sid
        self.base_url = _checked_base_url(base_url or DEFAULT_URL)
        self.timeout = timeout
        self._pool = RequestPool(batch_limit_for(rate), "twilio-request")
        self._http = make_http_client(self.base_url, timeout, self._pool.threads)
        self._client = _make_client(account_sid, auth_token, self.base_url, self._http)
        # Resolved once: the SDK builds the account's context lazily, which
        # two threads would otherwise race to do.
        self._messages = self._client.api.v2010.account.messages

    @property
    def batch_limit(self) -> int:
        """The maximum number of messages for ``send_batch``, lower for a while after a throttled request."""
        return self._pool.window

    def __repr__(self) -> str:
        return f"TwilioSender(account_sid={self.account_sid!r}, base_url={self.base_url!r}, timeout={self.timeout})"

    def send_batch(self, messages: Sequence[OutgoingSms]) -> list[Outcome]:
        """Send each message in a request of its own, all at once, and return their outcomes (see ``BatchSender``).

        When every request failed as a whole, the first failure raises. When
        some messages got an outcome, a failed request becomes a
        ``TemporaryFailure`` (or ``Throttled``) outcome for its message and for
        those not yet sent, because raising would make the engine send the
        accepted ones again (``RequestPool.send_each``).
        """
        return self._pool.send_each(messages, self._send)

    def was_delivered(self, message_id: str) -> None:
        """Return None: Twilio identifies messages by its own SID, which an interrupted request never returned."""
        return None

    def check(self) -> list[tuple[str, bool, str]]:
        """Fetch the Account resource: reachable, credentials accepted, account status active."""
        try:
            account = self._client.api.v2010.accounts(self.account_sid).fetch()
        except _API_ERRORS as err:
            return self._rejected_check(err)
        except TransportError as err:
            return [(REACH_STEP, False, f"could not reach {self.base_url}: {err.reason}")]

        steps = [
            (REACH_STEP, True, f"{self.base_url} responded"),
            (CREDENTIALS_STEP, True, "Twilio accepted the credentials"),
        ]
        status = str(account.status)
        if status == "active":
            steps.append((ACTIVE_STEP, True, f"account {self.account_sid} is active"))
        else:
            steps.append((ACTIVE_STEP, False, f"account {self.account_sid} is {status}, so it cannot send messages"))

        return steps

    def close(self) -> None:
        """Wait for requests in flight, then close the connections kept open."""
        self._pool.close()
        self._http.close()

    def _rejected_check(self, err: TwilioApiError) -> list[tuple[str, bool, str]]:
        reply = self._reply_of(err)
        reached = (REACH_STEP, True, f"{self.base_url} responded")
        if err.status == 401 or err.code == AUTHENTICATION_FAILED:
            return [reached, (CREDENTIALS_STEP, False, f"Twilio rejected the account SID or auth token: {reply}")]

        if err.status == 404:
            detail = f"Twilio does not know account {self.account_sid}, or {self.base_url} is not its API: {reply}"
            return [reached, (CREDENTIALS_STEP, False, detail)]

        return [(REACH_STEP, False, f"{self.base_url} responded {reply}. Check the base URL, or Twilio's status page.")]

    def _send(self, message: OutgoingSms) -> Outcome:
        """Create one Message resource and return its outcome, or raise for faults beyond this message."""
        sender = (
            {"messaging_service_sid": message.sender}
            if _MESSAGING_SERVICE_SID.fullmatch(message.sender)
            else {"from_": message.sender}
        )
        try:
            created = self._messages.create(to=message.recipient, body=message.body, **sender)
        except _API_ERRORS as err:
            return self._classify(err)
        except TransportError as err:
            return self._connection_failure(err, message)
        except ValueError as err:
            return self._unreadable_reply(err, message)

        return SendResult(reply=f"201 Created, status {created.status}", provider_id=created.sid)

    def _classify(self, err: TwilioApiError) -> Outcome:
        """Return this message's failure, or raise when the fault is not this recipient's."""
        reply = self._reply_of(err)
        if err.code == UNSUBSCRIBED_RECIPIENT:
            return PermanentFailure(reply, opted_out=True, code=str(err.code))

        if err.status == 429 or err.code == TOO_MANY_REQUESTS:
            raise Throttled(reply, retry_after=self._retry_after())

        if err.status in (401, 403, 404) or err.code == AUTHENTICATION_FAILED or err.code in SENDER_CODES:
            raise ProviderUnavailable(f"Twilio rejected the account or sender: {reply}")

        if err.status >= 500:
            raise TemporaryFailure(reply, retry_after=self._retry_after())

        return PermanentFailure(reply, code=str(err.code) if err.code is not None else None)

    def _connection_failure(self, err: TransportError, message: OutgoingSms) -> Outcome:
        """Raise ``ConnectionLost`` when the request never left, else return an unconfirmed result."""
        if not err.sent:
            raise ConnectionLost(f"could not connect to Twilio at {self.base_url}: {err.reason}") from err

        log.warning("no reply from Twilio at %s for message %s: %s", self.base_url, message.message_id, err)
        return SendResult(reply=IN_DOUBT_REPLY, confirmed=False)

    def _unreadable_reply(self, err: ValueError, message: OutgoingSms) -> Outcome:
        """Accept a 2xx reply whose body the SDK could not read, and re-raise any other ``ValueError``."""
        response = self._http.last_response
        if response is None or not 200 <= response.status_code < 300:
            raise err

        log.warning("Twilio accepted message %s with an unreadable reply body: %s", message.message_id, err)
        return SendResult(reply=f"{response.status_code} with an unreadable body", provider_id=None)

    def _reply_of(self, err: TwilioApiError) -> str:
        """Return Twilio's reply as one line: "400 21211: The 'To' number ... is not a valid phone number."."""
        message = _error_message(self._http.last_response) or str(getattr(err, "msg", None) or err)
        code = f" {err.code}" if err.code is not None and err.code != err.status else ""
        return f"{err.status}{code}: {message}"

    def _retry_after(self) -> float | None:
        response = self._http.last_response
        if response is None or response.headers is None:
            return None
        return parse_retry_after(response.headers.get("Retry-After"))


def _checked_base_url(url: str) -> str:
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"invalid Twilio base URL {url!r}: expected http:// or https:// and a host")
    return url.rstrip("/")


def _make_client(account_sid: str, auth_token: str, base_url: str, http_client: HttpClient) -> Client:
    """Return an SDK client whose API domain is ``base_url``."""
    client = Client(account_sid, auth_token, http_client=http_client)

    # The SDK rewrites host names for an edge or region, which it also reads
    # from the environment. The configured base URL is meant literally.
    client.edge = None
    client.region = None
    client.api.base_url = base_url
    return client


def _error_message(response: Response | None) -> str | None:
    """Return the message of Twilio's error body, without the SDK's "Unable to create record" prefix.

    The older format puts it in ``message``, RFC 9457 problems in ``detail``
    or ``title``.
    """
    if response is None:
        return None

    try:
        payload = json.loads(response.text)
    except (TypeError, ValueError):
        return None

    if not isinstance(payload, dict):
        return None

    message = payload.get("message") or payload.get("detail") or payload.get("title")
    return str(message) if message else None
