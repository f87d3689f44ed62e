"""A batch in flight: a channel that declares its concurrency (a small connection pool)
gets its sends prepared just ahead of its connections, not a whole batch at once; any other
channel gets the batch's messages once all of them are made, and a send that ends early
holds none of the others back; and the deliveries of a batch that is still sending keep
their leases, however slow the channel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from broadcaster.clock import FakeClock
from broadcaster.compose.render import Renderer, RenderError
from broadcaster.dispatch.handover import SENDS_AHEAD, Starting
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import Database, Delivery
from channels.base import Message, Receipt, Target, concurrency_of
from channels.email import EmailChannel, EmailSettings
from channels.memory import MemoryChannel
from tests.integration.test_broadcast_loop import START, add_customers, make_settings


@dataclass
class HeldChannel(MemoryChannel):
    """Holds every send until ``go`` is set; counts the sends that reached it."""

    concurrency: int | None = None
    go: asyncio.Event = field(default_factory=asyncio.Event)
    entered: int = 0

    async def send(self, target: Target, message: Message) -> Receipt:
        self.entered += 1
        await self.go.wait()
        return await super().send(target, message)


async def _round_of(database: Database, clock: FakeClock, channel: MemoryChannel) -> Engine:
    settings = make_settings()  # batch_size 4
    await add_customers(database, clock, [(f"C{i}", ["component:rail"]) for i in range(4)])
    engine = await Engine.create(settings, database, clock, {"mail": channel}, owner="a")
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    return engine


async def _entered_while_held(engine: Engine, channel: HeldChannel, expected: int) -> int:
    """How many sends reached the held channel: waits for ``expected``, then a little
    longer in case more come."""
    batch = asyncio.create_task(engine.dispatcher.run_once())
    async with asyncio.timeout(10):  # the claim and the round's contents come from the store
        while channel.entered < expected:  # the fake channel has no event for this
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    entered = channel.entered
    channel.go.set()
    assert await batch == 4
    assert len(channel.sent) == 4
    return entered


async def test_a_channel_of_one_connection_gets_its_sends_prepared_just_ahead(
    database: Database,
) -> None:
    clock = FakeClock(START)
    channel = HeldChannel(name="mail", concurrency=1)
    engine = await _round_of(database, clock, channel)
    assert await _entered_while_held(engine, channel, SENDS_AHEAD * 1) == SENDS_AHEAD * 1 < 4


async def test_a_channel_without_a_declared_concurrency_gets_the_whole_batch_at_once(
    database: Database,
) -> None:
    clock = FakeClock(START)
    channel = HeldChannel(name="mail")
    engine = await _round_of(database, clock, channel)
    assert await _entered_while_held(engine, channel, 4) == 4


class MakingCounted:
    """Wraps a renderer: counts the messages made."""

    def __init__(self, renderer: Renderer, fail_for: str | None = None) -> None:
        self._renderer = renderer
        self._fail_for = fail_for
        self.made = 0

    def message(self, request: Any, idempotency_key: str) -> Message:
        self.made += 1
        if idempotency_key == self._fail_for:
            raise RenderError("the template failed for this customer")
        return self._renderer.message(request, idempotency_key=idempotency_key)


@dataclass
class MakingSeen(MemoryChannel):
    """Notes, at each send, how many messages of the batch had been made by then."""

    making: MakingCounted | None = None
    seen: list[int] = field(default_factory=list)

    async def send(self, target: Target, message: Message) -> Receipt:
        assert self.making is not None
        self.seen.append(self.making.made)
        return await super().send(target, message)


@pytest.mark.parametrize("failing", [None, 1])
async def test_a_batch_is_made_whole_before_its_first_message_is_handed_over(
    database: Database, failing: int | None
) -> None:
    """Every send waits until the batch's messages are all made; one that fails before
    (a template that fails for its customer) holds none of the others back."""
    clock = FakeClock(START)
    channel = MakingSeen(name="mail")
    engine = await _round_of(database, clock, channel)
    dispatcher = engine.dispatcher
    async with database.session() as session:
        ids = (await session.execute(select(Delivery.id).order_by(Delivery.id))).scalars().all()
    fail_for = None if failing is None else f"delivery-{ids[failing]}"
    channel.making = MakingCounted(dispatcher._renderer, fail_for=fail_for)
    dispatcher._renderer = channel.making  # type: ignore[assignment]
    async with asyncio.timeout(10):  # waiting for the failed one would never end
        assert await dispatcher.run_once() == 4
    sent = 4 if failing is None else 3
    assert channel.seen == [4] * sent  # each send came after all four were made (or tried)
    assert dispatcher.stats.sent == sent and dispatcher.stats.retried == 4 - sent


async def test_the_batch_start_opens_once_every_send_arrived_each_once() -> None:
    starting = Starting(3)
    waiting = [asyncio.create_task(starting.ready(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    starting.arrive(1)  # again: it already counted
    await asyncio.sleep(0)
    assert not any(task.done() for task in waiting)
    starting.arrive(3)  # one that ended early
    async with asyncio.timeout(1):
        await asyncio.gather(*waiting)
    async with asyncio.timeout(1):
        await Starting(0).ready(7)  # a batch with nothing to wait for


def test_the_email_channel_declares_its_pool_as_its_concurrency() -> None:
    channel = EmailChannel("mail", EmailSettings(pool_size=3))
    assert concurrency_of(channel) == 3
    assert concurrency_of(MemoryChannel()) is None


@pytest.mark.parametrize("bad", [0, -2, 1.5, "4", True])
def test_a_concurrency_that_is_not_a_positive_whole_number_is_refused(bad: object) -> None:
    channel = HeldChannel(name="odd", concurrency=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"channel 'odd': concurrency"):
        concurrency_of(channel)


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait (up to 10 s) until ``condition()`` is true."""
    try:
        async with asyncio.timeout(10):
            while not await condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"waited 10 s for {what}") from None


async def _earliest_lease(database: Database) -> datetime | None:
    async with database.session() as session:
        query = select(func.min(Delivery.lease_expires_at)).where(Delivery.state == "sending")
        return (await session.execute(query)).scalar_one()


async def test_a_batch_still_sending_keeps_its_leases_and_nobody_reclaims_it(
    database: Database,
) -> None:
    clock = FakeClock(START)
    channel = HeldChannel(name="mail")  # a relay that takes three leases' time to answer
    engine = await _round_of(database, clock, channel)
    engine.dispatcher.lease_renewal = timedelta(milliseconds=20)
    lease = engine.settings.delivery.lease
    rival = await Engine.create(
        make_settings(), database, clock, {"mail": MemoryChannel(name="mail")}, owner="b"
    )
    batch = asyncio.create_task(engine.dispatcher.run_once())

    async def all_in() -> bool:
        return channel.entered == 4

    await _until(all_in, "the sends")
    for _ in range(5):  # 200 s: past the first lease by the second step
        clock.advance(lease * 2 / 3)

        async def renewed() -> bool:
            earliest = await _earliest_lease(database)
            return earliest is not None and earliest >= clock.now() + lease

        await _until(renewed, "a renewal")
        assert await rival.dispatcher.claim(10) == []
    channel.go.set()
    assert await batch == 4
    assert len(channel.sent) == 4
    async with database.session() as session:
        states = (await session.execute(select(Delivery.state, Delivery.lease_owner))).all()
    assert sorted(states) == [("sent", None)] * 4
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("leases ")]


async def test_a_failed_renewal_is_logged_and_the_batch_goes_on(
    database: Database, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(START)
    channel = HeldChannel(name="mail")
    engine = await _round_of(database, clock, channel)
    dispatcher = engine.dispatcher
    dispatcher.lease_renewal = timedelta(milliseconds=20)
    tries = 0

    async def broken(ids: list[int]) -> int:
        nonlocal tries
        tries += 1
        raise OSError("the store went away")

    monkeypatch.setattr(dispatcher, "_renew_leases", broken)
    batch = asyncio.create_task(dispatcher.run_once())

    async def tried_twice() -> bool:
        return tries >= 2

    with caplog.at_level(logging.WARNING, logger="broadcaster.dispatch"):
        await _until(tried_twice, "two renewals")
    channel.go.set()
    assert await batch == 4
    assert len(channel.sent) == 4
    failures = [r for r in caplog.records if "could not renew" in r.getMessage()]
    assert failures and "the store went away" in str(failures[0].__dict__.get("reason"))


async def test_leases_lost_while_the_process_stalled_leave_the_unsent_messages_to_their_new_holder(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    channel = HeldChannel(name="mail", concurrency=1)  # two sends out, two waiting
    engine = await _round_of(database, clock, channel)
    dispatcher = engine.dispatcher
    dispatcher.lease_renewal = timedelta(milliseconds=20)
    renew = dispatcher._renew_leases
    may_renew, renewed = asyncio.Event(), asyncio.Event()

    async def stalled(ids: dict[int, int]) -> set[int]:  # the process "stalls" until told
        await may_renew.wait()
        held = await renew(ids)
        renewed.set()
        return held

    dispatcher._renew_leases = stalled  # type: ignore[method-assign]
    rival_channel = MemoryChannel(name="mail")
    rival = await Engine.create(
        make_settings(), database, clock, {"mail": rival_channel}, owner="b"
    )
    batch = asyncio.create_task(dispatcher.run_once())

    async def two_out() -> bool:
        return channel.entered == 2

    await _until(two_out, "the first two sends")
    clock.advance(engine.settings.delivery.lease * 2)  # the stall outlasted the lease
    taken = await rival.dispatcher.claim(10)
    assert len(taken) == 4 and all(job.reclaimed for job in taken)
    with caplog.at_level(logging.WARNING, logger="broadcaster.dispatch"):
        may_renew.set()
        async with asyncio.timeout(10):
            await renewed.wait()
        channel.go.set()
        assert await batch == 4
    # The two already on the wire went out (the rival sends them again: a stall that
    # outlasts the lease repeats what was in flight); the two that had not, did not.
    assert len(channel.sent) == 2
    assert any("were lost" in record.getMessage() for record in caplog.records)


async def test_a_batch_keeps_its_leases_for_a_bounded_time(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    channel = HeldChannel(name="mail")  # a send that never returns
    engine = await _round_of(database, clock, channel)
    dispatcher = engine.dispatcher
    dispatcher.lease_renewal = timedelta(milliseconds=10)
    dispatcher.max_renewals = 3
    lease = engine.settings.delivery.lease
    with caplog.at_level(logging.WARNING, logger="broadcaster.dispatch"):
        batch = asyncio.create_task(dispatcher.run_once())

        async def gave_up() -> bool:
            return any("left to expire" in record.getMessage() for record in caplog.records)

        await _until(gave_up, "the renewals to stop")
    clock.advance(lease * 2)
    rival = await Engine.create(
        make_settings(), database, clock, {"mail": MemoryChannel(name="mail")}, owner="b"
    )
    assert len(await rival.dispatcher.claim(10)) == 4  # left to expire, and claimed again
    channel.go.set()
    assert await batch == 4
