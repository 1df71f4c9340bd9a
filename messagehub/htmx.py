"""Whether an htmx request expects a panel of a page or the whole page."""

from __future__ import annotations

from flask import request


def wants_panel() -> bool:
    """Tell whether htmx asked for a panel to swap into the page.

    A boosted link or form (and the redirect it follows) also carries
    HX-Request, but it replaces the whole page, so it gets the whole page.
    """
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-Boosted") != "true"
