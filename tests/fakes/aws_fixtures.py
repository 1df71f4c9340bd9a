"""Fixtures of the moto server that plays SES and SNS in the tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from messagehub.providers.ses import SesSender
from messagehub.providers.sns import SnsSender
from tests.fakes.aws import AwsStandIn

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@pytest.fixture(scope="session")
def aws_stand_in() -> Iterator[AwsStandIn]:
    """Run one moto server behind the checking layer for the whole session; ``moto_aws`` resets it per test."""
    stand_in = AwsStandIn()
    stand_in.start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def moto_aws(aws_stand_in: AwsStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AwsStandIn:
    """Return the AWS stand-in, reset, with the environment sealed off from real AWS for this test.

    The stand-in gives ``endpoint_url``, ``region``, ``access_key_id`` and
    ``secret_access_key``. No AWS_* variable of the machine and no ~/.aws file
    reaches botocore, and any connection to a host other than 127.0.0.1
    fails, which keeps AWS and its instance metadata service out of reach.
    """
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)

    missing = str(tmp_path / "no-aws-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(socket, "getaddrinfo", _loopback_only(socket.getaddrinfo))

    aws_stand_in.reset()
    return aws_stand_in


@pytest.fixture
def ses_sender(moto_aws: AwsStandIn) -> Iterator[SesSender]:
    """Return an SES sender pointed at the stand-in, closed after the test."""
    sender = SesSender(**moto_aws.account_settings(), timeout=5.0)
    yield sender
    sender.close()


@pytest.fixture
def sns_sender(moto_aws: AwsStandIn) -> Iterator[SnsSender]:
    """Return an SNS sender pointed at the stand-in, closed after the test."""
    sender = SnsSender(**moto_aws.account_settings(), timeout=5.0)
    yield sender
    sender.close()


def _loopback_only(getaddrinfo: Any) -> Any:
    """Wrap ``socket.getaddrinfo`` so that it resolves loopback names only."""

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in LOOPBACK_HOSTS:
            raise socket.gaierror(socket.EAI_NONAME, f"tests may reach 127.0.0.1 only, not {name}")
        return getaddrinfo(host, *args, **kwargs)

    return resolve
