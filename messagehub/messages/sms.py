"""SMS encoding and segment count, as the campaign page shows them before launch.

A text that uses only the GSM 7-bit default alphabet and its extension table
(3GPP TS 23.038) is sent as GSM-7. Any other character switches the whole
message to UCS-2. Phones decode UCS-2 messages as UTF-16, so a character
outside the Basic Multilingual Plane (most emoji) takes a surrogate pair,
which is two code units.

One message carries up to 160 septets or 70 code units. A longer text is sent as a
concatenated message whose user data header takes 7 septets or 3 code units
of each segment, which leaves 153 septets or 67 code units for text.
"""

from __future__ import annotations

from dataclasses import dataclass

GSM_7 = "GSM-7"
UCS_2 = "UCS-2"

# The default alphabet in code order, 0x00 to 0x7F. Code 0x1B is left out
# because it is the escape to the extension table, not a character.
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)

# The extension table. Each of these is sent as the escape septet followed
# by its own septet, so it costs 2 septets.
_GSM_EXTENSION = frozenset("\f^{}\\[~]|€")

_GSM_SINGLE_SEPTETS = 160
_GSM_SEGMENT_SEPTETS = 153
_UCS2_SINGLE_UNITS = 70
_UCS2_SEGMENT_UNITS = 67


@dataclass(frozen=True)
class SmsSegments:
    """Encoding and size of one SMS text, as a carrier would send it."""

    # "GSM-7" or "UCS-2".
    encoding: str

    # Septets for GSM-7, where an extension character counts 2. UTF-16 code
    # units for UCS-2, where a character above U+FFFF counts 2.
    units: int

    # 1 when the text fits one message, else the number of concatenated segments.
    segments: int

    # Capacity of each segment in units: 160 or 153 for GSM-7, 70 or 67 for UCS-2.
    per_segment: int

    # Distinct characters outside GSM-7, in order of first appearance. Empty for GSM-7.
    ucs2_characters: tuple[str, ...]


def count_segments(text: str) -> SmsSegments:
    """Choose the encoding for ``text`` and count the SMS segments it takes.

    An empty text counts as 1 GSM-7 segment of 0 units, since sending it
    would still cost one message. The text is counted exactly as given: a letter
    written as a base letter plus a combining accent (Unicode NFD) is not in
    GSM-7, so it forces UCS-2 even where the precomposed letter would not.
    """
    # NOTE: the national language shift tables of TS 23.038 (Turkish,
    # Spanish, Portuguese, Indian scripts) are not used, so text such as
    # Turkish "ş" counts as UCS-2 even where a carrier supports a shift table.
    ucs2_characters = find_ucs2_characters(text)

    if ucs2_characters:
        costs = [_utf16_units(character) for character in text]
        return _measure(UCS_2, costs, _UCS2_SINGLE_UNITS, _UCS2_SEGMENT_UNITS, ucs2_characters)

    costs = [_septets(character) for character in text]
    return _measure(GSM_7, costs, _GSM_SINGLE_SEPTETS, _GSM_SEGMENT_SEPTETS, ())


def find_ucs2_characters(text: str) -> tuple[str, ...]:
    """Return the distinct characters of ``text`` that GSM-7 cannot encode, in order of appearance."""
    outside = (character for character in text if not _is_gsm(character))

    # dict keeps insertion order, so it deduplicates without reordering.
    return tuple(dict.fromkeys(outside))


def _is_gsm(character: str) -> bool:
    return character in _GSM_BASIC or character in _GSM_EXTENSION


def _septets(character: str) -> int:
    return 2 if character in _GSM_EXTENSION else 1


def _utf16_units(character: str) -> int:
    # A lone surrogate (possible in a Python str) is one code unit.
    return 2 if ord(character) > 0xFFFF else 1


def _measure(
    encoding: str,
    costs: list[int],
    single: int,
    per_segment: int,
    ucs2_characters: tuple[str, ...],
) -> SmsSegments:
    units = sum(costs)

    if units <= single:
        return SmsSegments(encoding, units, 1, single, ucs2_characters)

    segments = _pack(costs, per_segment)
    return SmsSegments(encoding, units, segments, per_segment, ucs2_characters)


def _pack(costs: list[int], capacity: int) -> int:
    """Count the segments of ``capacity`` units needed for ``costs``, one character at a time.

    A character never straddles two segments, because a phone cannot decode an
    escape septet without its character or half a surrogate pair. So when a
    2-unit character finds only 1 unit left, the segment ends one unit short.
    """
    segments = 1
    used = 0

    for cost in costs:
        if used + cost > capacity:
            segments += 1
            used = 0
        used += cost

    return segments


@dataclass
class SmsPlan:
    """Encodings and segments of a whole SMS audience, for the page before launch."""

    messages: int = 0
    gsm7: int = 0
    ucs2: int = 0
    segments: int = 0
    min_segments: int = 0
    max_segments: int = 0
    # Characters that forced UCS-2, in order of first appearance, over every message.
    ucs2_characters: tuple[str, ...] = ()

    def add(self, text: str) -> SmsSegments:
        """Count one personalised message and return its segments."""
        counted = count_segments(text)
        self.messages += 1
        self.segments += counted.segments
        self.min_segments = counted.segments if self.messages == 1 else min(self.min_segments, counted.segments)
        self.max_segments = max(self.max_segments, counted.segments)
        if counted.encoding == UCS_2:
            self.ucs2 += 1
            self.ucs2_characters = tuple(dict.fromkeys(self.ucs2_characters + counted.ucs2_characters))
        else:
            self.gsm7 += 1
        return counted
