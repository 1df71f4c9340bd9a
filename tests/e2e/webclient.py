"""A small HTTP client for MessageHub's web app, run inside the test container.

The container has a private network, so the tests cannot reach the web app
from the host. They run this file there with the system's python3 instead. It
uses only the standard library, logs in through the login form, and takes the
CSRF token of each POST from the page that contains the form, as a browser does.

    python3 webclient.py --user admin --password PW create-campaign name=News list_id=1 ...
    python3 webclient.py --user admin --password PW post --page /jobs/3 /jobs/3/stop
    python3 webclient.py --user admin --password PW get /jobs/

Every command prints one JSON object: status, location (of a redirect) and
body (of a GET), and the flash messages on the page it lands on.
"""

from __future__ import annotations

import argparse
import html
import http.cookiejar
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field

DEFAULT_BASE_URL = "http://127.0.0.1:5000"
TIMEOUT_SECONDS = 30.0

# Flask-WTF renders the token as a hidden input; the attribute order differs
# between `form.csrf_token` and a hand-written input.
CSRF_PATTERNS = (
    re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"'),
    re.compile(r'name="csrf_token" value="([^"]+)"'),
    re.compile(r'value="([^"]+)" name="csrf_token"'),
)
FLASH_PATTERN = re.compile(r'class="flash[^"]*"[^>]*>(.*?)</', re.DOTALL)


@dataclass
class Response:
    """The outcome of one request: HTTP status, redirect target, body and flash messages."""

    status: int
    location: str = ""
    body: str = ""
    flashes: list[str] = field(default_factory=list)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Return redirects as responses, so callers see the 303 and its Location."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


class WebClient:
    """A logged-in browser session against the web app at ``base_url``."""

    def __init__(self, base_url: str = DEFAULT_BASE_URL) -> None:
        self.base_url = base_url.rstrip("/")
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies), _NoRedirect())

    def login(self, username: str, password: str) -> Response:
        """Log in through the login form; raise RuntimeError if the app did not redirect."""
        response = self.post("/login", {"username": username, "password": password}, page="/login")
        if response.status != 303:
            raise RuntimeError(f"login as {username!r} failed with status {response.status}: {response.flashes}")

        return response

    def get(self, path: str) -> Response:
        """Send a GET request and return the response without following redirects."""
        return self._send(urllib.request.Request(self.base_url + path, method="GET"))

    def post(self, path: str, fields: dict[str, str], page: str | None = None) -> Response:
        """Send a form POST with the CSRF token of ``page`` (default: ``path``)."""
        form_page = self.get(page or path)
        token = csrf_token(form_page.body)
        if not token:
            raise RuntimeError(f"no csrf_token on {page or path} (status {form_page.status})")

        data = urllib.parse.urlencode({**fields, "csrf_token": token}).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        response = self._send(request)
        return self._with_landing_flashes(response)

    def _send(self, request: urllib.request.Request) -> Response:
        try:
            with self.opener.open(request, timeout=TIMEOUT_SECONDS) as reply:
                body = reply.read().decode("utf-8", "replace")
                return Response(reply.status, reply.headers.get("Location", ""), body, flash_messages(body))
        except urllib.error.HTTPError as error:
            body = error.read().decode("utf-8", "replace")
            return Response(error.code, error.headers.get("Location", ""), body, flash_messages(body))

    def _with_landing_flashes(self, response: Response) -> Response:
        # Flash messages appear on the page a POST redirects to, so read it once.
        if response.status in (301, 302, 303) and response.location:
            landing = self.get(urllib.parse.urlsplit(response.location).path)
            response.flashes = landing.flashes

        return response


def csrf_token(page: str) -> str:
    """Return the CSRF token of the first form on ``page``, or an empty string."""
    for pattern in CSRF_PATTERNS:
        match = pattern.search(page)
        if match:
            return html.unescape(match.group(1))

    return ""


def flash_messages(page: str) -> list[str]:
    """Return the text of the flash messages on ``page``."""
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", "", text)).split()) for text in FLASH_PATTERN.findall(page)]


def parse_fields(pairs: list[str]) -> dict[str, str]:
    """Turn NAME=VALUE arguments into a form dictionary."""
    fields = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator:
            raise SystemExit(f"invalid form field {pair!r}: expected NAME=VALUE")
        fields[name] = value

    return fields


def run_command(client: WebClient, args: argparse.Namespace) -> dict:
    """Run one command of the command line and return what it prints."""
    if args.command == "get":
        return asdict(client.get(args.path))

    if args.command == "post":
        return asdict(client.post(args.path, parse_fields(args.fields), page=args.page))

    # create-campaign: the new campaign's id is the last part of the redirect.
    response = client.post("/campaigns/new", parse_fields(args.fields))
    result = asdict(response)
    match = re.search(r"/campaigns/(\d+)$", response.location)
    result["campaign_id"] = int(match.group(1)) if match else None
    return result


def build_parser() -> argparse.ArgumentParser:
    """Describe the command line."""
    parser = argparse.ArgumentParser(prog="webclient.py", description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help=f"address of the web app (default {DEFAULT_BASE_URL})")
    parser.add_argument("--user", required=True, help="user name to log in as")
    parser.add_argument("--password", required=True, help="that user's password")
    commands = parser.add_subparsers(dest="command", required=True)

    get = commands.add_parser("get", help="GET a page")
    get.add_argument("path")

    post = commands.add_parser("post", help="POST a form")
    post.add_argument("path")
    post.add_argument("--page", help="page whose CSRF token the POST uses (default: the POST's own path)")
    post.add_argument("fields", nargs="*", help="form fields as NAME=VALUE")

    create = commands.add_parser("create-campaign", help="POST /campaigns/new and print the new id")
    create.add_argument("fields", nargs="*", help="form fields as NAME=VALUE")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Log in, run one command and print its result as JSON."""
    args = build_parser().parse_args(argv)
    client = WebClient(args.base_url)
    client.login(args.user, args.password)
    json.dump(run_command(client, args), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
