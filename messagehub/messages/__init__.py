"""Personalised campaign content: Jinja templates rendered per contact, and the MIME message built from them."""
