"""Tests for the checks of a contact edited by hand."""

from __future__ import annotations

import pytest
from email_validator import validate_email

from messagehub.contacts.editing import NO_CONTACT_MESSAGE, InvalidContact, check_contact


def test_check_normalises_values():
    values = check_contact(" Ann.Lee@EXAMPLE.com ", " Ann ", "Lee", "030 1234567", "de")

    assert values.email == validate_email("Ann.Lee@EXAMPLE.com", check_deliverability=False).normalized
    assert values.email_key == values.email.casefold()
    assert values.first_name == "Ann"
    assert values.phone == "+49301234567"
    assert values.country == "DE"


def test_check_reads_international_phone_without_country():
    values = check_contact("", "", "", "0044 20 7946 0958", "")

    assert values.phone == "+442079460958"
    assert values.email is None
    assert values.email_key is None


def test_check_names_nfc():
    values = check_contact("zoe@example.com", "Zoe\u0308", "", "", "")

    assert values.first_name == "Zo\u00eb"


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        (("ann@", "", "", "", ""), "email", "Invalid email address: There must be something after the @-sign."),
        (("", "", "", "030 1234567", ""), "phone", "Write the number with its country code"),
        (("", "", "", "+49 30", "DE"), "phone", "Invalid phone number: "),
        (("ann@example.com", "", "", "", "XX"), "country", '"XX" is not an ISO 3166 country code'),
        (("", "Ann", "", "", ""), "email", NO_CONTACT_MESSAGE),
    ],
)
def test_check_rejects_invalid(fields, field, message):
    with pytest.raises(InvalidContact) as raised:
        check_contact(*fields)

    assert list(raised.value.errors) == [field]
    assert raised.value.errors[field].startswith(message)


def test_check_reports_every_field():
    with pytest.raises(InvalidContact) as raised:
        check_contact("not an address", "", "", "12", "ZZ")

    assert sorted(raised.value.errors) == ["country", "email", "phone"]
