"""Fixtures of the SendGrid and Twilio stand-ins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.openapi_check import SENDGRID_SPEC, TWILIO_SPEC, ApiDescription, StandInServer
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.twilio import FakeTwilio


@pytest.fixture(scope="session")
def vendor_specs() -> Path:
    """Return the folder of the vendors' OpenAPI descriptions, ../shared/specs beside the checkout."""
    path = (Path(__file__).resolve().parents[2] / ".." / "shared" / "specs").resolve()
    if not path.is_dir():
        pytest.fail(f"API descriptions folder not found: {path}")
    return path


@pytest.fixture(scope="session")
def sendgrid_description(vendor_specs: Path) -> ApiDescription:
    """Return SendGrid's v3 description, loaded once per session."""
    return ApiDescription.load(vendor_specs / SENDGRID_SPEC)


@pytest.fixture(scope="session")
def twilio_description(vendor_specs: Path) -> ApiDescription:
    """Return Twilio's 2010-04-01 description, loaded once per session."""
    return ApiDescription.load(vendor_specs / TWILIO_SPEC)


@pytest.fixture
def fake_sendgrid(sendgrid_description: ApiDescription) -> Iterator[FakeSendGrid]:
    """Run the SendGrid stand-in for one test, and fail the test if it saw a request the description rejects."""
    with FakeSendGrid(sendgrid_description) as server:
        yield server
    fail_on_violations(server)


@pytest.fixture
def fake_twilio(twilio_description: ApiDescription) -> Iterator[FakeTwilio]:
    """Run the Twilio stand-in for one test, and fail the test if it saw a request the description rejects."""
    with FakeTwilio(twilio_description) as server:
        yield server
    fail_on_violations(server)


def fail_on_violations(server: StandInServer) -> None:
    """Fail the running test when ``server`` kept violations and the test did not allow them."""
    if server.violations and not server.violations_allowed:
        listed = "\n".join(server.violations[:20])
        pytest.fail(f"{type(server).__name__} saw {len(server.violations)} request violation(s):\n{listed}")
