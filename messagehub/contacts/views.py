"""The contacts pages: ``bp``, with the routes of the modules imported here.

``list_views`` shows the lists and their contacts, ``contact_views`` one
contact, and ``import_views`` the import wizard and its reports.
"""

from messagehub.contacts import contact_views, import_views, list_views  # noqa: F401  (they add their routes to bp)
from messagehub.contacts.blueprint import bp

__all__ = ["bp"]
