"""Staff notices are queued in the store with what made them due, and sent, tried again and
recorded by the follow-up sweep: a relay that fails for a moment, or a daemon that stops
between the commit and the send, loses no follow-up assignment, reminder, escalation or
escalation step (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from broadcaster.clock import Clock, FakeClock, RealClock
from broadcaster.config.settings import Settings
from broadcaster.daemon import Daemon
from broadcaster.engine import Engine
from broadcaster.followups import service as followups
from broadcaster.followups.notify import send_due_notices
from broadcaster.followups.service import queue_notice
from broadcaster.incidents import service
from broadcaster.store import Database, Followup, FollowupEvent, StaffNotice
from broadcaster.store.migrate import upgrade_async
from channels.base import Channel, DeliveryError, Message, Receipt, Target
from channels.memory import MemoryChannel
from tests.integration.test_rules_followups import START, channels, run_until, seed, settings

RELAY_DOWN = DeliveryError("421 relay busy, try later", retryable=True)


async def notices(database: Database) -> list[tuple[str, str, str, int]]:
    async with database.session() as session:
        rows = (await session.execute(select(StaffNotice).order_by(StaffNotice.id))).scalars()
        return [(n.key, n.staff, n.state, n.attempts) for n in rows]


async def history(database: Database) -> list[str]:
    async with database.session() as session:
        query = (
            select(FollowupEvent.detail)
            .where(FollowupEvent.kind == "notified")
            .order_by(FollowupEvent.id)
        )
        return [str(detail) for detail in (await session.execute(query)).scalars()]


async def declare_critical(database: Database, clock: Clock) -> int:
    incident = await service.declare(
        database,
        clock,
        service.Declaration("Trains stopped", "critical", "No trains.", components=["rail"]),
    )
    return incident.id


def to_staff(message: Message, target: Target) -> bool:
    return target.address.endswith("@example.org") and target.address[0] not in "vbs"


@dataclass
class Started:
    clock: FakeClock
    engine: Engine
    incident: int


async def started(
    database: Database, config: Settings | None = None, sinks: Mapping[str, Channel] | None = None
) -> Started:
    """A critical incident declared and its first round done (its notices sent)."""
    clock = FakeClock(START)
    await seed(database)
    engine = await Engine.create(config or settings(), database, clock, sinks or channels())
    incident = await declare_critical(database, clock)
    await run_until(engine, clock, START)
    return Started(clock, engine, incident)


async def queue_step(run: Started, key: str, staff: str) -> None:
    """Queue an escalation step's notice to ``staff`` for the run's incident, due now."""
    async with run.engine.database.session() as session, session.begin():
        queue_notice(
            session,
            key=key,
            kind="step",
            staff=staff,
            incident_id=run.incident,
            now=run.clock.now(),
        )


async def send_now(run: Started, channel: Channel, owner: str) -> int:
    """One sender's pass over the due notices, through ``channel``."""
    return await send_due_notices(
        run.engine.database,
        run.clock,
        channel,
        run.engine.renderer,
        run.engine.directory,
        owner=owner,
        settings=run.engine.settings.delivery,
        public_url="http://example.org",
    )


async def test_an_assignment_the_relay_refused_is_sent_at_a_later_sweep(
    database: Database,
) -> None:
    clock = FakeClock(START)
    await seed(database)
    sinks = channels()
    down = {"relay": True}

    def refuse_staff(target: Target, message: Message) -> DeliveryError | None:
        return RELAY_DOWN if down["relay"] and target.address == "ann@example.org" else None

    sinks["email"] = MemoryChannel(name="email", contact="email", fail=refuse_staff)
    engine = await Engine.create(settings(), database, clock, sinks)
    await declare_critical(database, clock)
    await run_until(engine, clock, START)
    assert await notices(database) == [
        ("step-1-1-maria", "maria", "sent", 1),  # the critical policy's first step
        ("followup-1-assigned", "ann", "pending", 1),
    ]
    assert "421 relay busy" in (await history(database))[0]

    # Not before its backoff (jitter 0: 5 s), then sent once the relay is back.
    clock.advance(timedelta(seconds=4))
    assert await engine.sweep_followups() == 0
    down["relay"] = False
    clock.advance(timedelta(seconds=1))
    assert await engine.sweep_followups() == 1
    assert await engine.sweep_followups() == 0
    assigned = [m for m in sinks["email"].sent if m.target.address == "ann@example.org"]
    assert len(assigned) == 1 and assigned[0].message.idempotency_key == "followup-1-assigned"
    # Staff have no unsubscribe link: no empty List-Unsubscribe (with a one-click POST).
    assert "List-Unsubscribe" not in assigned[0].message.headers
    assert "List-Unsubscribe-Post" not in assigned[0].message.headers
    assert (await notices(database))[1] == ("followup-1-assigned", "ann", "sent", 2)
    assert (await history(database))[-1].startswith("assigned sent (mem-")


async def test_a_notice_is_given_up_after_max_attempts_and_a_permanent_failure_at_once(
    database: Database,
) -> None:
    clock = FakeClock(START)
    await seed(database)
    config = settings()
    config.delivery.max_attempts = 3

    def refuse(target: Target, message: Message) -> DeliveryError | None:
        if target.address == "ann@example.org":
            return RELAY_DOWN
        if target.address == "maria@example.org":
            return DeliveryError("550 no such mailbox", retryable=False)
        return None

    sinks = channels()
    sinks["email"] = MemoryChannel(name="email", contact="email", fail=refuse)
    engine = await Engine.create(config, database, clock, sinks)
    await declare_critical(database, clock)
    await run_until(engine, clock, START)
    for _ in range(5):
        clock.advance(timedelta(minutes=1))
        await engine.sweep_followups()
    assert await notices(database) == [
        ("step-1-1-maria", "maria", "failed", 1),
        ("followup-1-assigned", "ann", "failed", 3),
    ]
    assert (await history(database))[-1].startswith("assigned failed: gave up after 3 attempts")
    async with database.session() as session:
        step = (
            await session.execute(select(StaffNotice).where(StaffNotice.kind == "step"))
        ).scalar_one()
    assert step.last_error == "step failed: 550 no such mailbox"


async def test_notices_queued_by_a_daemon_that_stopped_before_sending_go_out_from_another(
    database: Database,
) -> None:
    clock = FakeClock(START)
    await seed(database)
    first = await Engine.create(settings(), database, clock, channels())

    async def stopped() -> int:  # the daemon stopped after the round's commits, before this
        raise asyncio.CancelledError

    first.send_staff_notices = stopped  # type: ignore[method-assign]
    await declare_critical(database, clock)
    with pytest.raises(asyncio.CancelledError):
        await first.process_due_rounds()
    assert [(key, state) for key, _, state, _ in await notices(database)] == [
        ("step-1-1-maria", "pending"),
        ("followup-1-assigned", "pending"),
    ]

    sinks = channels()
    second = await Engine.create(settings(), database, clock, sinks)
    await run_until(second, clock, START)
    told = sorted(m.target.address for m in sinks["email"].sent if to_staff(m.message, m.target))
    assert told == ["ann@example.org", "maria@example.org"]


async def test_a_notice_held_by_a_sender_that_died_is_taken_over_when_its_lease_ends(
    database: Database,
) -> None:
    sinks = channels()
    run = await started(database, sinks=sinks)
    clock, engine, incident = run.clock, run.engine, run.incident
    async with database.session() as session, session.begin():
        queue_notice(
            session, key="held", kind="step", staff="carla", incident_id=incident, now=clock.now()
        )
        await session.flush()
        held = (await session.execute(select(StaffNotice).where(StaffNotice.key == "held"))).one()[
            0
        ]
        held.state, held.lease_owner, held.attempts = "sending", "dead-daemon", 1
        held.lease_expires_at = clock.now() + timedelta(seconds=60)
    assert await engine.sweep_followups() == 0
    clock.advance(timedelta(seconds=60))
    assert await engine.sweep_followups() == 1
    to_carla = [m for m in sinks["email"].sent if m.target.address == "carla@example.org"]
    assert [m.message.idempotency_key for m in to_carla] == ["held"]
    assert ("held", "carla", "sent", 2) in await notices(database)


async def test_notices_made_moot_before_they_go_out_are_cancelled(database: Database) -> None:
    down = {"relay": True}

    def refuse(target: Target, message: Message) -> DeliveryError | None:
        return RELAY_DOWN if down["relay"] and to_staff(message, target) else None

    sinks = channels()
    sinks["email"] = MemoryChannel(name="email", contact="email", fail=refuse)
    run = await started(database, sinks=sinks)
    clock, engine, incident = run.clock, run.engine, run.incident
    async with database.session() as session:
        task = (await session.execute(select(Followup))).scalar_one()
    await followups.done(database, clock, task.id, "ann", "reached", "Called; all fine.")
    await service.resolve(database, clock, incident, service.UpdateRequest("Trains run again."))
    down["relay"] = False
    clock.advance(timedelta(minutes=1))
    assert await engine.sweep_followups() == 0
    assert [state for _, _, state, _ in await notices(database)] == ["cancelled", "cancelled"]
    assert not [m for m in sinks["email"].sent if to_staff(m.message, m.target)]
    assert (await history(database))[-1] == (f"assigned cancelled: follow-up {task.id} is done")


class SlowChannel(MemoryChannel):
    async def send(self, target: Target, message: Message) -> Receipt:
        await asyncio.sleep(0.01)  # the other sender claims while this one sends
        return await super().send(target, message)


async def test_two_senders_at_once_send_each_notice_once(database: Database) -> None:
    run = await started(database)
    clock, incident = run.clock, run.incident
    async with database.session() as session, session.begin():
        for n in range(120):
            queue_notice(
                session,
                key=f"many-{n}",
                kind="step",
                staff=("maria", "carla", "ann")[n % 3],
                incident_id=incident,
                now=clock.now(),
            )
    channel = SlowChannel(name="email", contact="email")

    async def sender(owner: str) -> int:
        return await send_now(run, channel, owner)

    counts = await asyncio.gather(sender("a"), sender("b"))
    keys = [m.message.idempotency_key for m in channel.sent]
    assert sum(counts) == 120 and len(keys) == 120 and len(set(keys)) == 120
    assert {state for _, _, state, _ in await notices(database)} == {"sent"}


class GatedChannel(MemoryChannel):
    """Each send waits for its own go-ahead (``go[n]`` for the n-th call, from 0): the first
    then fails, the others go through."""

    def __init__(self) -> None:
        super().__init__(name="email", contact="email")
        self.go = [asyncio.Event(), asyncio.Event()]
        self.calls = 0

    async def send(self, target: Target, message: Message) -> Receipt:
        call, self.calls = self.calls, self.calls + 1
        await self.go[call].wait()
        if call == 0:
            raise RELAY_DOWN
        return await super().send(target, message)


async def test_a_late_outcome_of_an_attempt_whose_lease_ran_out_does_not_overwrite_the_next(
    database: Database,
) -> None:
    run = await started(database)
    clock, engine = run.clock, run.engine
    await queue_step(run, "slow", "carla")
    channel = GatedChannel()

    async def sender() -> int:  # the same owner: two tasks of one daemon
        return await send_now(run, channel, "daemon-1")

    async def calls(n: int) -> None:
        while channel.calls < n:
            await asyncio.sleep(0.01)

    first = asyncio.create_task(sender())
    await calls(1)
    clock.advance(engine.settings.delivery.lease)  # the first attempt's lease runs out
    second = asyncio.create_task(sender())  # claims it again: attempt 2
    await calls(2)
    channel.go[0].set()  # attempt 1 fails, late: its outcome must not land on attempt 2
    assert await first == 0
    channel.go[1].set()
    assert await second == 1
    assert ("slow", "carla", "sent", 2) in await notices(database)
    assert await sender() == 0
    assert [m.message.idempotency_key for m in channel.sent] == ["slow"]


async def test_the_daemon_s_rounds_do_not_wait_for_a_staff_relay_that_hangs(
    database: Database,
) -> None:
    clock = FakeClock(START)
    await seed(database)
    hung = asyncio.Event()

    class Hanging(MemoryChannel):
        async def send(self, target: Target, message: Message) -> Receipt:
            if to_staff(message, target):
                await hung.wait()
            return await super().send(target, message)

    sinks = channels()
    sinks["email"] = Hanging(name="email", contact="email")
    engine = await Engine.create(settings(), database, clock, sinks)
    await declare_critical(database, clock)
    woken: list[int] = []
    done = await asyncio.wait_for(
        engine.process_due_rounds(notices_queued=lambda: woken.append(1)), timeout=10
    )
    assert done == 1 and woken == [1]
    assert [state for _, _, state, _ in await notices(database)] == ["pending", "pending"]


async def test_a_sweep_that_cannot_queue_reminders_still_sends_what_is_queued(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    sinks = channels()
    run = await started(database, sinks=sinks)
    engine = run.engine
    await queue_step(run, "queued", "carla")

    async def broken(*args: object) -> list[object]:
        raise RuntimeError("the reminders' query failed")

    monkeypatch.setattr("broadcaster.engine.due_notices", broken)
    assert await engine.sweep_followups() == 1
    assert ("queued", "carla", "sent", 1) in await notices(database)


async def test_the_daemon_sends_a_round_s_notices_at_once_not_at_the_next_sweep(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await upgrade_async(url)
    database = Database(url)
    await seed(database)
    config = settings()
    config.database.url = url
    config.http.enabled = False
    config.rules.followup_sweep = timedelta(hours=1)  # its first run is an hour away
    sinks = channels()
    daemon = Daemon(config, clock=RealClock(), channels=dict(sinks))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        await declare_critical(database, RealClock())
        for _ in range(200):
            told = {m.target.address for m in sinks["email"].sent if to_staff(m.message, m.target)}
            if told == {"ann@example.org", "maria@example.org"}:
                break
            await asyncio.sleep(0.05)
        assert told == {"ann@example.org", "maria@example.org"}  # the follow-up's, the step's
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await database.dispose()


async def test_leases_of_notices_still_sending_are_renewed(database: Database) -> None:
    """A notice waiting behind a round's messages for a connection keeps its lease: another
    sender does not take it over (and send it again) while it is still being sent."""
    config = settings()
    config.delivery.lease = timedelta(seconds=1)  # renewed every third of a second
    run = await started(database, config)
    clock = run.clock
    await queue_step(run, "queued", "carla")
    release = asyncio.Event()

    class Busy(MemoryChannel):
        async def send(self, target: Target, message: Message) -> Receipt:
            await release.wait()  # the pool is busy with a round's messages
            return await super().send(target, message)

    channel = Busy(name="email", contact="email")

    async def sender(owner: str) -> int:
        return await send_now(run, channel, owner)

    first = asyncio.create_task(sender("daemon-1"))
    for _ in range(3):  # three leases' time on the clock, a renewal in between each
        await asyncio.sleep(0.5)
        clock.advance(timedelta(milliseconds=900))
    assert await asyncio.wait_for(sender("daemon-2"), 5) == 0  # still held: nothing to take
    release.set()
    assert await first == 1
    assert [m.message.idempotency_key for m in channel.sent] == ["queued"]
