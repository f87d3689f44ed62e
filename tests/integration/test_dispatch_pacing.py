"""A channel that declares its concurrency (a small connection pool) gets its sends
prepared just ahead of its connections, not a whole batch at once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from broadcaster.clock import FakeClock
from broadcaster.dispatch.worker import SENDS_AHEAD
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import Database
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


async def _round_of(database: Database, clock: FakeClock, channel: HeldChannel) -> Engine:
    settings = make_settings()  # batch_size 4
    await add_customers(database, clock, [(f"C{i}", ["component:rail"]) for i in range(4)])
    engine = await Engine.create(settings, database, clock, {"mail": channel}, owner="a")
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    return engine


async def _entered_while_held(engine: Engine, channel: HeldChannel) -> int:
    batch = asyncio.create_task(engine.dispatcher.run_once())
    async with asyncio.timeout(10):  # the claim and the round's contents come from the store
        while not channel.entered:  # the fake channel has no event for this
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # then every other send that may start reaches the channel
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
    assert await _entered_while_held(engine, channel) == SENDS_AHEAD * 1 < 4


async def test_a_channel_without_a_declared_concurrency_gets_the_whole_batch_at_once(
    database: Database,
) -> None:
    clock = FakeClock(START)
    channel = HeldChannel(name="mail")
    engine = await _round_of(database, clock, channel)
    assert await _entered_while_held(engine, channel) == 4


def test_the_email_channel_declares_its_pool_as_its_concurrency() -> None:
    channel = EmailChannel("mail", EmailSettings(pool_size=3))
    assert concurrency_of(channel) == 3
    assert concurrency_of(MemoryChannel()) is None


@pytest.mark.parametrize("bad", [0, -2, 1.5, "4", True])
def test_a_concurrency_that_is_not_a_positive_whole_number_is_refused(bad: object) -> None:
    channel = HeldChannel(name="odd", concurrency=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"channel 'odd': concurrency"):
        concurrency_of(channel)
