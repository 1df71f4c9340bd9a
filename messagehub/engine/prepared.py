"""Statements of the send loop compiled once and run with executemany on the database driver."""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Callable

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement


class PreparedStatement:
    """One statement compiled for one dialect, whose executemany hands the driver its rows directly.

    SQLAlchemy's own executemany builds and converts a parameter dict for
    every row. For the hundred-row updates of each batch, that took longer
    than SQLite took to apply them. Here values that are the same for every
    row are converted once per call, and only the others once per row.
    """

    def __init__(self, statement: ClauseElement, dialect: Dialect):
        compiled = statement.compile(dialect=dialect)
        binds = {name: bind for bind, name in compiled.bind_names.items()}

        self.sql = compiled.string
        self._positional = compiled.positional
        self._names: list[str] = list(compiled.positiontup) if compiled.positional else list(binds)
        # The values written into the statement, such as a status it compares with.
        self._defaults = {name: bind.effective_value for name, bind in binds.items() if not bind.required}
        self._processors: dict[str, Callable[[Any], Any]] = {}
        for name in self._names:
            # The type as the dialect stores it. A TypeDecorator's own processor
            # leaves SQLite a datetime for the driver's default adapter, which
            # Python 3.12 deprecates and which writes another format than the ORM.
            processor = binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._processors[name] = processor
        # Picks one row's values in the driver's order, in C rather than a loop per value.
        self._pick = itemgetter(*self._names) if len(self._names) > 1 else lambda values: (values[self._names[0]],)

    def parameters(self, rows: list[dict[str, Any]], shared: dict[str, Any]) -> list:
        """Return the driver's parameters for ``rows``, each completed with ``shared`` and the statement's constants."""
        constants = {**self._defaults, **shared}
        for name, value in constants.items():
            if name in self._processors:
                constants[name] = self._processors[name](value)
        # A name may appear twice in the statement; its value is converted once.
        converted = list(self._processors.items())

        parameters = []
        for row in rows:
            values = {**constants, **row}
            for name, processor in converted:
                if name in row:
                    values[name] = processor(row[name])
            if self._positional:
                parameters.append(self._pick(values))
            else:
                parameters.append(dict(zip(self._names, self._pick(values))))
        return parameters

    def executemany(self, connection: Connection, rows: list[dict[str, Any]], shared: dict[str, Any]) -> int:
        """Run the statement once per row in one driver call, and return the number of rows it changed."""
        return connection.exec_driver_sql(self.sql, self.parameters(rows, shared)).rowcount


class PreparedStatements:
    """Compiles each statement the first time it runs on a dialect, and keeps it."""

    def __init__(self) -> None:
        self._prepared: dict[tuple[int, str], PreparedStatement] = {}

    def get(self, statement: ClauseElement, dialect: Dialect) -> PreparedStatement:
        """Return ``statement`` compiled for ``dialect``."""
        key = (id(statement), dialect.name)
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = self._prepared[key] = PreparedStatement(statement, dialect)
        return prepared
