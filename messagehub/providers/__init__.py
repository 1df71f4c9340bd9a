"""Senders: SMTP, the outbox, and the email and SMS API providers.

Nothing here imports Flask: campaign processes load these directly.
"""

from __future__ import annotations

import logging

# The vendors' SDKs log every request, bodies with recipients' numbers and
# addresses included, at INFO and DEBUG.
SDK_LOGGERS = ("twilio", "botocore", "boto3", "urllib3", "python_http_client")


def quiet_sdk_loggers() -> None:
    """Keep the vendors' SDKs to warnings and errors, whatever level MessageHub logs at."""
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
