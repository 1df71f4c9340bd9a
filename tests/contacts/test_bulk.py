"""Tests for the statements that bulk imports compile once and hand to the driver."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select

from messagehub.contacts.bulk import DriverStatement, in_list, in_list_names, in_list_values, insert_statement

metadata = MetaData()
people = Table(
    "people",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50)),
    Column("city", String(50)),
    Column("age", Integer),
)


@pytest.mark.parametrize("paramstyle", ["qmark", "named"])
def test_insert_columns_in_any_order(tmp_path: Path, paramstyle: str) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'people.db'}", paramstyle=paramstyle)
    metadata.create_all(engine)
    statement = insert_statement(engine.dialect, people, ["age", "name", "city"])

    with engine.begin() as connection:
        statement.execute_many(connection, [(36, "Ann", "Köln"), (41, "Bob", None)])
        rows = connection.execute(select(people.c.name, people.c.city, people.c.age).order_by(people.c.id)).all()

    assert [tuple(row) for row in rows] == [("Ann", "Köln", 36), ("Bob", None, 41)]
    engine.dispose()


@pytest.mark.parametrize("paramstyle", ["qmark", "named"])
def test_in_list_padded_with_null(tmp_path: Path, paramstyle: str) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'people.db'}", paramstyle=paramstyle)
    metadata.create_all(engine)
    query = select(people.c.name).where(in_list(people.c.city, "city", 4)).order_by(people.c.name)
    lookup = DriverStatement(engine.dialect, query, in_list_names("city", 4))

    with engine.begin() as connection:
        insert_statement(engine.dialect, people, ["name", "city"]).execute_many(
            connection, [("Ann", "Köln"), ("Bob", None), ("Cy", "Bonn"), ("Dee", "Wien")]
        )
        found = lookup.fetch_all(connection, in_list_values(["Köln", "Bonn"], 4))

    assert found == [("Ann",), ("Cy",)]
    engine.dispose()


def test_in_list_values_too_many_rejected() -> None:
    with pytest.raises(ValueError, match="3 values given for an IN list of 2"):
        in_list_values(["a", "b", "c"], 2)
