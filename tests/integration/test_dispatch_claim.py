"""Claiming deliveries: expired leases first, then due pending ones, never more than asked."""

from __future__ import annotations

from datetime import timedelta

from broadcaster.clock import FakeClock
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import Database
from channels.memory import MemoryChannel
from tests.integration.test_broadcast_loop import START, add_customers, make_settings


async def test_claim_takes_expired_leases_then_due_pending_up_to_the_limit(
    database: Database,
) -> None:
    clock = FakeClock(START)
    await add_customers(database, clock, [(f"C{i}", ["component:rail"]) for i in range(6)])
    engine = await Engine.create(
        make_settings(), database, clock, {"mail": MemoryChannel(name="mail")}, owner="a"
    )
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    dispatcher = engine.dispatcher

    first = await dispatcher.claim(2)  # then this worker "dies" holding them
    assert [job.reclaimed for job in first] == [False, False]
    clock.advance(timedelta(seconds=30))
    held = await dispatcher.claim(1)  # a live worker's, until 08:01:30
    assert len(held) == 1

    clock.advance(timedelta(seconds=40))  # 08:01:10: the first two leases (60 s) expired
    second = await dispatcher.claim(3)
    assert len(second) == 3
    assert {job.delivery_id for job in second if job.reclaimed} == {
        job.delivery_id for job in first
    }
    assert sum(1 for job in second if not job.reclaimed) == 1

    rest = await dispatcher.claim(10)
    assert len(rest) == 2  # the last two pending; the live lease is left alone
    assert not any(job.reclaimed for job in rest)
    claimed = {job.delivery_id for job in first + held + second + rest}
    assert len(claimed) == 6
