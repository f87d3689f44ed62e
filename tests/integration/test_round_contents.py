"""The dispatcher's round-content cache: one store read per round, however many jobs ask."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from broadcaster.clock import FakeClock
from broadcaster.dispatch.content import RoundContents
from broadcaster.incidents import service
from broadcaster.store import Database, Round


async def test_concurrent_jobs_of_one_round_load_it_once(database: Database) -> None:
    clock = FakeClock()
    incident = await service.declare(
        database,
        clock,
        service.Declaration("Line 1 down", "major", "No trains.", components=["line-1"]),
    )
    async with database.session() as session:
        round_id = (
            await session.execute(select(Round.id).where(Round.incident_id == incident.id))
        ).scalar_one()
    contents = RoundContents(database)

    # A batch of jobs for a round nobody has loaded yet, all asking at once.
    found = await asyncio.gather(*(contents.get(round_id) for _ in range(50)))

    assert contents.loads == 1
    assert {c.facts.title for c in found} == {"Line 1 down"}
    assert all(c is found[0] for c in found)
    assert (await contents.get(round_id)) is found[0]
    assert contents.loads == 1


async def test_a_failed_load_is_retried_by_the_next_job(database: Database) -> None:
    contents = RoundContents(database)
    results = await asyncio.gather(contents.get(12345), return_exceptions=True)
    assert isinstance(results[0], Exception)
    clock = FakeClock()
    incident = await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["x"])
    )
    async with database.session() as session:
        round_id = (
            await session.execute(select(Round.id).where(Round.incident_id == incident.id))
        ).scalar_one()
    assert (await contents.get(round_id)).number == 1
