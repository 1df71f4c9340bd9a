"""Tests that phone_validity.is_valid_number() agrees with phonenumbers.is_valid_number()."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import phonenumbers
import pytest
from phonenumbers import PhoneNumber

from messagehub.contacts import phone_validity

# PhoneNumberType.FIXED_LINE (0) to PhoneNumberType.VOICEMAIL (10).
NUMBER_TYPES = range(11)


def example_numbers() -> list[PhoneNumber]:
    """Return the metadata's example number of every type of every region and non-geographic code."""
    numbers = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for number_type in NUMBER_TYPES:
            example = phonenumbers.example_number_for_type(region, number_type)
            if example is not None:
                numbers.append(example)
    for country_code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        example = phonenumbers.example_number_for_non_geo_entity(country_code)
        if example is not None:
            numbers.append(example)

    return numbers


def number_from(country_code: int, national: str) -> PhoneNumber:
    """Return the PhoneNumber that parse() builds for this national significant number, leading zeros kept."""
    zeros = len(national) - len(national.lstrip("0"))
    if zeros == 0 or len(national) == 1:
        return PhoneNumber(country_code=country_code, national_number=int(national))

    return PhoneNumber(
        country_code=country_code,
        national_number=int(national),
        italian_leading_zero=True,
        number_of_leading_zeros=min(zeros, len(national) - 1),
    )


def variations(number: PhoneNumber) -> list[PhoneNumber]:
    """Return the number with each digit changed, one digit fewer, one more, and without its first digit."""
    national = phonenumbers.national_significant_number(number)
    changed = [national[:i] + digit + national[i + 1 :] for i in range(len(national)) for digit in "0159"]
    shapes = [*changed, national[:-1], national + "7", national[1:]]
    return [number_from(number.country_code, shape) for shape in shapes if shape]


def disagreements(numbers: list[PhoneNumber]) -> list[str]:
    """Return each number the two functions disagree on, with the verdict of phonenumbers."""
    return [
        f"+{number.country_code} {phonenumbers.national_significant_number(number)}: "
        f"phonenumbers {phonenumbers.is_valid_number(number)}"
        for number in numbers
        if phone_validity.is_valid_number(number) != phonenumbers.is_valid_number(number)
    ]


def test_validity_agrees_on_examples() -> None:
    numbers = example_numbers()

    assert len(numbers) > 1300
    assert disagreements(numbers) == []


def test_validity_agrees_on_variations() -> None:
    numbers = [variant for example in example_numbers() for variant in variations(example)]
    valid = sum(1 for number in numbers if phonenumbers.is_valid_number(number))

    assert valid > 10000
    assert len(numbers) - valid > 10000
    assert disagreements(numbers) == []


@pytest.mark.parametrize("seed", [1, 2])
def test_validity_agrees_on_random_numbers(seed: int) -> None:
    generator = random.Random(seed)
    numbers = [
        number_from(country_code, "".join(generator.choice("0123456789") for _ in range(generator.randint(1, 17))))
        for country_code in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
        for _ in range(100)
    ]

    assert disagreements(numbers) == []


def test_validity_agrees_on_sample_numbers(shared_data: Path) -> None:
    with (shared_data / "contacts-10k.csv").open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    numbers = []
    for row in rows:
        region = row["country"].strip().upper()
        try:
            numbers.append(phonenumbers.parse(row["phone"].strip(), region if region in phonenumbers.SUPPORTED_REGIONS else None))
        except phonenumbers.NumberParseException:
            continue

    assert len(numbers) > 9000
    assert disagreements(numbers) == []


@pytest.mark.parametrize("country_code", [0, 42, 999, 1000])
def test_validity_unknown_calling_code_invalid(country_code: int) -> None:
    number = PhoneNumber(country_code=country_code, national_number=301234567)

    assert phone_validity.is_valid_number(number) is False
    assert phonenumbers.is_valid_number(number) is False
