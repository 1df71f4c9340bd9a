"""The Flask application factory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Flask, render_template

from messagehub.config import instance_path_from_env, load_config
from messagehub.database import configure_engine
from messagehub.extensions import csrf, db, login_manager, migrate
from messagehub.providers import quiet_sdk_loggers

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Create the web app; ``test_config`` overrides every other configuration source."""
    instance_path = Path(test_config.get("INSTANCE_PATH")) if test_config and test_config.get("INSTANCE_PATH") else None
    instance_path = instance_path or instance_path_from_env()
    app = Flask(__name__, instance_path=str(instance_path), instance_relative_config=True)
    app.config.update(load_config(instance_path, test_config))
    app.config.setdefault("MAX_CONTENT_LENGTH", app.config["IMPORT_MAX_BYTES"])
    instance_path.mkdir(parents=True, exist_ok=True)

    _init_extensions(app)
    _register_blueprints(app)
    _register_error_pages(app)
    quiet_sdk_loggers()

    from messagehub.cli import register_commands

    register_commands(app)
    return app


def _init_extensions(app: Flask) -> None:
    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR), render_as_batch=True)
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please log in to see this page."
    login_manager.login_message_category = "info"

    with app.app_context():
        configure_engine(db.engine)


def _register_blueprints(app: Flask) -> None:
    from messagehub.auth.views import bp as auth_bp
    from messagehub.campaigns.views import bp as campaigns_bp
    from messagehub.contacts.views import bp as contacts_bp
    from messagehub.jobs.views import bp as jobs_bp
    from messagehub.main.views import bp as main_bp
    from messagehub.settings.views import bp as settings_bp
    from messagehub.settings import accounts  # noqa: F401  (adds the account pages to settings_bp)
    from messagehub.users.views import bp as users_bp

    for blueprint in (auth_bp, main_bp, contacts_bp, campaigns_bp, jobs_bp, settings_bp, users_bp):
        app.register_blueprint(blueprint)

    from messagehub.auth.access import can
    from messagehub.messages.sms import count_segments

    app.jinja_env.globals["can"] = can
    app.jinja_env.filters["sms_segments"] = count_segments
    app.jinja_env.filters["ord"] = ord


def _register_error_pages(app: Flask) -> None:
    log = logging.getLogger("messagehub.web")

    def render_error(code: int, title: str, text: str):
        return render_template("error.html", code=code, title=title, text=text), code

    @app.errorhandler(403)
    def forbidden(e):
        return render_error(403, "Not allowed", "Your role does not allow this action.")

    @app.errorhandler(404)
    def not_found(e):
        return render_error(404, "Not found", "There is nothing at this address.")

    @app.errorhandler(405)
    def wrong_method(e):
        # Reloading the address a form was posted to asks for it with GET.
        return render_error(
            405, "Page not available", "This address only takes a submitted form. Go back to the page the form was on."
        )

    @app.errorhandler(413)
    def too_large(e):
        limit = app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)
        return render_error(413, "File too large", f"Uploads are limited to {limit} MiB (IMPORT_MAX_BYTES).")

    @app.errorhandler(400)
    def bad_request(e):
        return render_error(400, "Bad request", getattr(e, "description", "The request was not valid."))

    @app.errorhandler(500)
    def server_error(e):
        db.session.rollback()
        log.error("error serving a request: %s", e)
        return render_error(500, "Something went wrong", "The error was logged. Try again, or ask your administrator.")
