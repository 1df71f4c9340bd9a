"""MessageHub: a self-hosted email and SMS campaign sender.

The web app lives in ``messagehub.app``. This package file imports nothing, so
the campaign engine and the providers load without Flask.
"""


def create_app(test_config=None):
    """Create the web app; see ``messagehub.app.create_app``."""
    from messagehub.app import create_app as create

    return create(test_config)
