"""Redirect targets taken from a request, kept on this site."""

from __future__ import annotations

from urllib.parse import urlsplit


def local_target(target: str | None, fallback: str) -> str:
    """Return ``target`` if it is a path on this site, else ``fallback``.

    A form's "next" field is user input: redirecting to any URL in it would let
    a crafted link send a logged-in user to another site.
    """
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/") and not target.startswith("//"):
            return target
    return fallback
