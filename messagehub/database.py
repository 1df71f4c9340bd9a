"""Database engines with the settings MessageHub relies on, for web and engine alike."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event


def create_db_engine(url: str, **options) -> Engine:
    """Create an SQLAlchemy engine for ``url`` with MessageHub's connection settings."""
    engine = create_engine(url, **options)
    configure_engine(engine)
    return engine


def configure_engine(engine: Engine) -> None:
    """Apply per-connection settings; only SQLite needs any."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _configure_sqlite_connection)


def _configure_sqlite_connection(dbapi_connection, connection_record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the web app read while a campaign process writes. Every commit
    # reaches the OS before the call returns, so a killed process loses no
    # committed state; synchronous=NORMAL only gives up the last commits on a
    # power cut, not on a crash of the process.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
