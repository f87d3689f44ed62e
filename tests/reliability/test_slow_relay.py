"""A slow relay through the daemon: a batch that takes longer than its leases' old cap goes
out once, and a stop mid-round hands the relay nothing more.

In-process (``broadcaster.daemon.Daemon`` on a SQLite store, real time), with a relay of
one connection that takes a fixed time per message, as an email channel's pool in front
of a slow SMTP server does (the channel declares its ``concurrency``).
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from broadcaster.clock import RealClock
from broadcaster.config.settings import Settings
from broadcaster.daemon import Daemon
from broadcaster.dispatch import worker
from broadcaster.incidents import service
from broadcaster.store import Database, Delivery
from broadcaster.store.migrate import upgrade_async
from channels.base import Message, Receipt, Target
from tests.reliability.common import add_customers, delivery_states


class SlowRelay:
    """An SMTP-like channel: ``connections`` at a time, ``seconds`` a message."""

    name = "mail"
    contact = "email"

    def __init__(self, seconds: float, connections: int = 1) -> None:
        self.concurrency = connections
        self.seconds = seconds
        self._wire = asyncio.Semaphore(connections)
        self.handed = 0
        """Messages handed to the channel."""
        self.keys: collections.Counter[str] = collections.Counter()
        """Copies that went out, by idempotency key (one per delivery)."""

    async def send(self, target: Target, message: Message) -> Receipt:
        self.handed += 1
        async with self._wire:
            await asyncio.sleep(self.seconds)
            self.keys[str(message.idempotency_key)] += 1
        return Receipt(provider_message_id="ok")

    async def aclose(self) -> None:
        return None


async def _store(tmp_path: Path, customers: int) -> tuple[str, Database]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await upgrade_async(url)
    database = Database(url)
    await add_customers(database, RealClock().now(), customers, ["email"])
    return url, database


def _settings(url: str, *, lease: str, batch_size: int) -> Settings:
    return Settings.model_validate(
        {
            "database": {"url": url},
            "schedule": {
                "sweep_interval": "100ms",
                "cadence": {"major": "1h"},
                "promise_grace": "1h",
            },
            "delivery": {
                "channels": ["mail"],
                "workers": 2,
                "batch_size": batch_size,
                "poll_interval": "50ms",
                "lease": lease,
            },
            "channels": {"mail": {"type": "console"}},
            "http": {"enabled": False},
        }
    )


async def _declare(database: Database) -> None:
    await service.declare(
        database,
        RealClock(),
        service.Declaration(title="t", severity="major", message="m", components=["payments"]),
    )


async def _until(what: str, seconds: float, done: object) -> None:
    async with asyncio.timeout(seconds):
        while not await done():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_a_batch_that_outlasts_its_leases_old_cap_goes_out_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers' batches of 40 on one connection at 50 ms a message: 4 s, twice what
    used to be the most a batch kept its leases (``LEASES_KEPT`` leases, here 2 of 1 s),
    after which the rest of the batch, sent or not, was claimed again and sent again. Now
    that bounds each send (50 ms here), and every message goes out once."""
    monkeypatch.setattr(worker, "LEASES_KEPT", 2)
    customers = 80
    url, database = await _store(tmp_path, customers)
    relay = SlowRelay(0.05)
    daemon = Daemon(_settings(url, lease="1s", batch_size=40), channels={"mail": relay})
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        await _declare(database)

        async def all_sent() -> bool:
            assert not task.done(), "the daemon ended"
            return (await delivery_states(database)).get("sent", 0) == customers

        await _until("every message sent", 60, all_sent)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    stats = daemon._engine.dispatcher.stats if daemon._engine is not None else None
    await database.dispose()
    assert len(relay.keys) == customers
    assert max(relay.keys.values()) == 1, "a message went out twice"
    assert stats is not None and stats.reclaimed == stats.spent == 0 and stats.sent == customers


async def test_a_stop_mid_round_hands_a_slow_relay_nothing_more_and_gives_the_rest_back(
    tmp_path: Path,
) -> None:
    """A stop while two workers' batches of 50 wait on a relay of one connection at 100 ms
    a message: the daemon stops within about what the relay had in hand (two messages),
    not the 10 s the claimed batches would take; what was not handed over is pending
    again, its attempt not counted, and the next daemon sends it, every message once."""
    customers = 100
    url, database = await _store(tmp_path, customers)
    settings = _settings(url, lease="30s", batch_size=50)
    relay = SlowRelay(0.1)
    daemon = Daemon(settings, channels={"mail": relay})
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        await _declare(database)

        async def some_sent() -> bool:
            assert not task.done(), "the daemon ended"
            return sum(relay.keys.values()) >= 5

        await _until("the first messages", 30, some_sent)
    finally:
        handed = relay.handed
        stopped_at = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 30)
    took = time.monotonic() - stopped_at
    assert relay.handed == handed, "messages were handed to the relay after the stop"
    assert took < 5, f"the stop took {took:.1f} s"
    states = await delivery_states(database)
    assert states == {"sent": handed, "pending": customers - handed}
    async with database.session() as session:
        query = select(Delivery.attempts).where(Delivery.state == "pending").distinct()
        assert (await session.execute(query)).scalars().all() == [0]
    assert sum(relay.keys.values()) == handed

    fast = SlowRelay(0, connections=4)
    again = Daemon(settings, channels={"mail": fast})
    stop = asyncio.Event()
    task = asyncio.create_task(again.run(stop))
    try:

        async def rest_sent() -> bool:
            assert not task.done(), "the daemon ended"
            return (await delivery_states(database)).get("sent", 0) == customers

        await _until("the rest sent", 30, rest_sent)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await database.dispose()
    assert set(relay.keys).isdisjoint(fast.keys)
    assert len(relay.keys) + len(fast.keys) == customers
    assert max((relay.keys + fast.keys).values()) == 1
    stats = again._engine.dispatcher.stats if again._engine is not None else None
    assert stats is not None and stats.reclaimed == 0  # given back, not left to expire
