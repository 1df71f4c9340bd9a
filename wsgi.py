"""WSGI entry point for gunicorn: ``gunicorn wsgi:app``."""

from messagehub import create_app

app = create_app()
