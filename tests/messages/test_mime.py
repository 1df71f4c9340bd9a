"""Tests of MIME message building: every message is parsed back with the email package."""

from __future__ import annotations

import csv
import email
import re
import smtplib
from datetime import datetime, timedelta, timezone
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

import pytest
from email_validator import EmailNotValidError, validate_email

from messagehub.messages.mime import address_for_wire, build_message, clean_header_text, make_message_id
from messagehub.providers.base import OutgoingMessage

MESSAGE_ID = "<7.1001.0123456789abcdef0123@news.example.com>"

HEADER_KEYS = ["Date", "From", "To", "Reply-To", "Subject", "Message-ID", "MIME-Version", "Content-Type"]

# Text in many scripts, each with something that encoders get wrong.
SCRIPTS = {
    "cyrillic": "Здравствуйте, Иван! Ваш заказ № 42 готов.",
    "cjk": "您好，王先生。ご注文ありがとうございます。주문해 주셔서 감사합니다.",
    "arabic": "مرحبا بك يا عليّ، طلبك جاهز للاستلام.",
    "vietnamese": "Xin chào Nguyễn Thị Minh Khai, đơn hàng của bạn đã sẵn sàng.",
    "emoji": "Party time 🎉🎈 👩‍👩‍👧‍👦 family ✓ 🇵🇱",
    "greek": "Καλημέρα Ζαμπία, η παραγγελία σας είναι έτοιμη.",
    "devanagari": "नमस्ते अनुपम चटर्जी, आपका ऑर्डर तैयार है।",
    "combining": "Cafe\u0301 Zoe\u0308 – a\u0300 bientôt",
}


def make(**overrides) -> OutgoingMessage:
    fields = {
        "subject": "Your order",
        "text": "Hello Ann,\nyour order is ready.\n",
        "html": "<p>Hello Ann,</p>\n<p>your order is ready.</p>\n",
        "from_name": "Book Shop",
        "from_email": "news@example.com",
        "reply_to": "help@example.com",
        "to_name": "Ann Smith",
        "to_email": "ann@example.org",
        "message_id": MESSAGE_ID,
    }
    fields.update(overrides)
    return build_message(**fields)


def parse(message: OutgoingMessage) -> EmailMessage:
    """Parse the message the way a receiving program would."""
    if message.needs_smtputf8:
        return email.message_from_string(message.data.decode("utf-8"), policy=policy.default)
    return email.message_from_bytes(message.data, policy=policy.default)


def decoded(part: EmailMessage) -> str:
    """Return a text part's content with the wire's CRLF line breaks turned back into LF."""
    content = part.get_content()
    assert "\n" not in content.replace("\r\n", "")
    return content.replace("\r\n", "\n")


def display_name(message: OutgoingMessage, header: str) -> str:
    """Decode the display name of an address header by RFC 2047.

    Python 3.11's modern parser puts a space between adjacent encoded words in
    a display name, although RFC 2047 section 6.2 requires the whitespace
    between them to be ignored. The legacy API follows the RFC.
    """
    raw = email.message_from_string(message.data.decode("utf-8"), policy=policy.compat32)[header]
    phrase, _ = parseaddr(raw)
    return str(make_header(decode_header(phrase)))


def lines_of(message: OutgoingMessage) -> list[bytes]:
    assert message.data.endswith(b"\r\n")
    return message.data[:-2].split(b"\r\n")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Ann", "Ann"),
        ("  Ann  Smith ", "Ann  Smith"),
        ("Eve\r\nBcc: x@evil.example", "Eve Bcc: x@evil.example"),
        ("Eve \r\n Bcc", "Eve Bcc"),
        ("a\rb\nc", "a b c"),
        ("tab\there", "tab here"),
        ("nul\x00del\x7fnel\x85end", "nul del nel end"),
        ("line\u2028separator\u2029paragraph", "line separator paragraph"),
        ("\r\n", ""),
        ("Zoë 🎉", "Zoë 🎉"),
    ],
)
def test_clean_header_text(value, expected):
    assert clean_header_text(value) == expected


def test_address_for_wire_ascii():
    assert address_for_wire("ann@example.com") == ("ann@example.com", False)


def test_address_for_wire_idn_domain():
    assert address_for_wire("ann@bücher.example") == ("ann@xn--bcher-kva.example", False)
    assert address_for_wire("ann@пример.example") == ("ann@xn--e1afmkfd.example", False)


def test_address_for_wire_unicode_local_part():
    assert address_for_wire("иван@пример.example") == ("иван@xn--e1afmkfd.example", True)


@pytest.mark.parametrize(
    "address", ["", "ann", "ann@", "@example.com", "ann@example", "Ann <ann@example.com>", "a b@example.com"]
)
def test_address_for_wire_invalid(address):
    with pytest.raises(ValueError):
        address_for_wire(address)


def test_message_id_deterministic():
    first = make_message_id(7, 1001, "news.example.com", "install-a")

    assert make_message_id(7, 1001, "news.example.com", "install-a") == first
    assert re.fullmatch(r"<7\.1001\.[0-9a-f]{20}@news\.example\.com>", first)


def test_message_id_differs_by_input():
    base = make_message_id(7, 1001, "news.example.com", "install-a")

    assert make_message_id(7, 1001, "news.example.com", "install-b") != base
    assert make_message_id(7, 1002, "news.example.com", "install-a") != base
    assert make_message_id(8, 1001, "news.example.com", "install-a") != base


def test_message_id_hides_token():
    assert "install-secret" not in make_message_id(1, 2, "news.example.com", "install-secret")


def test_message_id_idn_domain():
    assert make_message_id(1, 2, "bücher.example", "t").endswith("@xn--bcher-kva.example>")


@pytest.mark.parametrize(
    "arguments",
    [(-1, 2, "news.example.com", "t"), (1, -2, "news.example.com", "t"), (1, 2, "news.example.com", ""),
     (1, 2, "bad domain", "t"), (1, 2, "example.com>\r\nBcc: x@evil.example", "t")],
)
def test_message_id_invalid(arguments):
    with pytest.raises(ValueError):
        make_message_id(*arguments)


def test_message_id_usable_in_message():
    message_id = make_message_id(3, 4, "пример.example", "t")

    assert parse(make(message_id=message_id))["Message-ID"] == message_id


def test_header_keys_exact():
    assert parse(make()).keys() == HEADER_KEYS


def test_headers_decode_back():
    date = datetime(2025, 3, 9, 14, 5, 7, tzinfo=timezone(timedelta(hours=1)))

    parsed = parse(make(date=date))

    assert parsed["Date"] == format_datetime(date)
    assert parsed["Date"].datetime == date
    assert parsed["Subject"] == "Your order"
    assert parsed["Message-ID"] == MESSAGE_ID
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["Reply-To"].addresses[0].addr_spec == "help@example.com"


def test_from_and_to_decode_back():
    parsed = parse(make())

    sender = parsed["From"].addresses
    recipient = parsed["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in sender] == [("Book Shop", "news@example.com")]
    assert [(a.display_name, a.addr_spec) for a in recipient] == [("Ann Smith", "ann@example.org")]


def test_envelope_addresses():
    message = make(from_email="news@bücher.example", to_email="ann@пример.example")

    assert message.sender == "news@xn--bcher-kva.example"
    assert message.recipient == "ann@xn--e1afmkfd.example"
    assert message.message_id == MESSAGE_ID


def test_default_date_is_now():
    before = datetime.now(timezone.utc).replace(microsecond=0)

    date = parse(make())["Date"].datetime

    assert before <= date <= datetime.now(timezone.utc)


def test_naive_date_rejected():
    with pytest.raises(ValueError, match="date"):
        make(date=datetime(2025, 1, 1, 12, 0))


def test_reply_to_left_out_when_empty():
    assert "Reply-To" not in parse(make(reply_to="")).keys()
    assert "Reply-To" not in parse(make(reply_to=None)).keys()


def test_multipart_structure():
    parsed = parse(make())

    parts = list(parsed.iter_parts())
    assert parsed.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert [part.get_content_charset() for part in parts] == ["utf-8", "utf-8"]
    assert parsed.defects == []
    assert [part.defects for part in parts] == [[], []]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_bodies_decode_exactly(script):
    text = f"{SCRIPTS[script]}\nsecond line\n"
    html = f"<p>{SCRIPTS[script]}</p>"

    parsed = parse(make(text=text, html=html))

    assert decoded(parsed.get_body(preferencelist=("plain",))) == text
    assert decoded(parsed.get_body(preferencelist=("html",))) == html


@pytest.mark.parametrize(
    "text",
    [
        "no final line break",
        "trailing spaces   \nand tab\t\n",
        "ends with spaces   ",
        ".\n..\nline after a dot\n",
        "From the start\nFrom here too\n",
        "equals = signs =3D =\nand =?utf-8?q?not_a_word?=\n",
        "--=_MessageHub_alternative\n--=_MessageHub_alternative--\n",
        "\n\n\nblank lines\n\n",
        "x" * 3000,
        ("a long line " * 200).strip(),
        "\u00a0non-breaking\u00a0spaces and a soft\u00adhyphen",
        "🎉" * 500,
    ],
)
def test_body_edge_cases_decode_exactly(text):
    parsed = parse(make(text=text, html=f"<pre>{text}</pre>"))

    assert decoded(parsed.get_body(preferencelist=("plain",))) == text
    assert decoded(parsed.get_body(preferencelist=("html",))) == f"<pre>{text}</pre>"


def test_body_line_breaks_become_crlf():
    parsed = parse(make(text="one\r\ntwo\rthree\nfour"))

    assert parsed.get_body(preferencelist=("plain",)).get_content() == "one\r\ntwo\r\nthree\r\nfour"


def test_text_only_message():
    text = "Hello Ann,\nno HTML here."
    parsed = parse(make(html=""))

    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    assert parsed.is_multipart() is False
    assert decoded(parse(make(text=text, html=""))) == text


def test_html_only_message():
    html = "<p>Здравствуйте</p>"
    parsed = parse(make(text="", html=html))

    assert parsed.get_content_type() == "text/html"
    assert decoded(parsed) == html
    assert parsed.keys() == HEADER_KEYS + ["Content-Transfer-Encoding"]


@pytest.mark.parametrize("text", ["ends without a line break  ", "ends with one\n", "Привет", "🎉" * 40])
def test_single_part_decodes_exactly(text):
    assert decoded(parse(make(text=text, html=""))) == text


def test_both_bodies_empty_rejected():
    with pytest.raises(ValueError, match="both empty"):
        make(text="", html="")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_subject_decodes_exactly(script):
    assert parse(make(subject=SCRIPTS[script]))["Subject"] == SCRIPTS[script]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_display_names_decode_exactly(script):
    name = SCRIPTS[script]

    message = make(from_name=name, to_name=name)

    assert display_name(message, "From") == name
    assert display_name(message, "To") == name
    assert parse(message)["To"].addresses[0].addr_spec == "ann@example.org"


@pytest.mark.parametrize("name", ["Иван Петров", "玉华 张", "علي عدوان", "Nguyễn Thị Minh", "Ζαμπία", "Zoë 🎉"])
def test_short_display_names_modern_parser(name):
    # Names of up to 42 UTF-8 bytes fit one encoded word, which Python 3.11's parser decodes exactly.
    assert parse(make(to_name=name))["To"].addresses[0].display_name == name


@pytest.mark.parametrize(
    "name",
    ['Smith, John', 'O"Brien \\ Sons', "J. R. R. Tolkien", "Ann (Sales)", "=?utf-8?q?fake?=", "a  b", "Ann@Shop <x>"],
)
def test_ascii_display_names_with_specials(name):
    parsed = parse(make(to_name=name))

    assert [(a.display_name, a.addr_spec) for a in parsed["To"].addresses] == [(name, "ann@example.org")]


@pytest.mark.parametrize(
    "subject",
    [
        "Spring sale: " + "all books half price, " * 12 + "only this week",
        "Весенняя распродажа: " + "все книги за полцены, " * 12 + "только неделю",
        "春季促销" * 60,
        "x" * 1200,
        "Literal =?utf-8?q?not_encoded?= text",
        "Two  spaces  kept",
    ],
)
def test_long_subject_folded(subject):
    message = make(subject=subject)

    header = re.search(rb"\r\nSubject:.*?\r\n(?=\S)", message.data, re.S).group(0)
    assert parse(message)["Subject"] == subject
    assert max(len(line) for line in header.split(b"\r\n")) <= 78


def test_ascii_subject_stays_readable():
    message = make(subject="Spring sale: " + "all books half price, " * 12)

    assert b"=?utf-8?" not in message.data
    assert b"\r\nSubject: Spring sale: all books" in message.data


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_seven_bit_clean(script):
    message = make(
        subject=SCRIPTS[script],
        text=SCRIPTS[script] * 30,
        html=SCRIPTS[script],
        from_name=SCRIPTS[script],
        to_name=SCRIPTS[script],
        to_email="ann@пример.example",
    )

    assert message.needs_smtputf8 is False
    assert message.data.isascii()
    assert max(len(line) for line in lines_of(message)) <= 78
    assert max(len(line) for line in message.data.split(b"\r\n\r\n", 1)[1].split(b"\r\n")) <= 76
    assert b"\r" not in message.data.replace(b"\r\n", b"")
    assert b"\n" not in message.data.replace(b"\r\n", b"")


def test_idn_domains_in_headers():
    message = make(from_email="news@bücher.example", reply_to="help@bücher.example", to_email="ann@пример.example")

    parsed = parse(message)

    assert parsed["From"].addresses[0].addr_spec == "news@xn--bcher-kva.example"
    assert parsed["Reply-To"].addresses[0].addr_spec == "help@xn--bcher-kva.example"
    assert parsed["To"].addresses[0].addr_spec == "ann@xn--e1afmkfd.example"


def test_unicode_local_part_needs_smtputf8():
    message = make(to_email="иван@пример.example", to_name="Иван", subject="Привет")

    parsed = parse(message)

    assert message.needs_smtputf8 is True
    assert message.recipient == "иван@xn--e1afmkfd.example"
    assert "иван@xn--e1afmkfd.example".encode() in message.data
    assert parsed["To"].addresses[0].addr_spec == "иван@xn--e1afmkfd.example"
    assert parsed["To"].addresses[0].display_name == "Иван"
    assert parsed["Subject"] == "Привет"


def test_unicode_sender_needs_smtputf8():
    message = make(from_email="пётр@пример.example")

    assert message.needs_smtputf8 is True
    assert message.sender == "пётр@xn--e1afmkfd.example"


INJECTIONS = [
    "Eve\r\nBcc: x@evil.example",
    "Eve\nBcc: x@evil.example",
    "Eve\rBcc: x@evil.example",
    "Eve\r\n\r\nBody takeover",
    "Eve\u2028Bcc: x@evil.example",
    "Eve\x85Bcc: x@evil.example",
    "Ева\r\nBcc: x@evil.example",
    'Eve" <x@evil.example>, "Mallory',
    "Eve <x@evil.example>, mallory@evil.example",
]


@pytest.mark.parametrize("field", ["to_name", "from_name", "subject"])
@pytest.mark.parametrize("value", INJECTIONS)
def test_header_injection_adds_nothing(field, value):
    message = make(**{field: value})

    parsed = parse(message)

    assert parsed.keys() == HEADER_KEYS
    assert [a.addr_spec for a in parsed["To"].addresses] == ["ann@example.org"]
    assert [a.addr_spec for a in parsed["From"].addresses] == ["news@example.com"]
    assert message.recipient == "ann@example.org"
    assert decoded(parsed.get_body(preferencelist=("plain",))) == "Hello Ann,\nyour order is ready.\n"


@pytest.mark.parametrize("value", INJECTIONS)
def test_injected_text_kept_in_its_header(value):
    message = make(to_name=value, subject=value)

    assert display_name(message, "To") == clean_header_text(value)
    assert parse(message)["Subject"] == clean_header_text(value)


def test_contact_name_in_subject_injection(sample_rows):
    # A subject rendered from contact data, with the line break the sample's row has.
    row = next(row for row in sample_rows if "\n" in row["last_name"])
    subject = f"Offer for {row['first_name']} {row['last_name']}"

    parsed = parse(make(subject=subject, to_name=f"{row['first_name']} {row['last_name']}"))

    assert parsed.keys() == HEADER_KEYS
    assert parsed["Subject"] == clean_header_text(subject)


@pytest.mark.parametrize("field", ["from_email", "to_email", "reply_to"])
@pytest.mark.parametrize(
    "address",
    [
        "help@example.com\r\nBcc: x@evil.example",
        "help@example.com\nBcc: x@evil.example",
        "help@example.com, x@evil.example",
        "Help <help@example.com>",
        "not an address",
    ],
)
def test_invalid_address_rejected(field, address):
    with pytest.raises(ValueError, match=field):
        make(**{field: address})


@pytest.mark.parametrize(
    "message_id", ["", "no-brackets@example.com", "<a@b>\r\nBcc: x@evil.example", "<a b@example.com>", "<ä@b.example>"]
)
def test_invalid_message_id_rejected(message_id):
    with pytest.raises(ValueError, match="message_id"):
        make(message_id=message_id)


def test_extra_headers_written():
    unsubscribe = "<https://news.example.com/u/" + "a" * 90 + ">, <mailto:unsubscribe@example.com>"

    parsed = parse(make(extra_headers={"List-Unsubscribe": unsubscribe, "X-Campaign": "Весна\r\nBcc: x@evil.example"}))

    assert parsed.keys() == HEADER_KEYS[:-1] + ["List-Unsubscribe", "X-Campaign", "Content-Type"]
    assert parsed["List-Unsubscribe"] == unsubscribe
    assert parsed["X-Campaign"] == "Весна Bcc: x@evil.example"


@pytest.mark.parametrize("name", ["Bcc", "cc", "TO", "Subject", "Content-Type", "Resent-To", "Message-ID"])
def test_extra_header_reserved_rejected(name):
    with pytest.raises(ValueError, match="not allowed"):
        make(extra_headers={name: "x@evil.example"})


@pytest.mark.parametrize("name", ["X Bad", "X-Bad:", "", "X-Bad\r\nBcc", "X-Ü"])
def test_extra_header_name_invalid(name):
    with pytest.raises(ValueError, match="invalid"):
        make(extra_headers={name: "value"})


def test_sample_contacts_round_trip(sample_rows):
    # Every 20th row keeps the test fast and still covers every script in the sample.
    checked = 0
    for row in sample_rows[::20]:
        try:
            address_for_wire(row["email"].strip())
        except ValueError:
            continue
        name = f"{row['first_name']} {row['last_name']}"
        subject = f"{row['first_name']}, news from {row['city']}"
        text = f"Hello {row['first_name']},\nsee you in {row['city']}.\n"

        message = make(subject=subject, text=text, to_name=name, to_email=row["email"].strip())
        parsed = parse(message)

        assert parsed.keys() == HEADER_KEYS
        assert parsed["Subject"] == clean_header_text(subject)
        assert display_name(message, "To") == clean_header_text(name)
        assert decoded(parsed.get_body(preferencelist=("plain",))) == text
        assert message.data.isascii()
        checked += 1

    assert checked > 450


def send(message: OutgoingMessage, port: int) -> None:
    options = ["SMTPUTF8"] if message.needs_smtputf8 else []
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.sendmail(message.sender, [message.recipient], message.data, mail_options=options)


def test_smtp_delivery_has_one_recipient(smtp_server):
    message = make(to_name="Eve\r\nBcc: x@evil.example", subject="Hi\r\nCc: y@evil.example")

    send(message, smtp_server.port)

    received = smtp_server.wait_for_messages(1)
    assert received[0].recipients == ("ann@example.org",)
    assert received[0].sender == "news@example.com"
    assert received[0].data == message.data
    assert email.message_from_bytes(received[0].data, policy=policy.default).keys() == HEADER_KEYS


def test_smtp_delivery_smtputf8(smtp_server):
    message = make(to_email="иван@пример.example", to_name="Иван", from_email="news@bücher.example")

    send(message, smtp_server.port)

    received = smtp_server.wait_for_messages(1)
    assert received[0].recipients == ("иван@xn--e1afmkfd.example",)
    assert received[0].sender == "news@xn--bcher-kva.example"
    assert "SMTPUTF8" in received[0].mail_options
    assert received[0].data == message.data


def test_plain_addresses_match_validator(shared_data):
    """The pattern shortcut of address_for_wire gives email_validator's result for every sample address."""
    with open(shared_data / "contacts-10k.csv", encoding="utf-8", newline="") as file:
        addresses = [row["email"].strip() for row in csv.DictReader(file)]
    extra = ["a@b.local", "a@x.test", "A.B@EXAMPLE.COM", "x@host.internal", "a@b.c", "dot.@example.com"]

    for address in addresses + extra:
        try:
            checked = validate_email(address, check_deliverability=False, allow_smtputf8=True)
            expected = (f"{checked.local_part}@{checked.ascii_domain}", not checked.local_part.isascii())
        except EmailNotValidError:
            expected = None
        try:
            actual = address_for_wire(address)
        except EmailNotValidError:
            actual = None
        assert actual == expected, address
