"""MIME messages for one recipient, written as bytes without the email package's object model.

Building an ``email.message.EmailMessage`` and serialising it took 4 to 5 ms
per message with Python 3.11 in ``bench/build_message.py`` on a 2-CPU AMD EPYC
virtual machine, which would dominate a campaign of many thousand recipients.
This module writes the same structure directly:

- Header text from callers passes through ``clean_header_text``, so no
  contact data can end a header line. Addresses and the Message-ID are
  validated instead, which is stricter. Text that is not plain ASCII becomes
  RFC 2047 encoded words, and long values are folded before a space at 78
  characters.
- Bodies are quoted-printable or base64 (whichever is shorter), in UTF-8,
  with CRLF line breaks, so every body line is ASCII and at most 76
  characters long.
- The multipart boundary starts with ``=_``. That sequence cannot occur in
  quoted-printable output, where ``=`` is always followed by two hex digits
  or a line break, nor in base64, where ``=`` only pads the end. So no body
  can contain the boundary, and no scan for it is needed.

The result is 7-bit ASCII unless an address has a non-ASCII local part. Then
``needs_smtputf8`` is set and those addresses appear in UTF-8 (RFC 6532), while
display names and the subject stay encoded words, which RFC 6532 still allows.
The tests parse every message back with ``email.policy.default``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from email.utils import format_datetime
from functools import lru_cache

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from messagehub.providers.base import EmailContent, OutgoingMessage

# RFC 5322: a line SHOULD have at most 78 and MUST have at most 998 characters, CRLF excluded.
_FOLD_AT = 78
_MAX_LINE = 998

# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators.
_CONTROL = "\x00-\x1f\x7f-\x9f\u2028\u2029"
_CONTROL_RUN = re.compile(f"[ {_CONTROL}]*[{_CONTROL}][ {_CONTROL}]*")

# Display names that need neither quotes nor encoding: atoms joined by single spaces.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PHRASE = re.compile(f"{_ATEXT}(?: {_ATEXT})*")

# 42 bytes are 56 base64 characters, so an encoded word is 68 characters long
# and fits a folded line with "Subject: " in front of it.
_ENCODED_WORD_BYTES = 42

_MESSAGE_ID = re.compile(r"<[!-;=?A-~]+@[!-;=?A-~]+>")
_HEADER_NAME = re.compile(r"[!-9;-~]+")

# Headers that build_message writes itself, or that would add recipients.
_RESERVED_HEADERS = frozenset(
    {"date", "from", "to", "cc", "bcc", "reply-to", "subject", "message-id", "mime-version", "sender", "return-path"}
)

_BOUNDARY = "=_MessageHub_alternative"



def clean_header_text(value: str) -> str:
    """Replace each run of control characters and line breaks, with the spaces around it, by one space, then strip."""
    return _CONTROL_RUN.sub(" ", value).strip()


# An address whose every character is plain ASCII in the simplest form: a
# dot-atom local part and a domain of letter-digit-hyphen labels with a
# letter-only top level. email_validator would return such an address as it
# is (its domain lowercased), so checking it by pattern gives the same result
# at a fraction of the cost. Anything else takes the full check.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
# RFC 5321 limits: 64 octets of local part, 254 of address on the wire.
_MAX_LOCAL_PART = 64
_MAX_ADDRESS = 254


def address_for_wire(address: str) -> tuple[str, bool]:
    """Validate an address and return it with its domain IDNA-encoded, and whether it needs SMTPUTF8.

    The second value is True when the local part is not ASCII, because only
    the domain has an ASCII form.

    :raises ValueError: the address is invalid (an ``EmailNotValidError``
        from email_validator, whose message gives the reason).
    """
    if len(address) <= _MAX_ADDRESS and _PLAIN_ADDRESS.fullmatch(address):
        local_part, _, domain = address.rpartition("@")
        domain = domain.lower()
        special = domain.rpartition(".")[2] in SPECIAL_USE_DOMAIN_NAMES
        if len(local_part) <= _MAX_LOCAL_PART and not special:
            return f"{local_part}@{domain}", False

    return _validated_for_wire(address)


# A campaign validates its sender, reply-to and Message-ID domain once per
# message: the cache makes those repeats free.
@lru_cache(maxsize=256)
def _validated_for_wire(address: str) -> tuple[str, bool]:
    checked = validate_email(address, check_deliverability=False, allow_smtputf8=True)
    needs_smtputf8 = not checked.local_part.isascii()
    return f"{checked.local_part}@{checked.ascii_domain}", needs_smtputf8


# Domain of the ids of messages without a sender address (text messages).
# ".example" is reserved (RFC 2606), so it never names anybody's real
# domain, and unlike ".invalid" it passes the address syntax check.
NO_SENDER_DOMAIN = "messagehub.example"


def message_id_domain(configured: str, sender: str) -> str:
    """Return the domain of generated Message-IDs: the configured one, else the sender's."""
    return configured or sender.rpartition("@")[2] or NO_SENDER_DOMAIN


def make_message_id(campaign_id: int, delivery_id: int, domain: str, install_token: str) -> str:
    """Return the Message-ID of one delivery, e.g. ``<42.1001.3f9c0a1b2c3d4e5f6a7b@mail.example.com>``.

    The same inputs give the same ID, so a restarted run can ask the provider
    about a message that an earlier run handed over. The HMAC of the ids keyed
    with ``install_token`` keeps two installations with the same campaign and
    delivery numbers apart, without revealing the token.

    :raises ValueError: an id is negative, the token is empty or the domain is invalid.
    """
    for name, value in (("campaign_id", campaign_id), ("delivery_id", delivery_id)):
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}.")
    if not install_token:
        raise ValueError("install_token is empty. Set the installation's token before sending.")

    ascii_domain = _message_id_domain(domain)
    ids = f"{campaign_id}.{delivery_id}"
    digest = hmac.new(install_token.encode("utf-8"), ids.encode("ascii"), hashlib.sha256).hexdigest()
    return f"<{ids}.{digest[:20]}@{ascii_domain}>"


@lru_cache(maxsize=64)
def _message_id_domain(domain: str) -> str:
    # email_validator checks the domain the same way it checks an address's.
    try:
        wire_address, _ = address_for_wire(f"postmaster@{domain}")
    except EmailNotValidError as error:
        raise ValueError(f"Message-ID domain {domain!r} is invalid: {error}") from None

    return wire_address.partition("@")[2]


def build_from_content(content: EmailContent, message_id: str) -> OutgoingMessage:
    """Build the message of ``content``, keeping the parts on it for APIs that take fields."""
    # Fields passed by name: dataclasses.asdict copies every value deeply,
    # which cost more than building the headers.
    return build_message(
        subject=content.subject,
        text=content.text,
        html=content.html,
        from_name=content.from_name,
        from_email=content.from_email,
        reply_to=content.reply_to,
        to_name=content.to_name,
        to_email=content.to_email,
        message_id=message_id,
        content=content,
    )


def build_message(
    *,
    subject: str,
    text: str,
    html: str,
    from_name: str,
    from_email: str,
    reply_to: str | None,
    to_name: str,
    to_email: str,
    message_id: str,
    date: datetime | None = None,
    extra_headers: Mapping[str, str] | None = None,
    content: EmailContent | None = None,
) -> OutgoingMessage:
    """Build one recipient's message: multipart/alternative with text and HTML, or a single part when one body is empty.

    Names and the subject may contain any contact data, because no header
    value can start a new header. ``reply_to`` may be empty or None, and
    ``date`` defaults to now. ``extra_headers`` values are written as
    unstructured text, so a non-ASCII value becomes encoded words.
    ``content`` is kept on the result for APIs that take the fields.

    :raises ValueError: names what is invalid: an address, ``message_id``, a
        naive ``date``, an extra header, or both bodies empty.
    """
    # Check the addresses before building anything.
    sender, sender_utf8 = _checked_campaign_address("from_email", from_email)
    recipient, recipient_utf8 = _checked_address("to_email", to_email)
    reply_address, reply_utf8 = _checked_campaign_address("reply_to", reply_to) if reply_to else ("", False)
    needs_smtputf8 = sender_utf8 or recipient_utf8 or reply_utf8

    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"message_id {message_id!r} is invalid. Make one with make_message_id.")

    headers = [
        f"Date: {_format_date(date)}\r\n",
        _sender_header(from_name, sender),
        _mailbox_header("To", to_name, recipient),
    ]
    if reply_address:
        headers.append(_header("Reply-To", [reply_address]))
    headers.append(_unstructured_header("Subject", subject))
    headers.append(f"Message-ID: {message_id}\r\nMIME-Version: 1.0\r\n")
    headers.extend(_extra_header_lines(extra_headers or {}))

    message = "".join(headers) + _content(text, html)
    data = message.encode("utf-8" if needs_smtputf8 else "ascii")
    return OutgoingMessage(
        sender=sender,
        recipient=recipient,
        data=data,
        message_id=message_id,
        needs_smtputf8=needs_smtputf8,
        content=content,
        crlf_only=True,
    )


@lru_cache(maxsize=64)
def _checked_campaign_address(field: str, address: str) -> tuple[str, bool]:
    # A campaign's sender and reply-to address are the same for every message.
    return _checked_address(field, address)


def _checked_address(field: str, address: str) -> tuple[str, bool]:
    if "\r" in address or "\n" in address:
        raise ValueError(f"{field} contains a line break, which could inject a header: {address!r}")

    try:
        return address_for_wire(address)
    except EmailNotValidError as error:
        raise ValueError(f"{field} is not a valid email address ({address!r}): {error}") from None


def _format_date(date: datetime | None) -> str:
    if date is None:
        return _date_of_second(int(time.time()))

    if date.tzinfo is None:
        raise ValueError("date has no time zone. Pass an aware datetime such as datetime.now(timezone.utc).")

    return format_datetime(date)


@lru_cache(maxsize=2)
def _date_of_second(second: int) -> str:
    # The Date header has whole seconds, so a campaign formats it once a second, not per message.
    return format_datetime(datetime.fromtimestamp(second, timezone.utc))


@lru_cache(maxsize=64)
def _sender_header(display_name: str, address: str) -> str:
    # A campaign's From header is the same for every message.
    return _mailbox_header("From", display_name, address)


def _mailbox_header(name: str, display_name: str, address: str) -> str:
    text = clean_header_text(display_name)
    if not text:
        return _header(name, [address])

    if text.isascii() and "=?" not in text:
        header = _header(name, _ascii_phrase(text) + [f"<{address}>"])
        if _fits(header):
            return header

    return _header(name, _encoded_words(text) + [f"<{address}>"])


def _ascii_phrase(text: str) -> list[str]:
    if _PLAIN_PHRASE.fullmatch(text):
        return text.split(" ")

    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return [f'"{escaped}"']


def _unstructured_header(name: str, value: str) -> str:
    text = clean_header_text(value)

    # Plain ASCII stays readable unless it contains "=?", which a reader
    # would decode as the start of an encoded word.
    if text.isascii() and "=?" not in text:
        header = _header(name, text.split(" "))
        if _fits(header):
            return header

    return _header(name, _encoded_words(text))


def _encoded_words(text: str) -> list[str]:
    """Encode text as RFC 2047 base64 words of whole UTF-8 characters."""
    data = text.encode("utf-8")
    words = []
    start = 0
    while start < len(data):
        end = min(start + _ENCODED_WORD_BYTES, len(data))
        # Move the cut back to the start of a character: bytes 10xxxxxx continue one.
        while end < len(data) and data[end] & 0xC0 == 0x80:
            end -= 1
        words.append("=?utf-8?b?" + base64.b64encode(data[start:end]).decode("ascii") + "?=")
        start = end

    return words


def _header(name: str, tokens: list[str]) -> str:
    """Join the tokens with spaces into one header, folding before a token where the line would pass 78 characters.

    Folding puts CRLF in front of an existing space, so unfolding restores
    the value exactly. A token longer than a line stays whole. No line
    contains only whitespace, because an empty token (from two spaces in a
    row) never starts a line.
    """
    # One that fits a line needs no folding, which is most headers of a campaign.
    unfolded = f"{name}: {' '.join(tokens)}"
    if len(unfolded) <= _FOLD_AT:
        return unfolded + "\r\n"

    lines = []
    line = f"{name}:"
    line_has_word = False
    for token in tokens:
        if line_has_word and token and len(line) + 1 + len(token) > _FOLD_AT:
            lines.append(line)
            line = f" {token}"
        else:
            line = f"{line} {token}"
        line_has_word = line_has_word or bool(token)

    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _fits(header: str) -> bool:
    if len(header) <= _MAX_LINE:
        return True
    return all(len(line) <= _MAX_LINE for line in header.split("\r\n"))


def _extra_header_lines(extra_headers: Mapping[str, str]) -> Iterator[str]:
    for name, value in extra_headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"extra header name {name!r} is invalid. Use printable ASCII without spaces or colons.")

        lowered = name.lower()
        if lowered in _RESERVED_HEADERS or lowered.startswith(("content-", "resent-")):
            raise ValueError(
                f"extra header {name!r} is not allowed, because build_message sets it or it would add recipients."
            )

        yield _unstructured_header(name, value)


def _content(text: str, html: str) -> str:
    """Write the Content-Type header, the blank line and the body of the message."""
    parts = []
    if text:
        parts.append(_part("plain", text))
    if html:
        parts.append(_part("html", html))
    if not parts:
        raise ValueError("text and html are both empty, but a message needs at least one body.")

    if len(parts) == 1:
        part_headers, encoding, encoded = parts[0]
        return f"{part_headers}\r\n{encoded}{_final_line_break(encoding, encoded)}"

    sections = [f'Content-Type: multipart/alternative; boundary="{_BOUNDARY}"\r\n\r\n']
    for part_headers, _, encoded in parts:
        # The CRLF before each boundary belongs to the boundary, not to the body.
        sections.append(f"--{_BOUNDARY}\r\n{part_headers}\r\n{encoded}\r\n")
    sections.append(f"--{_BOUNDARY}--\r\n")
    return "".join(sections)


def _part(subtype: str, body: str) -> tuple[str, str, str]:
    encoding, encoded = _encode_body(body)
    part_headers = f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {encoding}\r\n'
    return part_headers, encoding, encoded


def _encode_body(body: str) -> tuple[str, str]:
    """Encode a body in canonical form (UTF-8, CRLF line breaks) as quoted-printable or base64, whichever is shorter.

    The result has CRLF line breaks. Base64 output has no final line break,
    and quoted-printable output ends with one only when the body does.
    """
    if "\r" in body:
        body = body.replace("\r\n", "\n").replace("\r", "\n")
    data = body.encode("utf-8")

    # b2a_qp keeps "\n" line breaks as they are in text mode, and writes "=\n" for soft breaks.
    quoted = binascii.b2a_qp(data, istext=True)
    # Base64 takes at least 4 characters per 3 bytes, so quoted-printable
    # no longer than that wins without counting the line breaks.
    if len(quoted) * 3 <= len(data) * 4 or len(quoted) <= (len(data) + data.count(b"\n") + 2) // 3 * 4:
        return "quoted-printable", quoted.replace(b"\n", b"\r\n").decode("ascii")

    lines = base64.encodebytes(data.replace(b"\n", b"\r\n")).rstrip(b"\n")
    return "base64", lines.replace(b"\n", b"\r\n").decode("ascii")


def _final_line_break(encoding: str, encoded: str) -> str:
    """Return what ends a single-part body with CRLF without adding a line break to its content."""
    if encoding == "base64":
        return "\r\n"

    if encoded.endswith("\r\n"):
        return ""

    # A soft line break ends the last line but decodes to nothing.
    return "=\r\n"
