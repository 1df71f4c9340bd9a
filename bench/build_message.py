"""Time the per-message cost of rendering templates and building MIME messages.

Compares ``messagehub.messages.mime.build_message``, which writes the bytes
directly, with the same message built as an ``email.message.EmailMessage``
and serialised with ``email.policy.SMTP``. Contacts come from the sample CSV
in ``../shared/data`` next to the repository.

The email package is timed on the first ``--package-count`` contacts only,
because it is about twenty times slower.

Usage: python bench/build_message.py [--count N] [--package-count N] [--csv PATH]
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from messagehub.messages.mime import address_for_wire, build_message, clean_header_text, make_message_id
from messagehub.messages.templating import CampaignTemplates, RenderedContent, build_context

DEFAULT_CSV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "contacts-10k.csv"

SUBJECT = '{{ first_name | default("Hello") }}, your {{ city | default("local") }} offer is here'
TEXT_BODY = """Hello {{ first_name | default("there") }},

Our shop in {{ city | default("your city") }} has new books for you.
{% if last_name %}We have reserved a copy under the name {{ last_name }}.{% endif %}

Unsubscribe: https://news.example.com/u/{{ email }}
"""
HTML_BODY = """<html><body>
<p>Hello {{ first_name | default("there") }},</p>
<p>Our shop in {{ city | default("your city") }} has new books for you.</p>
{% if last_name %}<p>We have reserved a copy under the name {{ last_name }}.</p>{% endif %}
<p><a href="https://news.example.com/u/{{ email | urlencode }}">Unsubscribe</a></p>
</body></html>
"""


def load_contacts(path: Path, count: int) -> list[dict]:
    """Read up to ``count`` rows whose address email_validator accepts, as template contexts."""
    contexts = []
    with path.open(encoding="utf-8", newline="") as file:
        for row in csv.DictReader(file):
            try:
                address_for_wire(row["email"].strip())
            except ValueError:
                continue
            attributes = {"city": row["city"], "language": row["language"], "tags": row["tags"]}
            contexts.append(
                build_context(
                    row["email"].strip(), row["first_name"], row["last_name"], row["phone"], row["country"], attributes
                )
            )
            if len(contexts) == count:
                break

    return contexts


def microseconds_per_item(function: Callable[[object], object], items: list) -> float:
    """Call ``function`` on every item and return the mean wall-clock time per call in µs."""
    start = time.perf_counter()
    for item in items:
        function(item)
    return (time.perf_counter() - start) / len(items) * 1e6


def build_direct(item: tuple[dict, RenderedContent, str]) -> bytes:
    """Build one message with messagehub's own MIME writer."""
    context, content, message_id = item
    message = build_message(
        subject=content.subject,
        text=content.text,
        html=content.html,
        from_name="Bücherstube Newsletter",
        from_email="news@bücher.example",
        reply_to="help@example.com",
        to_name=f"{context.get('first_name', '')} {context.get('last_name', '')}",
        to_email=context["email"],
        message_id=message_id,
    )
    return message.data


def build_email_package(item: tuple[dict, RenderedContent, str]) -> EmailMessage:
    """Build the same message as an EmailMessage, without serialising it."""
    context, content, message_id = item
    recipient, _ = address_for_wire(context["email"])
    message = EmailMessage(policy=policy.SMTP)
    message["Date"] = format_datetime(datetime.now(timezone.utc))
    message["From"] = Address("Bücherstube Newsletter", addr_spec="news@xn--bcher-kva.example")
    # The email package rejects line breaks in names, which the sample data has.
    to_name = clean_header_text(f"{context.get('first_name', '')} {context.get('last_name', '')}")
    message["To"] = Address(to_name, addr_spec=recipient)
    message["Reply-To"] = "help@example.com"
    message["Subject"] = content.subject
    message["Message-ID"] = message_id
    message.set_content(content.text)
    message.add_alternative(content.html, subtype="html")
    return message


def main() -> None:
    """Render and build messages for the sample contacts and print µs per message."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="number of contacts to use (default 10000)")
    parser.add_argument(
        "--package-count", type=int, default=1000, help="contacts to build with the email package (default 1000)"
    )
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="contacts CSV with the sample columns")
    options = parser.parse_args()

    contexts = load_contacts(options.csv, options.count)
    templates = CampaignTemplates.compile(SUBJECT, TEXT_BODY, HTML_BODY)

    # The first calls fill the caches of Jinja and email_validator, so the timed runs measure the steady state.
    contents = [templates.render(context) for context in contexts]
    items = [
        (context, content, make_message_id(7, index, "news.example.com", "bench-token"))
        for index, (context, content) in enumerate(zip(contexts, contents))
    ]
    package_items = items[: options.package_count]
    built = [build_email_package(item) for item in package_items]

    render = microseconds_per_item(templates.render, contexts)
    direct = microseconds_per_item(build_direct, items)
    # The recipient's address is new for every message, so its check misses the cache.
    validation = microseconds_per_item(address_for_wire.__wrapped__, [context["email"] for context in contexts])
    package_build = microseconds_per_item(build_email_package, package_items)
    package_serialise = microseconds_per_item(lambda message: message.as_bytes(policy=policy.SMTP), built)

    print(f"{len(contexts)} contacts ({len(package_items)} for the email package), Python {platform.python_version()}, {platform.machine()} {platform.processor()}")
    print(f"render subject + text + html        {render:8.1f} µs/message")
    print(f"build_message (direct bytes)        {direct:8.1f} µs/message")
    print(f"  of which the recipient's address  {validation:8.1f} µs/message (email_validator)")
    print(f"EmailMessage build                  {package_build:8.1f} µs/message")
    print(f"EmailMessage serialise              {package_serialise:8.1f} µs/message")


if __name__ == "__main__":
    main()
