"""Check requests against a vendor's OpenAPI description, and serve them from a local stand-in.

``ApiDescription`` validates a werkzeug request the way openapi-core reads the
description: operation (path and method), security scheme, parameters, content
type, required fields and formats. ``StandInServer`` is the threaded HTTP
server on 127.0.0.1 that the SendGrid and Twilio stand-ins build on. It
injects the faults every vendor can show: a rate limit, error replies and
slow replies.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email
from jsonschema_path import SchemaPath
from openapi_core import Config, OpenAPI
from openapi_core.casting.schemas import oas30_write_schema_casters_factory, oas31_schema_casters_factory
from openapi_core.casting.schemas.factories import SchemaCastersFactory
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest
from openapi_core.deserializing.styles import StyleDeserializersFactory, style_deserializers
from openapi_core.deserializing.styles.deserializers import StyleDeserializer
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from tests.fakes.keepalive import KeepAliveServer

# The descriptions, relative to the shared specs folder beside the checkout.
SENDGRID_SPEC = "sendgrid/oai_v3_stoplight.json"
TWILIO_SPEC = "twilio/twilio_api_v2010.json"

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")

# Twilio's glossary: an alphanumeric sender ID has at most 11 characters among
# ASCII letters, digits and space, and at least one letter.
_ALPHANUMERIC_SENDER_ID = re.compile(r"(?=[A-Za-z0-9 ]*[A-Za-z])[A-Za-z0-9 ]{1,11}")

# A channel address such as "whatsapp:+14155550100".
_CHANNEL_PREFIX = re.compile(r"[a-z]+:")


def is_phone_number(value: object) -> bool:
    """Tell whether ``value`` fits Twilio's "phone-number" format.

    Twilio's description uses the format for both To and From without
    defining it. This check accepts an E.164 number or an alphanumeric sender
    ID, optionally after a channel prefix. Values that are not strings are
    left to the type check.

    NOTE: Twilio's error reference (21212) also accepts 10-digit US and
    Canadian numbers with separators, which this check reports.
    """
    if not isinstance(value, str):
        return True

    address = _CHANNEL_PREFIX.sub("", value, count=1)
    return bool(_E164.fullmatch(address) or _ALPHANUMERIC_SENDER_ID.fullmatch(address))


def is_email(value: object) -> bool:
    """Tell whether ``value`` is an address that email-validator accepts, without DNS lookups.

    jsonschema's own "email" check only requires an "@", so it would pass
    addresses that mail services reject, such as "a@b".
    """
    if not isinstance(value, str):
        return True

    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        return False

    return True


FORMAT_CHECKS: dict[str, Callable[[object], bool]] = {"phone-number": is_phone_number, "email": is_email}


@dataclass(frozen=True)
class Violation:
    """One way a request breaks the API description.

    ``field`` is the dotted location of the value, as SendGrid writes it in
    ``errors[].field`` ("personalizations.3.to.0.email"), a parameter name, or
    None for the request as a whole.
    """

    field: str | None
    message: str

    def __str__(self) -> str:
        if self.field is None:
            return self.message
        return f"{self.field}: {self.message}"


class ApiDescription:
    """A vendor's OpenAPI description, loaded once, that validates requests sent to a stand-in."""

    def __init__(self, document: dict[str, Any]):
        # The requests arrive at 127.0.0.1, so they are matched as if sent to
        # the description's own server, whose path prefix ("/v3") they carry.
        server = urlsplit(document["servers"][0]["url"])
        self.server_origin = f"{server.scheme}://{server.netloc}"

        # The descriptions are the vendors' published files, which pass
        # openapi-spec-validator 0.8. Checking them again took about 5 seconds
        # per test session for the two of them on a 2-CPU virtual machine, so
        # it is skipped.
        version_31 = document["openapi"].startswith("3.1")
        casters = oas31_schema_casters_factory if version_31 else oas30_write_schema_casters_factory
        config = Config(
            spec_validator_cls=None,
            extra_format_validators=FORMAT_CHECKS,
            style_deserializers_factory=_ReusedStyleDeserializers(casters),
        )
        self._api = OpenAPI.from_dict(document, config=config)

        # openapi-core resolves references through caches that are not
        # documented as thread-safe, and the stand-ins serve several threads.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path) -> ApiDescription:
        """Read a description from a JSON file.

        ``OpenAPI.from_file_path`` reads through a YAML parser that fails on an
        escape sequence in Twilio's file, so the file is read with ``json``.
        """
        with open(path, encoding="utf-8") as file:
            return cls(json.load(file))

    def problems(self, request: Request) -> list[Violation]:
        """Return every way ``request`` breaks the description, or an empty list."""
        wrapped = _AtServer(request, self.server_origin)
        with self._lock:
            errors = list(self._api.iter_request_errors(wrapped))

        return [violation for error in errors for violation in _describe(error)]

    def violations(self, request: Request) -> list[str]:
        """Return every way ``request`` breaks the description, as sentences."""
        return [str(problem) for problem in self.problems(request)]


class _ReusedStyleDeserializers(StyleDeserializersFactory):
    """Builds the deserializer of each form field once instead of for every request.

    openapi-core 0.23 builds one for every property of a form body's schema
    on every request, which made up half the time of validating a Twilio
    message request. A deserializer depends only on the schema, style, explode
    flag and name, so reusing it gives the same result.
    """

    def __init__(self, schema_casters_factory: SchemaCastersFactory):
        super().__init__(schema_casters_factory, style_deserializers=style_deserializers)
        self._built: dict[tuple[Any, ...], StyleDeserializer] = {}

    def create(self, spec: SchemaPath, schema: SchemaPath, style: str, explode: bool, name: str) -> StyleDeserializer:
        key = (tuple(schema.parts), style, explode, name)
        deserializer = self._built.get(key)
        if deserializer is None:
            deserializer = super().create(spec, schema, style, explode, name)
            self._built[key] = deserializer
        return deserializer


class _AtServer(WerkzeugOpenAPIRequest):
    """A werkzeug request presented as if it reached the description's server."""

    def __init__(self, request: Request, origin: str):
        super().__init__(request)
        self._origin = origin

    @property
    def host_url(self) -> str:
        return self._origin


def _describe(error: Exception) -> list[Violation]:
    """Turn one openapi-core error into violations, one per schema error it carries."""
    cause = error.__cause__
    schema_errors = getattr(cause, "schema_errors", None)
    parameter = getattr(error, "name", None)
    if schema_errors:
        return [_schema_violation(schema_error, parameter) for schema_error in schema_errors]

    # Some openapi-core errors start their text with their class name.
    message = str(error).removeprefix(f"{type(error).__name__}: ")
    if cause is not None and str(cause) not in message:
        message = f"{message}: {cause}"

    return [Violation(parameter, message)]


def _schema_violation(schema_error: Any, parameter: str | None) -> Violation:
    location = ".".join(str(part) for part in schema_error.absolute_path)
    field = parameter or location or None
    return Violation(field, schema_error.message)


class TokenBucket:
    """Allows ``per_second`` events on average and bursts of up to ``capacity``."""

    def __init__(self, per_second: float, capacity: float, clock: Callable[[], float] = time.monotonic):
        if per_second <= 0:
            raise ValueError(f"invalid rate {per_second}: expected events per second above 0")

        self.per_second = per_second
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._updated = clock()

    def take(self) -> float:
        """Take a token and return 0, or return the seconds until one is available."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.per_second)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0

        return (1 - self._tokens) / self.per_second


@dataclass(frozen=True)
class RateLimited:
    """The state of a rate limit that a request exceeded: its size and when a request may pass."""

    limit: int
    wait: float
    retry_after: int

    @property
    def reset_epoch(self) -> int:
        """Return the Unix time, in whole seconds, at which a request will pass again."""
        return math.ceil(time.time() + self.wait)


class _QuietHandler(WSGIRequestHandler):
    """Serves requests without writing an access log line for each one."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class StandInServer:
    """A threaded WSGI server on 127.0.0.1 that replaces a vendor's HTTP API in tests.

    It serves with werkzeug's development server, which closes every
    connection after its response, or, with ``keep_alive`` set before
    ``start``, with ``KeepAliveServer``, which keeps connections open as the
    vendors' APIs do. Subclasses build the replies in ``respond``. Every request is validated
    against the description, and each violation is kept in ``violations``
    with the request's method and path. Fault injection is thread-safe: tests call
    ``limit_rate``, ``fail_next`` and ``slow`` while the sender's threads
    send. ``request_times`` contains the ``time.monotonic()`` arrival time of
    every send request (the vendor's message endpoint), accepted or not.
    """

    keep_alive = False

    def __init__(self, description: ApiDescription):
        self.description = description
        self.violations: list[str] = []
        self.request_times: list[float] = []
        self.violations_allowed = False
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._bucket: TokenBucket | None = None
        self._retry_after = 1
        self._failures_left = 0
        self._failure_status = 500
        self._delay = 0.0
        self._server: BaseWSGIServer | KeepAliveServer | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StandInServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Return the base URL that an SDK is pointed at, such as http://127.0.0.1:40123.

        After ``stop`` it names the closed port, where connections are refused.
        """
        if self._port is None:
            raise RuntimeError("the stand-in server was never started")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        """Listen on a free port of 127.0.0.1 and serve in a background thread."""
        if self.keep_alive:
            server: BaseWSGIServer | KeepAliveServer = KeepAliveServer("127.0.0.1", 0, self._wsgi)
        else:
            server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self._server = server
        self._port = server.server_port

        # A short poll interval lets ``stop`` return quickly, since shutdown
        # waits for the serving loop's next poll.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, wake any reply held back by ``slow`` and close the port."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return

        server.shutdown()
        server.server_close()
        if isinstance(server, KeepAliveServer):
            server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def connections_accepted(self) -> int | None:
        """Return how many connections the keep-alive server accepted, or None on werkzeug's server."""
        if isinstance(self._server, KeepAliveServer):
            return self._server.connections_accepted
        return None

    def close_idle_connections(self) -> None:
        """Close the keep-alive server's open connections, as a server does when they idle too long."""
        if isinstance(self._server, KeepAliveServer):
            self._server.close_connections()

    def allow_violations(self) -> None:
        """Let this test send requests the description rejects, as tests of the checker do."""
        self.violations_allowed = True

    def limit_rate(self, per_second: float, retry_after: int = 1, burst: float | None = None) -> None:
        """Reply 429 with ``Retry-After: retry_after`` to send requests beyond ``per_second``.

        A token bucket of ``burst`` requests (default: one second's worth, at
        least 1) refills at ``per_second``. Rejected requests take no token.
        """
        capacity = burst if burst is not None else max(1.0, per_second)
        with self._lock:
            self._bucket = TokenBucket(per_second, capacity)
            self._retry_after = retry_after

    def remove_rate_limit(self) -> None:
        """Accept send requests at any rate again."""
        with self._lock:
            self._bucket = None

    def fail_next(self, count: int, status: int = 500) -> None:
        """Reply to the next ``count`` send requests with ``status`` and the vendor's error body."""
        with self._lock:
            self._failures_left = count
            self._failure_status = status

    def slow(self, seconds: float) -> None:
        """Hold back the reply to every later send request by ``seconds``, after recording it.

        ``slow(0)`` replies at once again.
        """
        with self._lock:
            self._delay = seconds

    def respond(self, request: Request, problems: list[Violation]) -> Response:
        """Return the reply to ``request``, whose violations of the description are ``problems``."""
        raise NotImplementedError

    def record_rule_breach(self, request: Request, message: str) -> None:
        """Keep a breach of a rule the vendor documents outside its description, such as a size limit."""
        with self._lock:
            self.violations.append(f"{request.method} {request.path}: {message}")

    def note_send_request(self) -> None:
        """Record the arrival time of a request to the vendor's message endpoint."""
        with self._lock:
            self.request_times.append(time.monotonic())

    def take_rate_token(self) -> RateLimited | None:
        """Return None when the rate limit lets a send request through, else why not."""
        with self._lock:
            if self._bucket is None:
                return None

            wait = self._bucket.take()
            if wait == 0:
                return None

            return RateLimited(math.floor(self._bucket.capacity), wait, self._retry_after)

    def take_failure(self) -> int | None:
        """Return the status for a send request that ``fail_next`` should fail, else None."""
        with self._lock:
            if self._failures_left <= 0:
                return None

            self._failures_left -= 1
            return self._failure_status

    def delay_reply(self) -> None:
        """Wait as long as ``slow`` requested, or until the server stops."""
        with self._lock:
            delay = self._delay

        if delay > 0:
            self._stopping.wait(delay)

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        problems = self.description.problems(request)
        if problems:
            self._keep_violations(request, problems)

        response = self.respond(request, problems)
        return response(environ, start_response)

    def _keep_violations(self, request: Request, problems: list[Violation]) -> None:
        with self._lock:
            self.violations.extend(f"{request.method} {request.path}: {problem}" for problem in problems)


def json_response(payload: object, status: int, headers: dict[str, str] | None = None) -> Response:
    """Return a JSON response with ``status`` and extra ``headers``."""
    return Response(json.dumps(payload), status=status, headers=headers, content_type="application/json")
