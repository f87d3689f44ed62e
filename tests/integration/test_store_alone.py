"""One statement as a transaction of its own (Database.execute_alone): committed on both
stores; on PostgreSQL in autocommit, with no BEGIN or COMMIT round trip, and the pooled
connection back in transactions for the next user."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from broadcaster.store import Database

_INSERT = text("INSERT INTO alone_probe (n) VALUES (:n)")


async def _table(database: Database) -> None:
    async with database.session() as session, session.begin():
        await session.execute(text("CREATE TABLE alone_probe (n integer)"))


async def _numbers(database: Database) -> list[int]:
    async with database.session() as session:
        rows = await session.execute(text("SELECT n FROM alone_probe ORDER BY n"))
        return [row[0] for row in rows]


async def test_a_statement_alone_is_committed(database: Database) -> None:
    await _table(database)
    await database.execute_alone(_INSERT, {"n": 1})
    await database.execute_alone(_INSERT, {"n": 2})
    assert await _numbers(database) == [1, 2]


@pytest.mark.postgres
async def test_on_postgresql_it_takes_no_begin_or_commit_and_leaves_transactions_as_they_were(
    postgres_url: str,
) -> None:
    database = Database(postgres_url)
    try:
        await _table(database)
        seen: list[str] = []
        async with database.engine.connect() as connection:  # the pool's one connection
            raw: Any = await connection.get_raw_connection()
            raw.driver_connection.add_query_logger(lambda record: seen.append(record.query))
        await database.execute_alone(_INSERT, {"n": 1})
        assert database.engine.pool.checkedin() == 1  # type: ignore[attr-defined]  # the same one
        assert not [query for query in seen if query.startswith(("BEGIN", "COMMIT"))]
        async with database.session() as session:  # a transaction again: rolled back
            await session.begin()
            await session.execute(_INSERT, {"n": 2})
            await session.rollback()
        assert any(query.startswith("BEGIN") for query in seen)
        assert await _numbers(database) == [1]
    finally:
        await database.dispose()
