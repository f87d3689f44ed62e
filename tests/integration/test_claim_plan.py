"""The claim's plans on PostgreSQL (migration 0007): due deliveries come from the partial
claim index, expired leases from the partial lease index by an index scan, and sent
deliveries are in neither."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
LEASE_INDEX = "ix_deliveries_lease_expires_at_id"
CUSTOMERS = 3000


@contextmanager
def _statements(database: Database) -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements (and their parameters) run on ``database`` inside the block."""
    seen: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(database.engine.sync_engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", capture)


async def test_each_claim_query_walks_its_partial_index(postgres_url: str) -> None:
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
            definitions = dict(
                await admin.fetch(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'deliveries'"
                )
            )
            assert "WHERE ((state)::text = 'pending'" in definitions[CLAIM_INDEX]
            assert "WHERE ((state)::text = 'sending'" in definitions[LEASE_INDEX]
            in_claim_index = await admin.fetchval(
                "SELECT count(*) FROM deliveries WHERE state = 'pending'"
            )
            assert 0 < in_claim_index < CUSTOMERS // 5  # the sent ones are not in it

            with _statements(database) as seen:
                jobs = await engine.dispatcher.claim(200)
            assert len(jobs) == 200
            assert sum(job.reclaimed for job in jobs) == CUSTOMERS // 50
            statements = [statement for statement, _ in seen]
            selects = [i for i, text in enumerate(statements) if "FOR UPDATE" in text]
            assert len(selects) == 2  # expired leases, then due pending ones
            expired, due = (seen[i] for i in selects)
            # The lease search runs with bitmap scans off (only an index scan marks the
            # dead entries it meets), and they are back on for the rest of the claim.
            assert statements[selects[0] - 1] == "SET LOCAL enable_bitmapscan = off"
            assert statements[selects[0] + 1] == "SET LOCAL enable_bitmapscan = on"
            assert "'sending'" in expired[0] and "'pending'" in due[0]  # constants

            async def plan(query: str, parameters: Any) -> str:
                """The plan of the claim itself: without the per-row look-up of the
                follow-up each message announces (a sub-plan of a few rows at most,
                sorted by deadline)."""
                rows = await admin.fetch("EXPLAIN " + query, *parameters)
                lines = [row[0] for row in rows]
                cut = next((i for i, line in enumerate(lines) if "SubPlan" in line), len(lines))
                return "\n".join(lines[:cut])

            async with admin.transaction():
                await admin.execute("SET LOCAL enable_bitmapscan = off")  # as the claim does
                lease_plan = await plan(*expired)
            assert f"Index Scan using {LEASE_INDEX}" in lease_plan, lease_plan
            assert "Sort" not in lease_plan, lease_plan

            # A table this small is cheaper to scan whole; with scans and bitmaps priced
            # out, the plan shows whether the partial index can serve the query at all
            # (PostgreSQL must prove the query's state implies the index's condition).
            async with admin.transaction():
                await admin.execute("SET LOCAL enable_seqscan = off")
                await admin.execute("SET LOCAL enable_bitmapscan = off")
                due_plan = await plan(*due)
            assert f"Index Scan using {CLAIM_INDEX}" in due_plan, due_plan
            assert "Sort" not in due_plan, due_plan  # claim order comes from the index

            # Until the next full look (same clock), a claim starts after the last one
            # taken, inside the index: it does not step over what was claimed before.
            with _statements(database) as seen:
                more = await engine.dispatcher.claim(50)
            assert len(more) == 50
            taken = max(job.delivery_id for job in jobs if not job.reclaimed)
            assert min(job.delivery_id for job in more) > taken
            floored = [pair for pair in seen if "FOR UPDATE" in pair[0]]
            assert len(floored) == 1 and "'sending'" not in floored[0][0]
            async with admin.transaction():
                await admin.execute("SET LOCAL enable_seqscan = off")
                await admin.execute("SET LOCAL enable_bitmapscan = off")
                floor_plan = await plan(*floored[0])
            condition = floor_plan.split("Index Cond:")[1].splitlines()[0]
            assert "ROW(next_attempt_at, id) > ROW(" in condition, floor_plan
        finally:
            await admin.close()
    finally:
        await database.dispose()
