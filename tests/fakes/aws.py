"""A stand-in for Amazon SES v2 and SNS: moto in server mode on 127.0.0.1, behind a checking WSGI layer.

moto (5.2) handles the API calls and stores what was sent. The layer in front
of moto's WSGI application adds what moto leaves out:

- It checks every request's AWS Signature Version 4 against the stand-in's one
  key pair, and rejects a wrong key or secret with AWS's error (moto accepts
  any credentials unless its IAM emulation is switched on).
- It records every request, so tests can read the SNS message attributes
  (moto stores only number and text) and measure request rates.
- It injects faults per operation in the services' real error formats:
  SES v2 throttling as HTTP 429 TooManyRequestsException JSON, SNS throttling
  as HTTP 400 Throttling XML, any other status and code, and delays.
- It handles SES v2 ``GetAccount``, which moto 5.2 does not implement, from
  ``AwsStandIn.ses_account``, and ``CheckIfPhoneNumberIsOptedOut`` for the
  numbers on moto's opt-out list. moto itself reports only numbers ending
  in 99 as opted out.

moto's ``ThreadedMotoServer`` offers no way to put a layer in front of its
application, so ``AwsStandIn`` serves moto's application the same way, with
werkzeug's threaded server.
"""

from __future__ import annotations

import hmac
import io
import json
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.backends import get_backend
from moto.core import DEFAULT_ACCOUNT_ID
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from tests.fakes.keepalive import KeepAliveServer

REGION = "eu-west-1"

# Shaped like real keys, so nothing mistakes them for missing values.
ACCESS_KEY_ID = "AKIAMESSAGEHUBTEST01"
SECRET_ACCESS_KEY = "mh-test-secret/0123456789abcdefghijklmnopqrstuv"

# Signing names: SES v2 signs as "ses", SNS as "sns".
SES = "ses"
SNS = "sns"

SNS_NAMESPACE = "http://sns.amazonaws.com/doc/2010-03-31/"

INVALID_TOKEN = "The security token included in the request is invalid."
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,\s*"
    r"SignedHeaders=(?P<headers>[^,]+),\s*Signature=(?P<signature>[0-9a-f]+)"
)
_XML_MESSAGE_ID = re.compile(rb"<MessageId>([^<]+)</MessageId>")

# SES v2 is a REST API: the operation follows from method and path.
_SES_OPERATIONS = {
    ("POST", "/v2/email/outbound-emails"): "SendEmail",
    ("GET", "/v2/email/account"): "GetAccount",
    ("POST", "/v2/email/identities"): "CreateEmailIdentity",
}


@dataclass
class Response:
    """An HTTP response the layer sends back: status, headers, body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class RecordedRequest:
    """One signed request that reached the stand-in, and how it was handled.

    ``params`` is the JSON body of an SES v2 request, or the form fields of an
    SNS request (first value of each). ``received_at`` is ``time.monotonic()``.
    ``provider_id`` is the MessageId of an accepted send.
    """

    service: str
    operation: str
    params: dict[str, Any]
    received_at: float
    status: int = 0
    provider_id: str | None = None


@dataclass(frozen=True)
class SentEmail:
    """One message moto's SES backend stored, with the envelope of the request that sent it.

    ``data`` is the raw message as bytes. moto stores it decoded as UTF-8, so
    encoding it again gives back the bytes sent for any UTF-8 or ASCII message.
    """

    message_id: str
    sender: str | None
    recipients: list[str]
    data: bytes


@dataclass(frozen=True)
class PublishedSms:
    """One text message moto's SNS backend stored, with the message attributes of its request."""

    message_id: str
    phone_number: str
    message: str
    attributes: dict[str, str]


# Builds the error response of a fault in the format of the service ("ses" or "sns") that was called.
ResponseBuilder = Callable[[str], "Response"]


@dataclass
class _Fault:
    operation: str | None
    remaining: int | None
    response: ResponseBuilder | None = None
    delay: float = 0.0

    def matches(self, operation: str) -> bool:
        return (self.operation is None or self.operation == operation) and self.remaining != 0

    def use(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1


@dataclass
class _RateLimit:
    """A token bucket: ``per_second`` requests a second, bursts up to ``capacity``."""

    operation: str
    per_second: float
    capacity: float
    tokens: float
    updated_at: float = field(default_factory=time.monotonic)

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated_at) * self.per_second)
        self.updated_at = now
        if self.tokens < 1:
            return False

        self.tokens -= 1
        return True


class FaultPlan:
    """The faults the stand-in injects, per operation (``SendEmail``, ``Publish``…) or for all (None)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._limits: list[_RateLimit] = []

    def clear(self) -> None:
        """Remove every fault and rate limit."""
        with self._lock:
            self._faults.clear()
            self._limits.clear()

    def throttle(self, operation: str | None, count: int | None = 1, retry_after: float | None = None) -> None:
        """Reject the next ``count`` requests (None: all) with the service's throttling error.

        ``retry_after`` adds a Retry-After header; AWS itself sends none.
        """
        self._add(_Fault(operation, count, response=lambda service: throttling_response(service, retry_after)))

    def fail(self, operation: str | None, status: int, code: str, message: str, count: int | None = 1) -> None:
        """Reject the next ``count`` requests (None: all) with this error, in the service's error format."""
        self._add(_Fault(operation, count, response=lambda service: error_response(service, status, code, message)))

    def delay(self, operation: str | None, seconds: float, count: int | None = 1) -> None:
        """Hold the next ``count`` requests for ``seconds`` before moto handles them.

        moto still handles a held request after the client gave up, as AWS may.
        """
        self._add(_Fault(operation, count, delay=seconds))

    def limit_rate(self, operation: str, per_second: float, burst: float | None = None) -> None:
        """Throttle ``operation`` beyond ``per_second`` requests a second, as SES enforces MaxSendRate.

        ``burst`` requests may arrive at once after a pause (default: one second's worth, at least 1).
        """
        capacity = burst if burst is not None else max(1.0, per_second)
        with self._lock:
            self._limits.append(_RateLimit(operation, per_second, capacity, capacity))

    def take(self, operation: str) -> tuple[float, ResponseBuilder | None]:
        """Return the delay and the error response (or None) for one request of ``operation``, using up faults."""
        with self._lock:
            delay = 0.0
            for fault in self._faults:
                if fault.delay and fault.matches(operation):
                    fault.use()
                    delay += fault.delay

            return delay, self._error_for(operation)

    def _error_for(self, operation: str) -> ResponseBuilder | None:
        for fault in self._faults:
            if fault.response is not None and fault.matches(operation):
                fault.use()
                return fault.response

        for limit in self._limits:
            if limit.operation == operation and not limit.take():
                return lambda service: throttling_response(service, None)

        return None

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)


class AwsStandIn:
    """moto in server mode on 127.0.0.1 behind the checking layer, with helpers to read what it stored.

    It serves with werkzeug's server, which closes every connection after its
    response, or, with ``keep_alive`` set before ``start``, with
    ``KeepAliveServer``.
    """

    keep_alive = False

    def __init__(self) -> None:
        self.region = REGION
        self.access_key_id = ACCESS_KEY_ID
        self.secret_access_key = SECRET_ACCESS_KEY
        self.faults = FaultPlan()
        self.ses_account = default_ses_account()
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._server: BaseWSGIServer | KeepAliveServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        """Return the URL boto3 clients use as ``endpoint_url``."""
        if self._server is None:
            raise RuntimeError("the AWS stand-in is not running: call start() first")
        return f"http://127.0.0.1:{self._server.server_port}"

    def account_settings(self) -> dict[str, str]:
        """Return the provider account settings that reach this stand-in: region, key pair, endpoint."""
        return {
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "endpoint_url": self.endpoint_url,
        }

    def start(self) -> None:
        """Serve moto behind the layer on a free port of 127.0.0.1, in a daemon thread."""
        moto_app = DomainDispatcherApplication(create_backend_app)
        if self.keep_alive:
            self._server = KeepAliveServer("127.0.0.1", 0, _Layer(moto_app, self))
        else:
            self._server = make_server(
                "127.0.0.1", 0, _Layer(moto_app, self), threaded=True, request_handler=_QuietRequestHandler
            )
        self._thread = threading.Thread(target=self._server.serve_forever, name="aws-stand-in", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is None:
            return

        self._server.shutdown()
        self._server.server_close()
        if isinstance(self._server, KeepAliveServer):
            self._server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def reset(self) -> None:
        """Clear moto's state (POST /moto-api/reset), the request log, the faults and the SES account."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

        self.faults.clear()
        self.ses_account = default_ses_account()
        with self._lock:
            self._requests.clear()

    # Reading back what arrived.

    def requests(self, operation: str | None = None) -> list[RecordedRequest]:
        """Return the recorded requests, oldest first, of one operation or of all."""
        with self._lock:
            return [r for r in self._requests if operation is None or r.operation == operation]

    def sent_emails(self) -> list[SentEmail]:
        """Return the messages moto's SES backend stored, oldest first."""
        envelopes = {r.provider_id: r.params for r in self.requests("SendEmail") if r.provider_id}
        emails = []
        for stored in list(self._ses_backend().sent_messages):
            request = envelopes.get(stored.id, {})
            emails.append(
                SentEmail(
                    message_id=stored.id,
                    sender=request.get("FromEmailAddress"),
                    recipients=list(request.get("Destination", {}).get("ToAddresses", [])),
                    data=stored.raw_data.encode("utf-8"),
                )
            )

        return emails

    def published_sms(self) -> list[PublishedSms]:
        """Return the text messages moto's SNS backend stored, oldest first."""
        attributes = {r.provider_id: sms_attributes(r.params) for r in self.requests("Publish") if r.provider_id}
        return [
            PublishedSms(message_id, number, text, attributes.get(message_id, {}))
            for message_id, (number, text) in list(self._sns_backend().sms_messages.items())
        ]

    # Setting up moto's state.

    def verify_identity(self, identity: str) -> None:
        """Mark an email address or a domain as a verified SES identity, so SES sends from it."""
        backend = self._ses_backend()
        if "@" in identity:
            backend.verify_email_identity(identity)
        else:
            backend.verify_domain(identity)

    def opt_out(self, number: str) -> None:
        """Put ``number`` on the account's SMS opt-out list."""
        numbers = self._sns_backend().opt_out_numbers
        if number not in numbers:
            numbers.append(number)

    def is_opted_out(self, number: str) -> bool:
        return number in self._sns_backend().opt_out_numbers

    def set_sms_attributes(self, **attributes: str) -> None:
        """Set the account's SMS attributes, such as MonthlySpendLimit="1"."""
        self._sns_backend().set_sms_attributes(attributes)

    def _ses_backend(self) -> Any:
        return get_backend("ses")[DEFAULT_ACCOUNT_ID][self.region]

    def _sns_backend(self) -> Any:
        return get_backend("sns")[DEFAULT_ACCOUNT_ID][self.region]

    # Called by the layer, on the server's threads.

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _signature_problem(self, environ: dict[str, Any], body: bytes) -> tuple[str, tuple[int, str, str]] | None:
        """Return the service and AWS's error for a request not signed with the stand-in's key pair, or None."""
        match = _AUTHORIZATION.fullmatch(environ.get("HTTP_AUTHORIZATION", "").strip())
        if match is None:
            return _service_of_path(environ), (403, "MissingAuthenticationToken", "Missing Authentication Token")

        service = match["service"]
        if match["key"] != self.access_key_id:
            unknown_key_code = "UnrecognizedClientException" if service == SES else "InvalidClientTokenId"
            return service, (403, unknown_key_code, INVALID_TOKEN)

        expected = expected_signature(environ, body, match, self.secret_access_key)
        if not hmac.compare_digest(expected, match["signature"]):
            return service, (403, "SignatureDoesNotMatch", SIGNATURE_MISMATCH)

        return None

    def _own_response(self, request: RecordedRequest) -> Response | None:
        """Return the stand-in's response to a call moto lacks or handles differently, or None for moto."""
        if request.service == SES and request.operation == "GetAccount":
            account = dict(self.ses_account)
            quota = dict(account.get("SendQuota", {}))
            # moto's own sent_message_count counts a recipient twice when the
            # To header repeats the Destination, so count the envelopes.
            quota["SentLast24Hours"] = float(sum(len(email.recipients) for email in self.sent_emails()))
            account["SendQuota"] = quota
            return json_response(200, account)

        number = request.params.get("phoneNumber")
        if request.operation == "CheckIfPhoneNumberIsOptedOut" and number and self.is_opted_out(number):
            return opted_out_response()

        return None


def default_ses_account() -> dict[str, Any]:
    """Return the GetAccount response of an account with production access and the default quota."""
    return {
        "DedicatedIpAutoWarmupEnabled": False,
        "EnforcementStatus": "HEALTHY",
        "ProductionAccessEnabled": True,
        "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 14.0},
        "SendingEnabled": True,
    }


def sms_attributes(params: dict[str, Any]) -> dict[str, str]:
    """Return the message attributes of an SNS Publish request's form fields as name: string value."""
    attributes = {}
    index = 1
    while f"MessageAttributes.entry.{index}.Name" in params:
        prefix = f"MessageAttributes.entry.{index}"
        attributes[params[f"{prefix}.Name"]] = params.get(f"{prefix}.Value.StringValue", "")
        index += 1

    return attributes


def expected_signature(environ: dict[str, Any], body: bytes, authorization: re.Match[str], secret: str) -> str:
    """Compute the SigV4 signature of the request as received, with botocore's signer."""
    headers = {name: _header(environ, name) for name in authorization["headers"].split(";")}
    url = f"http://{environ['HTTP_HOST']}{environ.get('REQUEST_URI') or environ.get('PATH_INFO', '/')}"
    request = AWSRequest(method=environ["REQUEST_METHOD"], url=url, headers=headers, data=body)
    request.context["timestamp"] = headers.get("x-amz-date", "")

    signer = SigV4Auth(Credentials(authorization["key"], secret), authorization["service"], authorization["region"])
    canonical = signer.canonical_request(request)
    return signer.signature(signer.string_to_sign(request, canonical), request)


def _header(environ: dict[str, Any], name: str) -> str:
    key = name.upper().replace("-", "_")
    if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        return environ.get(key, "")
    return environ.get(f"HTTP_{key}", "")


def _service_of_path(environ: dict[str, Any]) -> str:
    return SES if environ.get("PATH_INFO", "").startswith("/v2/") else SNS


def operation_of(service: str, method: str, path: str, params: dict[str, Any]) -> str:
    """Return the API operation a request calls, or "METHOD path" for an SES v2 path not listed."""
    if service == SNS:
        return str(params.get("Action", ""))

    return _SES_OPERATIONS.get((method, path), f"{method} {path}")


def parse_params(service: str, body: bytes) -> dict[str, Any]:
    """Return the request's parameters: JSON for SES v2, form fields for SNS."""
    if service == SES:
        try:
            parsed = json.loads(body or b"{}")
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}

    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def json_response(status: int, payload: dict[str, Any], error_type: str | None = None) -> Response:
    headers = [("Content-Type", "application/json"), ("x-amzn-RequestId", str(uuid.uuid4()))]
    if error_type:
        headers.append(("x-amzn-ErrorType", error_type))
    return Response(status, headers, json.dumps(payload).encode())


def error_response(service: str, status: int, code: str, message: str, retry_after: float | None = None) -> Response:
    """Build AWS's error response: JSON with x-amzn-ErrorType for SES v2, an XML ErrorResponse for SNS."""
    if service == SES:
        response = json_response(status, {"message": message}, error_type=code)
    else:
        kind = "Sender" if status < 500 else "Receiver"
        body = (
            f'<ErrorResponse xmlns="{SNS_NAMESPACE}"><Error><Type>{kind}</Type><Code>{code}</Code>'
            f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
        )
        response = Response(status, [("Content-Type", "text/xml")], body.encode())

    if retry_after is not None:
        response.headers.append(("Retry-After", f"{retry_after:g}"))
    return response


def throttling_response(service: str, retry_after: float | None) -> Response:
    """Build the throttling error each service sends when a request exceeds the account's rate."""
    if service == SES:
        return error_response(SES, 429, "TooManyRequestsException", "Maximum sending rate exceeded.", retry_after)
    return error_response(SNS, 400, "Throttling", "Rate exceeded", retry_after)


def opted_out_response() -> Response:
    body = (
        f'<CheckIfPhoneNumberIsOptedOutResponse xmlns="{SNS_NAMESPACE}">'
        "<CheckIfPhoneNumberIsOptedOutResult><isOptedOut>true</isOptedOut></CheckIfPhoneNumberIsOptedOutResult>"
        f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
        "</CheckIfPhoneNumberIsOptedOutResponse>"
    )
    return Response(200, [("Content-Type", "text/xml")], body.encode())


def message_id_of(response: Response) -> str | None:
    """Return the MessageId of a successful SendEmail (JSON) or Publish (XML) response."""
    if response.status != 200:
        return None

    if response.body.lstrip().startswith(b"{"):
        value = json.loads(response.body).get("MessageId")
        return str(value) if value else None

    match = _XML_MESSAGE_ID.search(response.body)
    return match.group(1).decode() if match else None


class _Layer:
    """The WSGI application in front of moto: signature check, request log, faults, own responses."""

    def __init__(self, moto_app: Callable[..., Iterable[bytes]], stand_in: AwsStandIn):
        self.moto_app = moto_app
        self.stand_in = stand_in
        self._routed: set[str] = set()
        self._first_request_lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return self.moto_app(environ, start_response)

        response = self._handle(environ)
        start_response(f"{response.status} {_REASONS.get(response.status, 'Error')}", response.headers)
        return [response.body]

    def _handle(self, environ: dict[str, Any]) -> Response:
        # Read the body once, and give moto a fresh copy to read.
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)

        problem = self.stand_in._signature_problem(environ, body)
        if problem is not None:
            service, (status, code, message) = problem
            return error_response(service, status, code, message)

        request = self._recorded(environ, body)
        response = self._respond(request, environ)
        request.status = response.status
        request.provider_id = message_id_of(response)
        return response

    def _recorded(self, environ: dict[str, Any], body: bytes) -> RecordedRequest:
        match = _AUTHORIZATION.fullmatch(environ["HTTP_AUTHORIZATION"].strip())
        service = match["service"] if match else SNS
        params = parse_params(service, body)
        operation = operation_of(service, environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), params)
        request = RecordedRequest(service, operation, params, time.monotonic())
        self.stand_in._record(request)
        return request

    def _respond(self, request: RecordedRequest, environ: dict[str, Any]) -> Response:
        delay, error = self.stand_in.faults.take(request.operation)
        if delay:
            time.sleep(delay)

        if error is not None:
            return error(request.service)

        return self.stand_in._own_response(request) or self._call_moto(request.service, environ)

    def _call_moto(self, service: str, environ: dict[str, Any]) -> Response:
        """Pass the request to moto; the first request of each service runs alone.

        moto 5.2 builds a service's request router on its first request. Two
        threads building it at once made ``ast.parse`` fail with SystemError
        (CPython 3.11), which turned a request into a 500 reply.
        """
        if service in self._routed:
            return _call(self.moto_app, environ)

        with self._first_request_lock:
            response = _call(self.moto_app, environ)
            self._routed.add(service)
        return response


def _call(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> Response:
    """Run a WSGI application and collect its whole response."""
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        captured["status"] = int(status.split(" ", 1)[0])
        captured["headers"] = list(headers)
        return lambda data: None

    chunks = app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()

    return Response(captured["status"], captured["headers"], body)


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}


class _QuietRequestHandler(MotoRequestHandler):
    """moto's request handler without a log line per request, which 10,000-message runs would flood."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass
