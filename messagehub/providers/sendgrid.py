"""Send email through SendGrid's v3 Mail Send API, many recipients per request.

One request carries up to 1,000 personalizations, one per recipient, each
with its own address, subject and ``custom_args`` (``{"messagehub_id":
Message-ID}``). The rendered text and HTML differ per recipient, so they
travel in each personalization's ``substitutions``, and the request's content
holds only the substitution keys. SendGrid limits substitutions to 10,000
bytes per personalization. A message above that goes out alone, in a request
whose content is the message itself.

No log line or error text built here contains the API key, and the SDK's
debug lines that print request headers have the key blanked.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any, cast
from urllib.error import URLError

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from messagehub.providers.base import (
    ConnectionLost,
    EmailContent,
    OutgoingMessage,
    Outcome,
    PermanentFailure,
    ProviderUnavailable,
    SendError,
    SendResult,
    TemporaryFailure,
    Throttled,
)
from messagehub.providers.request_pool import as_later_outcome

log = logging.getLogger(__name__)

DEFAULT_URL = "https://api.sendgrid.com"

# Messages per second. SendGrid publishes no fixed rate for mail send. Its
# v3 rate-limit page states that each endpoint allows a number of requests
# per refresh period, reported in the X-RateLimit-* headers. Its 2019 change
# log keeps mail send out of the 600 requests per minute it set for some v2
# endpoints. At 1,000 messages per second a campaign sends one full
# request (1,000 personalizations) per second, 60 requests per minute.
# NOTE: this rate is a choice, not a documented limit. When an account
# allows less, SendGrid's 429 and its Retry-After slow the campaign down.
DEFAULT_RATE: float = 1000.0

# SendGrid's documented limits for one mail send request.
MAX_PERSONALIZATIONS = 1000
SUBSTITUTIONS_MAX_BYTES = 10_000

REJECTED_FOR_ANOTHER = "not sent: request rejected for another recipient"
IN_DOUBT_REPLY = "no reply from SendGrid within the timeout after the request was sent, so it may have been accepted"
NOT_SENT_AFTER_DOUBT = "not sent: an earlier request of the same batch got no reply, so the rest was held back"

# The steps that ``check`` reports.
REACH_STEP = "reach the API"
KEY_STEP = "API key accepted"
SCOPE_STEP = "mail.send scope"

_PERSONALIZATION_FIELD = re.compile(r"personalizations\.(\d+)(?:\.|$)")


class _BlankBearerTokens(logging.Filter):
    """Blank bearer tokens in python_http_client's debug lines.

    python_http_client 3.3 logs every request's headers at DEBUG, which
    include ``Authorization: Bearer <API key>``.
    """

    _TOKEN = re.compile(r"Bearer [^'\"\s,}]+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Bearer " in message:
            record.msg = self._TOKEN.sub("Bearer [redacted]", message)
            record.args = ()
        return True


def _blank_sdk_tokens() -> None:
    sdk_log = logging.getLogger("python_http_client.client")
    if not any(isinstance(existing, _BlankBearerTokens) for existing in sdk_log.filters):
        sdk_log.addFilter(_BlankBearerTokens())


_blank_sdk_tokens()


@dataclass
class _PlannedRequest:
    """One mail send request: the positions of its messages in the batch, and its JSON body."""

    positions: list[int]
    body: dict[str, Any]


@dataclass
class _Chunk:
    positions: list[int] = field(default_factory=list)
    addresses: set[str] = field(default_factory=set)


class SendGridSender:
    """Send batches of email through SendGrid's v3 Mail Send API (see ``BatchSender``).

    ``base_url`` is the API's origin without ``/v3`` (default
    https://api.sendgrid.com). ``timeout`` is in seconds and applies to the
    connection and to each read of the reply. Each request is a new
    connection, so ``close`` has nothing to release. Not thread-safe: use one
    sender per thread.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 30.0,
        batch_limit: int = MAX_PERSONALIZATIONS,
    ):
        if not api_key:
            raise ValueError("missing SendGrid API key")

        if timeout <= 0:
            raise ValueError(f"invalid SendGrid timeout {timeout}: expected seconds above 0")

        if not 1 <= batch_limit <= MAX_PERSONALIZATIONS:
            raise ValueError(f"invalid SendGrid batch limit {batch_limit}: expected 1 to {MAX_PERSONALIZATIONS}")

        self.base_url = _checked_base_url(base_url or DEFAULT_URL)
        self.timeout = timeout
        self.batch_limit = batch_limit
        self._client = SendGridAPIClient(api_key, host=self.base_url)

    def __repr__(self) -> str:
        return f"SendGridSender(base_url={self.base_url!r}, timeout={self.timeout}, batch_limit={self.batch_limit})"

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[Outcome]:
        """Send ``messages`` in as few requests as SendGrid's limits allow (see ``BatchSender.send_batch``).

        Messages sharing sender, reply-to address and content parts share a
        request, up to ``batch_limit`` of them with no address twice. A
        sequence longer than ``batch_limit`` is split into several requests.
        A failure of the whole first request raises. A failure of a later
        request becomes a ``TemporaryFailure`` (or ``Throttled``) outcome for
        its messages and for those not yet sent, because the earlier requests
        were accepted and raising would make the engine send them again.

        :raises ValueError: a message lacks ``content``, which SendGrid needs.
        """
        contents = [_content_of(message) for message in messages]
        planned = self._plan(messages, contents)
        outcomes: list[Outcome | None] = [None] * len(messages)
        for number, request in enumerate(planned):
            try:
                results = self._send(request, messages)
            except SendError as error:
                if number == 0:
                    raise
                later = as_later_outcome(error)
                _fill(outcomes, planned[number:], lambda: later)
                break

            for position, result in zip(request.positions, results):
                outcomes[position] = result

            if any(isinstance(result, SendResult) and not result.confirmed for result in results):
                _fill(outcomes, planned[number + 1 :], lambda: TemporaryFailure(NOT_SENT_AFTER_DOUBT, retry_after=0))
                break

        # Each position belongs to exactly one planned request, and every
        # request is either sent or filled before the loop ends.
        return cast(list[Outcome], outcomes)

    def was_delivered(self, message_id: str) -> None:
        """Return None: the Mail Send API offers no lookup of an earlier request."""
        return None

    def check(self) -> list[tuple[str, bool, str]]:
        """Reach the API, read the key's scopes (GET /v3/scopes) and report whether the key may send mail."""
        try:
            response = self._client.client.scopes.get(timeout=self.timeout)
        except HTTPError as err:
            return self._rejected_check(err)
        except URLError as err:
            return [(REACH_STEP, False, f"could not connect to {self.base_url}: {err.reason}")]
        except (OSError, http.client.HTTPException) as err:
            return [(REACH_STEP, False, f"no complete reply from {self.base_url} within {self.timeout:g} s: {err}")]

        steps = [(REACH_STEP, True, f"{self.base_url} responded"), (KEY_STEP, True, "SendGrid accepted the API key")]
        if "mail.send" in _scopes_of(response.body):
            steps.append((SCOPE_STEP, True, "the key has the mail.send scope"))
        else:
            detail = (
                "the key lacks the mail.send scope, so SendGrid would reject every message. "
                "Use a key with Mail Send access."
            )
            steps.append((SCOPE_STEP, False, detail))

        return steps

    def close(self) -> None:
        """Do nothing: each request opens and closes its own connection."""

    def _rejected_check(self, err: HTTPError) -> list[tuple[str, bool, str]]:
        reply = format_reply(err.status_code, _error_items(err.body))
        if err.status_code in (401, 403):
            reached = (REACH_STEP, True, f"{self.base_url} responded")
            return [reached, (KEY_STEP, False, f"SendGrid rejected the API key: {reply}")]

        detail = f"{self.base_url} responded {reply} to GET /v3/scopes. Check the base URL, or SendGrid's status page."
        return [(REACH_STEP, False, detail)]

    def _plan(self, messages: Sequence[OutgoingMessage], contents: list[EmailContent]) -> list[_PlannedRequest]:
        """Split the batch into requests: oversized messages alone, the others grouped and chunked."""
        keys = _substitution_keys()
        groups: dict[tuple[str, ...], list[_Chunk]] = {}
        alone: list[_PlannedRequest] = []
        for position, (message, content) in enumerate(zip(messages, contents)):
            if _substitutions_size(_substitutions(content, keys)) > SUBSTITUTIONS_MAX_BYTES:
                alone.append(_PlannedRequest([position], _plain_body(message, content)))
                continue

            chunks = groups.setdefault(_group_key(content), [])
            _place(chunks, position, message.recipient.lower(), self.batch_limit)

        shared = [
            _PlannedRequest(chunk.positions, _substituted_body(messages, contents, chunk.positions, keys))
            for chunks in groups.values()
            for chunk in chunks
        ]
        return shared + alone

    def _send(self, request: _PlannedRequest, messages: Sequence[OutgoingMessage]) -> list[Outcome]:
        """Post one request and return one outcome per message, or raise for the whole request."""
        try:
            response = self._client.client.mail.send.post(request_body=request.body, timeout=self.timeout)
        except HTTPError as err:
            return _outcomes_of_rejection(request, err)
        except URLError as err:
            raise ConnectionLost(f"could not connect to SendGrid at {self.base_url}: {err.reason}") from err
        except (OSError, http.client.HTTPException) as err:
            # urllib wraps only failures to connect or to write in URLError.
            # This one came after the request was written, so SendGrid may
            # have accepted it.
            ids = ", ".join(messages[position].message_id for position in request.positions[:3])
            log.warning(
                "no reply from SendGrid at %s for a request of %d messages (first %s): %s",
                self.base_url,
                len(request.positions),
                ids,
                err,
            )
            return [SendResult(reply=IN_DOUBT_REPLY, confirmed=False) for _ in request.positions]

        reply = format_reply(response.status_code, [])
        message_id = response.headers.get("X-Message-Id")
        return [
            SendResult(reply=reply, provider_id=f"{message_id}#{index}" if message_id else None)
            for index in range(len(request.positions))
        ]


def _checked_base_url(url: str) -> str:
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"invalid SendGrid base URL {url!r}: expected http:// or https:// and a host")
    return url.rstrip("/")


def _content_of(message: OutgoingMessage) -> EmailContent:
    if message.content is None:
        raise ValueError(f"message {message.message_id} has no rendered content, which SendGrid needs")
    return message.content


def _fill(
    outcomes: list[Outcome | None], requests: Sequence[_PlannedRequest], make: Callable[[], Outcome]
) -> None:
    for request in requests:
        for position in request.positions:
            outcomes[position] = make()


def _place(chunks: list[_Chunk], position: int, address: str, limit: int) -> None:
    """Put a message into the first chunk with room that lacks its address, since SendGrid rejects repeats."""
    for chunk in chunks:
        if len(chunk.positions) < limit and address not in chunk.addresses:
            chunk.positions.append(position)
            chunk.addresses.add(address)
            return

    chunks.append(_Chunk([position], {address}))


@dataclass(frozen=True)
class _Keys:
    """The substitution keys that stand for the text and the HTML in a request's content."""

    text: str
    html: str

    def for_part(self, part: str) -> str:
        """Return the key of MIME type ``part``, "text/plain" or "text/html"."""
        return self.text if part == "text/plain" else self.html


def _substitution_keys() -> _Keys:
    """Return substitution keys no rendered content can contain by chance.

    SendGrid replaces the keys in the subject and content, so a key that
    appeared in a recipient's own text would be replaced there as well.
    """
    token = secrets.token_hex(8)
    return _Keys(text=f"-messagehub-text-{token}-", html=f"-messagehub-html-{token}-")


def _parts(content: EmailContent) -> tuple[str, ...]:
    """Return the MIME types of the message's body parts, with text/plain for a message without a body."""
    parts = []
    if content.text or not content.html:
        parts.append("text/plain")
    if content.html:
        parts.append("text/html")
    return tuple(parts)


def _group_key(content: EmailContent) -> tuple[str, ...]:
    return (content.from_email, content.from_name, content.reply_to, *_parts(content))


def _substitutions(content: EmailContent, keys: _Keys) -> dict[str, str]:
    values = {"text/plain": content.text, "text/html": content.html}
    return {keys.for_part(part): values[part] for part in _parts(content)}


def _substitutions_size(substitutions: dict[str, str]) -> int:
    """Return the size of ``substitutions`` as JSON in UTF-8.

    SendGrid does not say how it counts its 10,000 bytes. The JSON form is at
    least as large as the keys and values alone, so this never undercounts.
    """
    return len(json.dumps(substitutions, ensure_ascii=False).encode())


def _personalization(message: OutgoingMessage, content: EmailContent) -> dict[str, Any]:
    recipient: dict[str, str] = {"email": message.recipient}
    if content.to_name:
        recipient["name"] = content.to_name

    return {"to": [recipient], "subject": content.subject, "custom_args": {"messagehub_id": message.message_id}}


def _envelope(content: EmailContent) -> dict[str, Any]:
    """Return the fields a request shares among its messages: from, reply_to and a subject.

    SendGrid's description requires a subject at the top level, and each
    personalization's own subject overrides it.
    """
    sender: dict[str, str] = {"email": content.from_email}
    if content.from_name:
        sender["name"] = content.from_name

    envelope: dict[str, Any] = {"from": sender, "subject": content.subject}
    if content.reply_to:
        envelope["reply_to"] = {"email": content.reply_to}

    return envelope


def _substituted_body(
    messages: Sequence[OutgoingMessage], contents: list[EmailContent], positions: list[int], keys: _Keys
) -> dict[str, Any]:
    """Return a request whose content is the substitution keys, filled per personalization."""
    first = contents[positions[0]]
    personalizations = []
    for position in positions:
        personalization = _personalization(messages[position], contents[position])
        personalization["substitutions"] = _substitutions(contents[position], keys)
        personalizations.append(personalization)

    content = [{"type": part, "value": keys.for_part(part)} for part in _parts(first)]
    return {"personalizations": personalizations, **_envelope(first), "content": content}


def _plain_body(message: OutgoingMessage, content: EmailContent) -> dict[str, Any]:
    """Return a request for one message whose content is the message's own text and HTML."""
    parts = [("text/plain", content.text), ("text/html", content.html)]
    body_parts = [{"type": part, "value": value} for part, value in parts if value]
    return {"personalizations": [_personalization(message, content)], **_envelope(content), "content": body_parts}


def _outcomes_of_rejection(request: _PlannedRequest, err: HTTPError) -> list[Outcome]:
    """Classify a rejected request: per-recipient outcomes for a 400 that names recipients, else raise."""
    errors = _error_items(err.body)
    reply = format_reply(err.status_code, errors)
    status = err.status_code
    if status == 429:
        raise Throttled(reply, retry_after=retry_after_from(err.headers))

    if status in (401, 403):
        raise ProviderUnavailable(f"SendGrid rejected the API key or sender: {reply}")

    if status >= 500:
        raise TemporaryFailure(reply, retry_after=retry_after_from(err.headers))

    if status == 413:
        return [PermanentFailure(reply) for _ in request.positions]

    if status == 400:
        return _recipient_outcomes(request, errors, reply)

    raise ProviderUnavailable(f"SendGrid rejected the request: {reply}")


def _recipient_outcomes(request: _PlannedRequest, errors: list[dict[str, Any]], reply: str) -> list[Outcome]:
    """Fail the personalizations that a 400 names, and let the others, which were not sent, go again at once."""
    messages_by_index: dict[int, list[str]] = {}
    for item in errors:
        match = _PERSONALIZATION_FIELD.match(str(item.get("field") or ""))
        if match and int(match.group(1)) < len(request.positions):
            messages_by_index.setdefault(int(match.group(1)), []).append(str(item.get("message", "")))

    if not messages_by_index:
        raise ProviderUnavailable(f"SendGrid rejected the request as a whole: {reply}")

    outcomes: list[Outcome] = []
    for index in range(len(request.positions)):
        if index in messages_by_index:
            outcomes.append(PermanentFailure(f"400 {'; '.join(messages_by_index[index])}"))
        else:
            outcomes.append(TemporaryFailure(REJECTED_FOR_ANOTHER, retry_after=0))

    return outcomes


def _error_items(body: bytes | str | None) -> list[dict[str, Any]]:
    """Return the ``errors`` of a SendGrid error body, or the body's text as one error."""
    if not body:
        return []

    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    try:
        items = json.loads(text).get("errors")
    except (ValueError, AttributeError):
        return [{"message": text[:200]}]

    if not isinstance(items, list):
        return [{"message": text[:200]}]

    return [item for item in items if isinstance(item, dict)]


def _scopes_of(body: bytes) -> list[str]:
    try:
        scopes = json.loads(body).get("scopes", [])
    except (ValueError, AttributeError):
        return []

    return [scope for scope in scopes if isinstance(scope, str)]


def format_reply(status: int, errors: list[dict[str, Any]]) -> str:
    """Return a reply as one line, such as "400 Bad Request: Invalid. (personalizations.0.to.0.email)"."""
    try:
        reply = f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        reply = str(status)

    details = []
    for item in errors:
        detail = str(item.get("message", ""))
        if item.get("field"):
            detail = f"{detail} ({item['field']})"
        details.append(detail)

    if details:
        reply = f"{reply}: {'; '.join(details)}"

    return reply


def retry_after_from(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Return the seconds to wait from ``Retry-After``, else from ``X-RateLimit-Reset``, else None.

    ``Retry-After`` contains seconds or an HTTP date. SendGrid's
    ``X-RateLimit-Reset`` contains the Unix time at which its rate limit resets.
    """
    if headers is None:
        return None

    current = time.time() if now is None else now
    retry_after = parse_retry_after(headers.get("Retry-After"), current)
    if retry_after is not None:
        return retry_after

    try:
        reset = float(headers.get("X-RateLimit-Reset") or "nan")
    except ValueError:
        return None

    return max(0.0, reset - current) if math.isfinite(reset) else None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Return the seconds that a ``Retry-After`` value requests, or None when it is missing or unreadable."""
    if not value:
        return None

    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None

    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None

    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)
