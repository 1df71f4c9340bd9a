"""Send text messages through Amazon SNS ``Publish`` to a phone number.

The AWS client and error helpers come from ``messagehub.providers.ses``. The
secret access key goes only into the boto3 client: no attribute, repr, log
line or error text built here contains it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from messagehub.providers.base import (
    Outcome,
    Outgoing,
    OutgoingSms,
    PermanentFailure,
    ProviderUnavailable,
    SendError,
    SendResult,
    TemporaryFailure,
    Throttled,
)
from messagehub.providers.ses import (
    AwsError,
    Step,
    call_for_check,
    check_batch_size,
    connection_lost,
    make_client,
    raise_or_return,
    unconfirmed_result,
)
from messagehub.providers.request_pool import RequestPool, batch_limit_for

log = logging.getLogger(__name__)

# Messages per second. NOTE: 20 is the default SNS quota for SMS messages per
# second, per account and Region, as recalled from AWS's "Amazon SNS endpoints
# and quotas" page, and not confirmed against its current table. The
# account's own quota is in the Service Quotas console.
DEFAULT_RATE: float = 20.0

SMS_TYPES = ("Transactional", "Promotional")

SMS_TYPE_ATTRIBUTE = "AWS.SNS.SMS.SMSType"
SENDER_ID_ATTRIBUTE = "AWS.SNS.SMS.SenderID"
ORIGINATION_NUMBER_ATTRIBUTE = "AWS.MM.SMS.OriginationNumber"

# The code PermanentFailure carries for a number that opted out. SNS may
# accept a Publish to such a number and report the failure only in its
# delivery logs, so the sender looks the number up in the account's opt-out
# list first.
OPTED_OUT_CODE = "OptedOut"

# Seconds the opt-out list is trusted before it is read again. Reading it
# once per message would double the requests; a number that opts out in
# between is still not delivered to by SNS, only not recorded as opted out
# until the next read.
OPT_OUT_REFRESH = 300.0

# SNS error codes for a parameter it rejects.
_PARAMETER_CODES = frozenset({"InvalidParameter", "InvalidParameterValue", "ParameterValueInvalid"})

# SNS throttles KMS-encrypted publishing with a code of its own.
_SNS_THROTTLING_CODES = frozenset({"KMSThrottling"})

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")

# An alphanumeric sender ID: 1 to 11 letters or digits, at least one letter.
_SENDER_ID = re.compile(r"(?=[0-9]*[A-Za-z])[A-Za-z0-9]{1,11}")


class SnsSender:
    """Publish each text message to its phone number through SNS, one message per request.

    Each message costs one ``Publish``; the account's opt-out list is read
    with ``ListPhoneNumbersOptedOut`` at the first message and every
    ``OPT_OUT_REFRESH`` seconds. A number on it fails with ``opted_out=True``
    and nothing is published. ``rate`` is the account's messages per second,
    which sets how many messages a batch takes (``batch_limit_for``). A
    batch's requests go out at once. Without a rate, messages go one at a time.
    """

    def __init__(
        self,
        region: str,
        access_key_id: str,
        secret_access_key: str,
        endpoint_url: str | None = None,
        sms_type: str = "Transactional",
        timeout: float = 30.0,
        rate: float | None = None,
    ):
        if sms_type not in SMS_TYPES:
            raise ValueError(f"invalid SMS type {sms_type!r}: expected one of {', '.join(SMS_TYPES)}")

        self.region = region
        self.sms_type = sms_type
        self.timeout = timeout
        self._pool = RequestPool(batch_limit_for(rate), "sns-request")
        self._client = make_client(
            "sns", region, access_key_id, secret_access_key, endpoint_url, timeout, self._pool.threads
        )
        self.endpoint = self._client.meta.endpoint_url
        self._opted_out_numbers: frozenset[str] = frozenset()
        self._opt_outs_read_at: float | None = None
        # One thread of the pool reads the list while the others wait for it.
        self._opt_outs_lock = threading.Lock()
        log.info("opened SNS client for region %s (endpoint %s)", region, self.endpoint)

    @property
    def batch_limit(self) -> int:
        """The maximum number of messages for ``send_batch``, lower for a while after a throttled request."""
        return self._pool.window

    def __repr__(self) -> str:
        return f"SnsSender(region={self.region!r}, endpoint={self.endpoint!r}, sms_type={self.sms_type!r})"

    def send_batch(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        """Publish each message to its number, all at once (see ``RequestPool.send_each``)."""
        check_batch_size(messages, self._pool.threads)
        return self._pool.send_each(messages, self._send)

    def was_delivered(self, message_id: str) -> None:
        """Return None: SNS offers no lookup of a message published earlier."""
        return None

    def check(self) -> list[Step]:
        """Call ``GetSMSAttributes`` and report the endpoint, the credentials and the account's SMS settings."""
        steps, response = call_for_check("SNS", self.endpoint, self.timeout, self._client.get_sms_attributes)
        if response is not None:
            endpoint_step, credentials_step = steps
            attributes = response.get("attributes", {})
            steps = [endpoint_step, (credentials_step[0], True, describe_sms_attributes(attributes))]

        return steps

    def close(self) -> None:
        """Wait for requests in flight, then close the client's connection pool."""
        self._pool.close()
        self._client.close()

    def _send(self, message: Outgoing) -> Outcome:
        if not isinstance(message, OutgoingSms):
            raise TypeError(f"SnsSender sends text messages, got {type(message).__name__}")

        problem = sms_problem(message)
        if problem is not None:
            return raise_or_return(problem)

        try:
            opted_out = self._opted_out(message.recipient)
        except PermanentFailure as failure:
            return failure

        if opted_out:
            return PermanentFailure(
                f"{message.recipient} opted out of SMS from this AWS account", opted_out=True, code=OPTED_OUT_CODE
            )

        return self._publish(message)

    def _opted_out(self, number: str) -> bool:
        """Return whether ``number`` is on the account's opt-out list, read at most every OPT_OUT_REFRESH seconds.

        Publish has not been called yet, so no error raised here leaves a message sent.
        """
        with self._opt_outs_lock:
            now = time.monotonic()
            if self._opt_outs_read_at is None or now - self._opt_outs_read_at >= OPT_OUT_REFRESH:
                self._opted_out_numbers = self._read_opt_outs()
                self._opt_outs_read_at = now

            return number in self._opted_out_numbers

    def _read_opt_outs(self) -> frozenset[str]:
        """Read every page of ListPhoneNumbersOptedOut."""
        numbers: set[str] = set()
        arguments: dict[str, str] = {}
        while True:
            try:
                response = self._client.list_phone_numbers_opted_out(**arguments)
            except ClientError as error:
                raise classify_sns_error(AwsError.from_client_error(error)) from error
            except (BotocoreConnectionError, HTTPClientError) as error:
                raise connection_lost("SNS", self.endpoint, error) from error

            numbers.update(response.get("phoneNumbers", []))
            if not response.get("nextToken"):
                return frozenset(numbers)
            arguments = {"nextToken": response["nextToken"]}

    def _publish(self, message: OutgoingSms) -> Outcome:
        try:
            response = self._client.publish(
                PhoneNumber=message.recipient,
                Message=message.body,
                MessageAttributes=self._attributes(message.sender),
            )
        except ClientError as error:
            return raise_or_return(classify_sns_error(AwsError.from_client_error(error)))
        except BotocoreConnectionError as error:
            raise connection_lost("SNS", self.endpoint, error) from error
        except HTTPClientError as error:
            return unconfirmed_result("SNS", self.timeout, error)

        provider_id = response["MessageId"]
        return SendResult(reply=f"SNS accepted the message as {provider_id}", provider_id=provider_id)

    def _attributes(self, sender: str) -> dict[str, dict[str, str]]:
        """Return the SMS type and, when set, the sender as an origination number or a sender ID."""
        attributes = {SMS_TYPE_ATTRIBUTE: _string(self.sms_type)}
        if _E164.fullmatch(sender):
            attributes[ORIGINATION_NUMBER_ATTRIBUTE] = _string(sender)
        elif sender:
            attributes[SENDER_ID_ATTRIBUTE] = _string(sender)

        return attributes


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def sms_problem(message: OutgoingSms) -> SendError | None:
    """Return the error for a message SNS cannot take, or None.

    A bad sender fails every message of the campaign, so it is
    ``ProviderUnavailable``; a bad number or an empty body fails this message.
    """
    sender = message.sender
    if sender and not _E164.fullmatch(sender) and not _SENDER_ID.fullmatch(sender):
        return ProviderUnavailable(
            f"invalid SMS sender {sender!r} for SNS: expected an E.164 number such as +447700900123 "
            "or a sender ID of 1 to 11 letters and digits with at least one letter"
        )

    if not _E164.fullmatch(message.recipient):
        return PermanentFailure(f"invalid phone number {message.recipient!r}: expected E.164, such as +447700900123")

    if not message.body.strip():
        return PermanentFailure("the message body is empty")

    return None


def classify_sns_error(error: AwsError) -> SendError:
    """Map an SNS error reply to the engine's error for this message."""
    if error.is_throttling or error.code in _SNS_THROTTLING_CODES:
        return Throttled(error.reply, error.retry_after)

    if error.rejects_credentials or error.code == "AuthorizationError":
        return ProviderUnavailable(
            f"SNS rejected the credentials ({error.reply}): check the access key ID, the secret access key "
            "and the key's permission sns:Publish"
        )

    if error.is_server_fault:
        return TemporaryFailure(error.reply, error.retry_after)

    # A rejected message attribute is MessageHub's sender or SMS type, the
    # same for every message; anything else concerns this number or text.
    if error.code in _PARAMETER_CODES and "attribute" in error.message.lower():
        return ProviderUnavailable(f"SNS rejected the sender settings ({error.reply})")

    return PermanentFailure(f"SNS rejected the message ({error.reply})", code=error.code)


def describe_sms_attributes(attributes: dict[str, Any]) -> str:
    """Describe the account's SMS settings: monthly spend limit, default type and sender ID."""
    limit = attributes.get("MonthlySpendLimit")
    parts = [
        "SNS accepted the access key",
        f"monthly SMS spend limit USD {limit}" if limit else "monthly SMS spend limit not set (AWS's default applies)",
        f"default SMS type {attributes.get('DefaultSMSType') or 'not set'}",
    ]
    sender_id = attributes.get("DefaultSenderID")
    if sender_id:
        parts.append(f"default sender ID {sender_id}")

    return "; ".join(parts)
