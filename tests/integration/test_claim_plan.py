"""The claim's plan on PostgreSQL: the partial claim index (migration 0007) serves both of a
claim's queries, and sent deliveries are not in it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, update

from bench.store import add_customers
from broadcaster.clock import FakeClock
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import Database, Delivery
from broadcaster.store.migrate import upgrade_async
from channels.memory import MemoryChannel
from tests.integration.test_broadcast_loop import START, make_settings

pytestmark = pytest.mark.postgres

CLAIM_INDEX = "ix_deliveries_state_next_attempt_at_id"
CUSTOMERS = 3000


async def test_both_claim_queries_walk_the_partial_claim_index(postgres_url: str) -> None:
    await upgrade_async(postgres_url)
    database = Database(postgres_url)
    plain = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    try:
        clock = FakeClock(START)
        await add_customers(database, CUSTOMERS, components=["rail"], kinds=["email"])
        engine = await Engine.create(
            make_settings(), database, clock, {"mail": MemoryChannel(name="mail")}, owner="a"
        )
        await service.declare(
            database, clock, service.Declaration("t", "minor", "m", components=["rail"])
        )
        await engine.process_due_rounds()
        async with database.session() as session, session.begin():
            # Most of the round went out; a few are held under a lease that ran out.
            await session.execute(
                update(Delivery).where(Delivery.id % 10 != 0).values(state="sent", sent_at=START)
            )
            await session.execute(
                update(Delivery)
                .where(Delivery.id % 50 == 0)
                .values(
                    state="sending",
                    lease_owner="gone",
                    lease_expires_at=START - timedelta(minutes=5),
                )
            )
        admin = await asyncpg.connect(plain)
        try:
            await admin.execute("ANALYZE deliveries")
            definition = await admin.fetchval(
                "SELECT indexdef FROM pg_indexes WHERE indexname = $1", CLAIM_INDEX
            )
            assert "WHERE" in definition and "pending" in definition, definition
            indexed = await admin.fetchval(
                "SELECT count(*) FROM deliveries WHERE state IN ('pending', 'sending')"
            )
            assert 0 < indexed < CUSTOMERS // 5

            seen: list[tuple[str, Any]] = []

            def capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
                if "FOR UPDATE" in statement:
                    seen.append((statement, parameters))

            event.listen(database.engine.sync_engine, "before_cursor_execute", capture)
            try:
                jobs = await engine.dispatcher.claim(200)
            finally:
                event.remove(database.engine.sync_engine, "before_cursor_execute", capture)
            assert len(jobs) == 200
            assert sum(job.reclaimed for job in jobs) == CUSTOMERS // 50
            assert len(seen) == 2  # expired leases, then due pending ones
            # A table this small is cheaper to scan whole; with scans and bitmaps priced
            # out, the plan shows whether the partial index can serve the query at all
            # (PostgreSQL must prove the query's state implies the index's condition).
            await admin.execute("SET enable_seqscan = off")
            await admin.execute("SET enable_bitmapscan = off")
            plans = [
                "\n".join(row[0] for row in await admin.fetch("EXPLAIN " + query, *parameters))
                for query, parameters in seen
            ]
            assert all(CLAIM_INDEX in plan for plan in plans), plans
            # The pending deliveries come in claim order from it: no sort of them all.
            assert "Sort" not in plans[1], plans[1]
        finally:
            await admin.close()
    finally:
        await database.dispose()
