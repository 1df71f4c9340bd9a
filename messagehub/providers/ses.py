"""Send email through the Amazon SES v2 API, as the same raw MIME message the SMTP path sends.

The helpers for building an AWS client, reading an AWS error and checking an
account are shared with ``messagehub.providers.sns``. The secret access key
goes only into the boto3 client: no attribute, repr, log line or error text
built here contains it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from messagehub.providers.base import (
    ConnectionLost,
    Outcome,
    Outgoing,
    OutgoingMessage,
    PermanentFailure,
    ProviderUnavailable,
    SendError,
    SendResult,
    TemporaryFailure,
    Throttled,
)
from messagehub.providers.request_pool import RequestPool, batch_limit_for

log = logging.getLogger(__name__)

# Messages per second. AWS's SES quotas page documents 1 message per second
# for an account in the sandbox, and a production rate that "varies based on
# your specific use case". NOTE: 14 per second is the starting rate AWS long
# gave new production accounts, and that page no longer states it. GetAccount
# returns the account's real rate (MaxSendRate), which ``check`` shows.
DEFAULT_RATE: float = 14.0

ENDPOINT_STEP = "endpoint reachable"
CREDENTIALS_STEP = "credentials accepted"
SENDING_STEP = "sending enabled"

# Error codes AWS uses when it throttles a request. SES v2 returns HTTP 429
# TooManyRequestsException. The SES guide also names ThrottlingException,
# with the message "Maximum sending rate exceeded" or "Daily message quota exceeded".
THROTTLING_CODES = frozenset({"TooManyRequestsException", "Throttling", "ThrottlingException", "RequestThrottled"})

# Error codes that reject the credentials or their permissions, so no request can succeed.
CREDENTIAL_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ExpiredToken",
        "ExpiredTokenException",
    }
)

# Error codes of a fault on AWS's side, worth retrying later.
SERVER_CODES = frozenset(
    {"InternalFailure", "InternalError", "InternalServerError", "ServiceUnavailable", "ServiceUnavailableException"}
)

# SES v2 errors that concern the account or its settings rather than one
# message. NotFoundException names a missing configuration set.
_SES_ACCOUNT_CODES = frozenset(
    {"AccountSuspendedException", "SendingPausedException", "MailFromDomainNotVerifiedException", "NotFoundException"}
)

_DAILY_QUOTA = "daily message quota exceeded"
_XML_CODE = re.compile(r"<Code>([^<]*)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


def make_client(
    service: str,
    region: str,
    access_key_id: str,
    secret_access_key: str,
    endpoint_url: str | None,
    timeout: float,
    connections: int = 1,
) -> Any:
    """Build a boto3 client with explicit credentials and botocore's own retries turned off.

    The engine owns retrying: with one attempt per call, botocore never
    repeats a request that SES or SNS may already have accepted. Endpoint
    URLs from AWS_ENDPOINT_URL* variables and ~/.aws/config are ignored,
    because the account's own ``endpoint_url`` setting is the one to use.
    ``connections`` is how many threads send through the client at once.
    """
    if not region:
        raise ValueError("AWS region is empty: set a region such as eu-west-1")

    if timeout <= 0:
        raise ValueError(f"invalid timeout {timeout}: expected seconds above 0")

    config = Config(
        region_name=region,
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"mode": "standard", "total_max_attempts": 1},
        ignore_configured_endpoint_urls=True,
        # botocore's default pool keeps 10 connections open.
        max_pool_connections=max(connections, 10),
    )
    # A session of its own per client: boto3's default session is not thread-safe.
    session = boto3.session.Session()
    return session.client(
        service,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        endpoint_url=endpoint_url or None,
        config=config,
    )


@dataclass(frozen=True)
class AwsError:
    """The parts of an AWS error reply that decide how MessageHub reacts to it."""

    status: int
    code: str
    message: str
    retry_after: float | None = None

    @classmethod
    def from_client_error(cls, error: ClientError) -> AwsError:
        """Read the HTTP status, error code, message and Retry-After header of ``error``."""
        details = error.response.get("Error", {})
        metadata = error.response.get("ResponseMetadata", {})
        status = int(metadata.get("HTTPStatusCode") or 0)
        code = str(details.get("Code") or status)
        message = str(details.get("Message") or "")

        # botocore cannot parse an XML body from a JSON service, so it returns
        # the status as the code and the whole body as the message. moto 5.2
        # responds this way to SES v2 requests with a bad signature.
        if message.lstrip().startswith("<"):
            code_match = _XML_CODE.search(message)
            message_match = _XML_MESSAGE.search(message)
            code = code_match.group(1) if code_match else code
            message = message_match.group(1) if message_match else message

        headers = metadata.get("HTTPHeaders", {})
        return cls(status, code, message, parse_retry_after(headers.get("retry-after")))

    @property
    def reply(self) -> str:
        """Return the error as one line: "MessageRejected: Email address is not verified."."""
        return f"{self.code}: {self.message}" if self.message else self.code

    @property
    def is_throttling(self) -> bool:
        return self.status == 429 or self.code in THROTTLING_CODES

    @property
    def rejects_credentials(self) -> bool:
        return self.status in (401, 403) or self.code in CREDENTIAL_CODES

    @property
    def is_server_fault(self) -> bool:
        return self.status >= 500 or self.code in SERVER_CODES


def parse_retry_after(value: str | None) -> float | None:
    """Return the delay in seconds a Retry-After header requests (seconds or an HTTP date), or None."""
    if not value:
        return None

    try:
        return max(0.0, float(value))
    except ValueError:
        pass

    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


def check_batch_size(messages: Sequence[Outgoing], limit: int) -> None:
    """Raise ValueError when ``messages`` contains more than ``limit`` messages."""
    if len(messages) > limit:
        raise ValueError(f"send_batch takes at most {limit} message(s) per call, got {len(messages)}")


def unconfirmed_result(service: str, timeout: float, error: Exception) -> SendResult:
    """Return the outcome of a request that was sent but got no complete response.

    The provider may have accepted it, so the engine must not send it again.
    """
    log.warning(
        "no complete response from %s after sending the request, the message may have been accepted: %s",
        service, error,
    )
    return SendResult(
        reply=f"no complete response from {service} within {timeout:g} s; the message may have been accepted",
        confirmed=False,
    )


def connection_lost(service: str, endpoint: str, error: Exception) -> ConnectionLost:
    """Return the error of a request that never reached ``endpoint``."""
    return ConnectionLost(f"cannot reach {service} at {endpoint}: {error}")


def raise_or_return(error: SendError) -> SendError:
    """Return a ``PermanentFailure`` as the message's outcome; raise every other error for the whole request."""
    if isinstance(error, PermanentFailure):
        return error
    raise error


Step = tuple[str, bool, str]


def call_for_check(
    service: str, endpoint: str, timeout: float, call: Callable[[], dict]
) -> tuple[list[Step], dict | None]:
    """Make the one request a check needs and turn the endpoint and credential outcomes into steps.

    Returns the steps so far and the response, or None when a step failed.
    """
    try:
        response = call()
    except BotocoreConnectionError as error:
        return [(ENDPOINT_STEP, False, f"cannot reach {service} at {endpoint}: {error}")], None
    except HTTPClientError as error:
        return [(ENDPOINT_STEP, False, f"no complete response from {endpoint} within {timeout:g} s: {error}")], None
    except ClientError as error:
        return _rejected_check(service, endpoint, AwsError.from_client_error(error)), None

    steps = [
        (ENDPOINT_STEP, True, f"{endpoint} answered"),
        (CREDENTIALS_STEP, True, f"{service} accepted the access key"),
    ]
    return steps, response


def _rejected_check(service: str, endpoint: str, error: AwsError) -> list[Step]:
    reached = (ENDPOINT_STEP, True, f"{endpoint} answered HTTP {error.status}")
    if error.rejects_credentials:
        hint = "check the access key ID, the secret access key, the region and the key's IAM permissions"
        return [reached, (CREDENTIALS_STEP, False, f"{service} rejected the request ({error.reply}): {hint}")]

    return [reached, (CREDENTIALS_STEP, False, f"{service} answered with an error: {error.reply}")]


class SesSender:
    """Send each message as raw MIME through SES v2 ``SendEmail``, one message per request.

    ``rate`` is the account's messages per second, which sets how many
    messages a batch takes (``batch_limit_for``). A batch's requests go out at
    once. Without a rate, messages go one at a time.
    """

    def __init__(
        self,
        region: str,
        access_key_id: str,
        secret_access_key: str,
        endpoint_url: str | None = None,
        configuration_set: str | None = None,
        timeout: float = 30.0,
        rate: float | None = None,
    ):
        self.region = region
        self.configuration_set = configuration_set or None
        self.timeout = timeout
        self._pool = RequestPool(batch_limit_for(rate), "ses-request")
        self._client = make_client(
            "sesv2", region, access_key_id, secret_access_key, endpoint_url, timeout, self._pool.threads
        )
        self.endpoint = self._client.meta.endpoint_url
        log.info("opened SES client for region %s (endpoint %s)", region, self.endpoint)

    @property
    def batch_limit(self) -> int:
        """The maximum number of messages for ``send_batch``, lower for a while after a throttled request."""
        return self._pool.window

    def __repr__(self) -> str:
        return (
            f"SesSender(region={self.region!r}, endpoint={self.endpoint!r}, "
            f"configuration_set={self.configuration_set!r})"
        )

    def send_batch(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        """Send each message with ``SendEmail``, all at once (see ``RequestPool.send_each``)."""
        check_batch_size(messages, self._pool.threads)
        return self._pool.send_each(messages, self._send)

    def was_delivered(self, message_id: str) -> None:
        """Return None: SES offers no lookup of a message sent earlier."""
        return None

    def check(self) -> list[Step]:
        """Call ``GetAccount`` and report the endpoint, the credentials, and whether the account can send."""
        steps, account = call_for_check("SES", self.endpoint, self.timeout, self._client.get_account)
        if account is not None:
            steps.append(sending_step(account))

        return steps

    def close(self) -> None:
        """Wait for requests in flight, then close the client's connection pool."""
        self._pool.close()
        self._client.close()

    def _send(self, message: Outgoing) -> Outcome:
        if not isinstance(message, OutgoingMessage):
            raise TypeError(f"SesSender sends email, got {type(message).__name__}")

        problem = envelope_problem(message)
        if problem is not None:
            return raise_or_return(problem)

        try:
            response = self._client.send_email(**self._request(message))
        except ClientError as error:
            return raise_or_return(classify_ses_error(AwsError.from_client_error(error), message))
        except BotocoreConnectionError as error:
            raise connection_lost("SES", self.endpoint, error) from error
        except HTTPClientError as error:
            return unconfirmed_result("SES", self.timeout, error)

        provider_id = response["MessageId"]
        return SendResult(reply=f"SES accepted the message as {provider_id}", provider_id=provider_id)

    def _request(self, message: OutgoingMessage) -> dict[str, Any]:
        """Return the SendEmail arguments: the raw message, unchanged, and the envelope."""
        request: dict[str, Any] = {
            "Destination": {"ToAddresses": [message.recipient]},
            "Content": {"Raw": {"Data": message.data}},
        }
        # An empty envelope sender (a null reverse-path) cannot be sent; SES
        # then takes the sender from the From header.
        if message.sender:
            request["FromEmailAddress"] = message.sender
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set

        return request


def envelope_problem(message: OutgoingMessage) -> SendError | None:
    """Return the error for an envelope SES cannot take, or None.

    SES does not support SMTPUTF8, so addresses must be ASCII (domains
    already IDNA-encoded). A bad sender fails every message of the campaign.
    """
    if not message.sender.isascii():
        return ProviderUnavailable(
            f"invalid envelope sender {message.sender!r} for SES: SES accepts only ASCII addresses"
        )

    if not message.recipient:
        return PermanentFailure("invalid envelope recipient: it is empty")

    if not message.recipient.isascii():
        return PermanentFailure(
            f"invalid envelope recipient {message.recipient!r} for SES: SES accepts only ASCII addresses"
        )

    return None


def classify_ses_error(error: AwsError, message: OutgoingMessage) -> SendError:
    """Map an SES v2 error reply to the engine's error for this message."""
    if error.is_throttling:
        if _DAILY_QUOTA in error.message.lower():
            return ProviderUnavailable(
                f"SES daily sending quota reached ({error.reply}): sending resumes as the 24-hour window moves on, "
                "or ask AWS to raise the quota"
            )
        return Throttled(error.reply, error.retry_after)

    if error.rejects_credentials:
        return ProviderUnavailable(
            f"SES rejected the credentials ({error.reply}): check the access key ID, the secret access key "
            "and the key's permission ses:SendEmail"
        )

    if error.code in _SES_ACCOUNT_CODES:
        return ProviderUnavailable(
            f"SES rejected sending for this account ({error.reply}): check the account's status, "
            "its configuration set and its MAIL FROM domain in the SES console"
        )

    if error.is_server_fault:
        return TemporaryFailure(error.reply, error.retry_after)

    # SES names the identities that failed verification. The sender's name
    # means no message can go out; a recipient's name (sandbox) means only this one.
    if error.code == "MessageRejected" and message.sender and message.sender.lower() in error.message.lower():
        return ProviderUnavailable(f"SES rejected the sender {message.sender} ({error.reply}): verify it in SES")

    return PermanentFailure(f"SES rejected the message ({error.reply})", code=error.code)


def sending_step(account: dict[str, Any]) -> Step:
    """Describe whether the SES account may send, its sandbox state and its quota."""
    enabled = bool(account.get("SendingEnabled"))
    parts = [
        "sending enabled" if enabled else "sending is paused for this account",
        "production access" if account.get("ProductionAccessEnabled") else
        "sandbox: only verified recipients receive messages until AWS grants production access",
        describe_quota(account.get("SendQuota", {})),
    ]
    status = account.get("EnforcementStatus")
    if status:
        parts.append(f"enforcement status {status}")

    return (SENDING_STEP, enabled, "; ".join(parts))


def describe_quota(quota: dict[str, Any]) -> str:
    """Describe an SES SendQuota: daily quota (-1 means none), max send rate, and messages sent in 24 hours."""
    daily = quota.get("Max24HourSend", 0)
    daily_text = "no daily quota" if daily == -1 else f"quota {daily:g} messages per 24 hours"
    return (
        f"{daily_text}, max send rate {quota.get('MaxSendRate', 0):g} per second, "
        f"{quota.get('SentLast24Hours', 0):g} sent in the last 24 hours"
    )
