"""Encryption of secrets kept in the database, keyed from the instance secret key."""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Changing this label makes every stored secret unreadable; it only separates
# this key from other uses of the same secret key.
_KEY_LABEL = b"messagehub settings secrets v1"


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted, usually because the secret key changed."""


def _fernet(secret_key: str) -> Fernet:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_LABEL)
    return Fernet(base64.urlsafe_b64encode(hkdf.derive(secret_key.encode())))


def encrypt(secret_key: str, plaintext: str) -> str:
    """Encrypt ``plaintext`` into a token safe to store."""
    return _fernet(secret_key).encrypt(plaintext.encode()).decode("ascii")


def decrypt(secret_key: str, token: str) -> str:
    """Decrypt a token made by ``encrypt``.

    :raises SecretUnreadable: the token was made with another secret key or is damaged.
    """
    try:
        return _fernet(secret_key).decrypt(token.encode("ascii")).decode()
    except (InvalidToken, ValueError) as e:
        raise SecretUnreadable(
            "a stored secret cannot be decrypted: was instance/secret_key replaced? "
            "Enter the password again in Settings."
        ) from e
