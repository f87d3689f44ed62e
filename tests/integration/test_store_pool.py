"""The PostgreSQL pool checks a connection only after it lay idle, and replaces a dead one
before anyone uses it (broadcaster.store.db._ping_when_idle)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from broadcaster.store import Database
from broadcaster.store import db as store_db
from tests.conftest import asyncpg_dsn

pytestmark = pytest.mark.postgres


class _Pings:
    """Counts the dialect's pings (and lets them through)."""

    def __init__(self, database: Database) -> None:
        self.count = 0
        dialect = database.engine.sync_engine.dialect
        self._ping = dialect.do_ping

        def counted(dbapi_connection: Any) -> bool:
            self.count += 1
            return bool(self._ping(dbapi_connection))

        dialect.do_ping = counted  # type: ignore[method-assign]


async def _backend(database: Database) -> int:
    async with database.session() as session:
        pid: int = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        return pid


async def test_a_connection_in_steady_use_is_not_pinged(postgres_url: str) -> None:
    database = Database(postgres_url)
    pings = _Pings(database)
    try:
        backends = {await _backend(database) for _ in range(20)}
        assert len(backends) == 1  # one pooled connection, taken in turn
        assert pings.count == 0
    finally:
        await database.dispose()


async def test_an_idle_connection_is_checked_and_a_dead_one_replaced_unseen(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = Database(postgres_url)
    pings = _Pings(database)
    try:
        first = await _backend(database)
        # Every connection counts as idle from now on (instead of waiting a second).
        monkeypatch.setattr(store_db, "PING_AFTER_IDLE", 0.0)
        assert await _backend(database) == first  # idle, checked, alive: kept
        assert pings.count == 1

        admin = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:  # the pooled connection's session ends, as when the server restarts
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
            for _ in range(100):  # it ends a moment after the signal
                gone = await admin.fetchval(
                    "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $1", first
                )
                if gone:
                    break
                await asyncio.sleep(0.02)
        finally:
            await admin.close()
        # The check finds it dead and the pool opens another: the caller sees no error.
        second = await _backend(database)
        assert second != first
        assert pings.count == 2
    finally:
        await database.dispose()
