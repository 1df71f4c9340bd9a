"""The blueprint of the contacts pages, shared by the modules that add them."""

from flask import Blueprint

bp = Blueprint("contacts", __name__, url_prefix="/contacts")
