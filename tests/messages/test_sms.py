"""Tests of SMS encoding choice and segment counting."""

from __future__ import annotations

import dataclasses

import pytest

from messagehub.messages.sms import SmsSegments, count_segments, find_ucs2_characters

EMOJI = "\N{GRINNING FACE}"  # U+1F600, a surrogate pair in UTF-16
APOSTROPHE = "\N{RIGHT SINGLE QUOTATION MARK}"  # U+2019, the typographic apostrophe word processors insert

# Every character of the GSM 7-bit default alphabet, without the 0x1B escape.
GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = "\f^{}\\[~]|€"

# (text, encoding, units, segments, per_segment)
SIZES = [
    pytest.param("", "GSM-7", 0, 1, 160, id="empty"),
    pytest.param("a" * 160, "GSM-7", 160, 1, 160, id="gsm-160"),
    pytest.param("a" * 161, "GSM-7", 161, 2, 153, id="gsm-161"),
    pytest.param("a" * 306, "GSM-7", 306, 2, 153, id="gsm-306"),
    pytest.param("a" * 307, "GSM-7", 307, 3, 153, id="gsm-307"),
    pytest.param("€" * 80, "GSM-7", 160, 1, 160, id="euro-80"),
    pytest.param("€" * 81, "GSM-7", 162, 2, 153, id="euro-81"),
    pytest.param("[" * 80, "GSM-7", 160, 1, 160, id="bracket-80"),
    pytest.param("[" * 81, "GSM-7", 162, 2, 153, id="bracket-81"),
    pytest.param(GSM_BASIC, "GSM-7", 127, 1, 160, id="basic-alphabet"),
    pytest.param(GSM_EXTENSION, "GSM-7", 20, 1, 160, id="extension-table"),
    pytest.param(EMOJI * 35, "UCS-2", 70, 1, 70, id="emoji-35"),
    pytest.param(EMOJI * 36, "UCS-2", 72, 2, 67, id="emoji-36"),
    pytest.param(APOSTROPHE + "a" * 69, "UCS-2", 70, 1, 70, id="apostrophe-70"),
    pytest.param(APOSTROPHE + "a" * 70, "UCS-2", 71, 2, 67, id="apostrophe-71"),
    pytest.param("ж" * 134, "UCS-2", 134, 2, 67, id="cyrillic-134"),
    pytest.param("ж" * 135, "UCS-2", 135, 3, 67, id="cyrillic-135"),
]


@pytest.mark.parametrize(("text", "encoding", "units", "segments", "per_segment"), SIZES)
def test_count_segments_sizes(text: str, encoding: str, units: int, segments: int, per_segment: int):
    result = count_segments(text)

    assert result.encoding == encoding
    assert result.units == units
    assert result.segments == segments
    assert result.per_segment == per_segment


# Each text has exactly two segments of full units, so a count that let the
# 2-unit character straddle the boundary would find 2 segments, not 3.
BOUNDARIES = [
    pytest.param("a" * 152 + "€" + "a" * 152, "GSM-7", 306, id="euro-at-153"),
    pytest.param("a" * 152 + "}" + "a" * 152, "GSM-7", 306, id="brace-at-153"),
    pytest.param("a" * 66 + EMOJI + "a" * 66, "UCS-2", 134, id="emoji-at-67"),
]


@pytest.mark.parametrize(("text", "encoding", "units"), BOUNDARIES)
def test_boundary_character_moves_whole(text: str, encoding: str, units: int):
    result = count_segments(text)

    assert result.encoding == encoding
    assert result.units == units
    assert result.segments == 3


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        # 154 septets still fit one 160-septet message, so no boundary applies.
        pytest.param("a" * 152 + "€", 1, id="euro-after-152-single"),
        # 161 septets: segment 1 ends at 152 and the euro opens segment 2.
        pytest.param("a" * 152 + "€" + "a" * 7, 2, id="euro-after-152"),
        # 161 septets: 151 + 2 fills segment 1 exactly.
        pytest.param("a" * 151 + "€" + "a" * 8, 2, id="euro-after-151"),
        pytest.param("a" * 153 + "€" * 76 + "a", 2, id="euros-fill-153"),
        pytest.param("a" * 65 + EMOJI + "a" * 67 + "a", 3, id="emoji-fills-67"),
    ],
)
def test_segments_near_boundary(text: str, segments: int):
    assert count_segments(text).segments == segments


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(f"Don{APOSTROPHE}t miss it {EMOJI}", (APOSTROPHE, EMOJI), id="apostrophe-emoji"),
        pytest.param(f"{EMOJI}{APOSTROPHE}{EMOJI}{APOSTROPHE}", (EMOJI, APOSTROPHE), id="first-appearance"),
        pytest.param("Café `code` ç", ("`", "ç"), id="backtick-c-cedilla"),
        pytest.param("Cafe\u0301", ("\u0301",), id="combining-accent"),
        pytest.param("Tab\there", ("\t",), id="tab"),
        pytest.param("Price: 5 € [promo] ~ ^_^", (), id="gsm-only"),
    ],
)
def test_ucs2_characters_named(text: str, expected: tuple[str, ...]):
    assert count_segments(text).ucs2_characters == expected


def test_ucs2_characters_match_finder():
    text = f"Hello {EMOJI}, it{APOSTROPHE}s here"

    assert count_segments(text).ucs2_characters == find_ucs2_characters(text)


def test_one_outsider_switches_whole_text():
    # The euro costs 2 septets in GSM-7 but 1 code unit in UCS-2.
    result = count_segments("€" * 69 + APOSTROPHE)

    assert result.encoding == "UCS-2"
    assert result.units == 70
    assert result.segments == 1


def test_lone_surrogate_one_unit():
    result = count_segments("\ud83d")

    assert result.encoding == "UCS-2"
    assert result.units == 1


def test_segments_frozen():
    result = count_segments("hi")

    assert isinstance(result, SmsSegments)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.segments = 5  # type: ignore[misc]
