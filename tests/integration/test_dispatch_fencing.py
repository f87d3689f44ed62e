"""A batch's outcomes are fenced by the attempt, not only by the owner (every worker of a
process shares it), and a failed write of them is tried again while the leases are kept, so
that messages already handed over are not claimed again and sent twice."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from broadcaster import engine as engine_module
from broadcaster.clock import FakeClock
from broadcaster.dispatch import worker
from broadcaster.dispatch.outcomes import Outcome, record_outcomes
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.outbox.materialise import materialise_round
from broadcaster.schedule.rounds import claim_due_round
from broadcaster.store import Database, Delivery, Incident
from channels.base import DeliveryError, Receipt
from channels.memory import MemoryChannel
from tests.integration.test_broadcast_loop import START, add_customers, make_settings


async def _engine(database: Database, clock: FakeClock, channel: MemoryChannel) -> Engine:
    await add_customers(database, clock, [(f"C{i}", ["component:rail"]) for i in range(3)])
    engine = await Engine.create(make_settings(), database, clock, {"mail": channel}, owner="a")
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    return engine


async def _rows(database: Database) -> list[tuple[Any, ...]]:
    async with database.session() as session:
        found = await session.execute(
            select(Delivery.id, Delivery.state, Delivery.attempts).order_by(Delivery.id)
        )
        return [tuple(row) for row in found]


async def test_a_stale_attempt_of_the_same_owner_neither_renews_nor_records(
    database: Database,
) -> None:
    clock = FakeClock(START)
    engine = await _engine(database, clock, MemoryChannel(name="mail"))
    dispatcher = engine.dispatcher
    stale = await dispatcher.claim(3)  # worker 0 of this process; then it stalls
    clock.advance(timedelta(seconds=61))  # past the 60 s lease
    fresh = await dispatcher.claim(3)  # worker 1 of the same process takes them again
    assert [job.attempts for job in fresh] == [2, 2, 2]

    renewed = await dispatcher._renew_leases({job.delivery_id: job.attempts for job in stale})
    assert renewed == set()  # worker 0 learns it lost them: it does not send them
    failed = DeliveryError("boom", retryable=False)
    await record_outcomes(
        database,
        "a",
        [Outcome(stale[0], receipt=Receipt(provider_message_id="late"))]
        + [Outcome(job, error=failed) for job in stale[1:]],
        clock.now(),
        failover=[],
        contact_kinds={},
    )
    assert [row[1:] for row in await _rows(database)] == [("sending", 2)] * 3

    await record_outcomes(
        database,
        "a",
        [Outcome(job, receipt=Receipt(provider_message_id="ok")) for job in fresh],
        clock.now(),
        failover=[],
        contact_kinds={},
    )
    assert [row[1:] for row in await _rows(database)] == [("sent", 2)] * 3


async def test_a_deferral_written_again_does_not_give_back_a_later_claim(
    database: Database,
) -> None:
    """A message held back by a channel's pause is given back with its attempt: a claim of
    it since, by the same owner, has the same attempt count again. The deferral's write
    sent a second time (its commit's answer lost) must not match that claim."""
    clock = FakeClock(START)
    engine = await _engine(database, clock, MemoryChannel(name="mail"))
    dispatcher = engine.dispatcher
    first = await dispatcher.claim(3)
    until = clock.now() + timedelta(seconds=30)
    deferral = [Outcome(job, deferred_to=until) for job in first]
    await record_outcomes(database, "a", deferral, clock.now(), failover=[], contact_kinds={})
    assert [row[1:] for row in await _rows(database)] == [("pending", 0)] * 3

    clock.advance(timedelta(seconds=31))
    again = await dispatcher.claim(3)
    assert [job.attempts for job in again] == [1, 1, 1]  # the same owner, the same count
    await record_outcomes(database, "a", deferral, clock.now(), failover=[], contact_kinds={})
    assert [row[1:] for row in await _rows(database)] == [("sending", 1)] * 3


async def test_a_failed_write_of_the_outcomes_is_tried_again_not_sent_again(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(START)
    channel = MemoryChannel(name="mail")
    engine = await _engine(database, clock, channel)
    calls = 0
    real = record_outcomes

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls <= 2:  # the store restarts under the first two writes
            raise OperationalError("UPDATE deliveries", {}, ConnectionResetError("reset"))
        return await real(*args, **kwargs)

    monkeypatch.setattr(worker, "record_outcomes", flaky)
    monkeypatch.setattr(worker, "RECORD_RETRY_FIRST", 0.01)

    handled = await engine.dispatcher.run_once()

    assert handled == 3 and calls == 3
    assert [row[1:] for row in await _rows(database)] == [("sent", 1)] * 3
    clock.advance(timedelta(minutes=5))  # long past any lease: nothing is claimed again
    await engine.dispatch_all()
    assert len(channel.sent) == 3


async def test_a_store_that_stays_away_for_a_whole_lease_fails_the_batch(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(START)
    engine = await _engine(database, clock, MemoryChannel(name="mail"))
    engine.dispatcher._settings.lease = timedelta(seconds=0.2)

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("UPDATE deliveries", {}, ConnectionResetError("reset"))

    monkeypatch.setattr(worker, "record_outcomes", down)
    monkeypatch.setattr(worker, "RECORD_RETRY_FIRST", 0.05)
    with pytest.raises(OperationalError):
        await engine.dispatcher.run_once()


async def test_a_round_whose_writing_failed_is_taken_up_again_at_once(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store error mid-round gives the round back: the next pass (a couple of seconds
    later in the daemon) writes it, instead of waiting out the round lease."""
    clock = FakeClock(START)
    channel = MemoryChannel(name="mail")
    await add_customers(database, clock, [(f"C{i}", ["component:rail"]) for i in range(3)])
    engine = await Engine.create(make_settings(), database, clock, {"mail": channel}, owner="a")
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    real = materialise_round

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("INSERT INTO deliveries", {}, ConnectionResetError("reset"))

    monkeypatch.setattr(engine_module, "materialise_round", broken)
    with pytest.raises(OperationalError):
        await engine.process_due_rounds()
    monkeypatch.setattr(engine_module, "materialise_round", real)

    clock.advance(timedelta(seconds=2))  # the daemon's pause after an error
    assert await engine.process_due_rounds() == 1
    await engine.dispatch_all()
    assert len(channel.sent) == 3


async def test_a_round_falling_due_during_an_operator_s_update_does_not_deadlock(
    database: Database,
) -> None:
    """PostgreSQL: an update locks the incident, then its pending round; the claim of that
    round must not take the round and then wait for the incident (a deadlock). It leaves the
    round to the next sweep while the update holds the incident."""
    if database.dialect != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    clock = FakeClock(START)
    await add_customers(database, clock, [("C0", ["component:rail"])])
    incident = await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    settings = make_settings().schedule
    async with database.engine.connect() as operator:
        transaction = await operator.begin()
        await operator.execute(
            select(Incident.id).where(Incident.id == incident.id).with_for_update()
        )
        claimed = await asyncio.wait_for(
            claim_due_round(database, clock, settings, "leader"), timeout=5
        )
        assert claimed is None  # not now: the update has the incident
        other = await service.declare(
            database, clock, service.Declaration("u", "minor", "m", components=["rail"])
        )
        claimed = await asyncio.wait_for(
            claim_due_round(database, clock, settings, "leader"), timeout=5
        )
        assert claimed is not None and claimed.incident_id == other.id  # the others go on
        await transaction.commit()
    claimed = await claim_due_round(database, clock, settings, "leader")
    assert claimed is not None and claimed.incident_id == incident.id


async def test_a_row_being_written_for_an_incident_does_not_hold_its_round(
    database: Database,
) -> None:
    """PostgreSQL: an insert that refers to the incident (a follow-up, a failover delivery)
    takes a key share lock on it; the round claim does not mistake that for an update."""
    if database.dialect != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    clock = FakeClock(START)
    await add_customers(database, clock, [("C0", ["component:rail"])])
    incident = await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    async with database.engine.connect() as writer:
        transaction = await writer.begin()
        await writer.execute(
            select(Incident.id)
            .where(Incident.id == incident.id)
            .with_for_update(key_share=True, read=True)
        )
        claimed = await asyncio.wait_for(
            claim_due_round(database, clock, make_settings().schedule, "leader"), timeout=5
        )
        assert claimed is not None and claimed.incident_id == incident.id
        await transaction.rollback()


async def test_a_round_that_fails_on_its_own_keeps_its_lease_and_lets_others_go(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a store that could not be reached gives the round back at once: a round that
    fails every time (a bug, bad data) would otherwise come first at every pass and hold up
    every other incident's rounds."""
    clock = FakeClock(START)
    channel = MemoryChannel(name="mail")
    await add_customers(database, clock, [(f"C{i}", ["component:rail"]) for i in range(3)])
    engine = await Engine.create(make_settings(), database, clock, {"mail": channel}, owner="a")
    broken_incident = await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await service.declare(
        database, clock, service.Declaration("u", "minor", "m", components=["rail"])
    )

    async def broken_for_one(
        database: Database, clock: Any, claimed: Any, *a: Any, **k: Any
    ) -> Any:
        if claimed.incident_id == broken_incident.id:
            raise ValueError("a template bug")
        return await materialise_round(database, clock, claimed, *a, **k)

    monkeypatch.setattr(engine_module, "materialise_round", broken_for_one)
    with pytest.raises(ValueError, match="template bug"):
        await engine.process_due_rounds()
    clock.advance(timedelta(seconds=2))  # the daemon's pause after an error
    assert await engine.process_due_rounds() == 1  # the other incident's round
    await engine.dispatch_all()
    assert len(channel.sent) == 3
