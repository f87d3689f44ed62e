"""A provider's "too many requests" for the sender pauses the channel, on the real dispatcher.

The webhook channel (one fixed receiver, so its 429 is the channel's rate) posts over real
HTTP to a local receiver that answers the first requests 429 with a ``Retry-After``; a
second channel (e-mail, in memory) goes on beside it. The pause runs on a fake monotonic
clock, moved with the daemon's fake clock: no real waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.dispatch.pause import ChannelPauses, PauseBoard
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import Database, Delivery
from channels.base import Message, Receipt, Target
from channels.memory import MemoryChannel
from channels.webhook import WebhookChannel, WebhookSettings
from tests.fakes.control import Scripted
from tests.fakes.http import serve
from tests.fakes.webhook import WebhookReceiver
from tests.integration.test_broadcast_loop import START, add_customers

SECRET = "a-webhook-secret-of-some-length"
CUSTOMERS = 10
RETRY_AFTER = 30


class Monotonic:
    """The pauses' clock: moved by the test, and by their ``sleep`` (no real waiting)."""

    def __init__(self) -> None:
        self.now = 5000.0
        self.slept: list[float] = []
        self.on_sleep: asyncio.Event | None = None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:  # a stop that comes while a message waits
            self.on_sleep.set()


class OneConnection:
    """The webhook channel with one connection (sends one after another), declared as such:
    the dispatcher hands it two messages at a time, so that a batch's later messages are
    still claimed and not yet handed over when the first answer comes."""

    concurrency = 1

    def __init__(self, inner: WebhookChannel) -> None:
        self.inner = inner
        self.name = inner.name
        self.contact = inner.contact
        self._lock = asyncio.Lock()

    async def send(self, target: Target, message: Message) -> Receipt:
        async with self._lock:
            return await self.inner.send(target, message)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def receiver() -> WebhookReceiver:
    return WebhookReceiver(SECRET)


@pytest.fixture
def hook_url(receiver: WebhookReceiver) -> Iterator[str]:
    with serve(receiver.app) as url:
        yield f"{url}/in"


def _settings(hook_url: str) -> Settings:
    return Settings.model_validate(
        {
            "schedule": {"cadence": {"minor": "2h"}, "audience_batch": 5},
            "delivery": {
                "channels": ["mail", "hook"],
                "batch_size": 8,
                "max_attempts": 5,
                "backoff": {"initial": "10s", "maximum": "1m", "jitter": 0},
            },
            "channels": {
                "mail": {"type": "console"},
                "hook": {"type": "webhook", "url": hook_url, "secret": SECRET, "contact": "email"},
            },
        }
    )


async def _engine(
    database: Database, clock: FakeClock, hook_url: str, mono: Monotonic
) -> tuple[Engine, MemoryChannel]:
    await add_customers(
        database, clock, [(f"C{i:02d}", ["component:rail"]) for i in range(CUSTOMERS)]
    )
    mail = MemoryChannel(name="mail")
    hook = WebhookChannel(
        "hook", WebhookSettings(url=hook_url, secret=SECRET, contact="email", timeout=5.0)
    )
    settings = _settings(hook_url)
    engine = await Engine.create(
        settings, database, clock, {"mail": mail, "hook": OneConnection(hook)}, owner="a"
    )
    engine.dispatcher.pauses = ChannelPauses(monotonic=mono, sleep=mono.sleep, board=PauseBoard())
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    return engine, mail


async def _drain(engine: Engine, stop: asyncio.Event | None = None) -> None:
    """Batches until a claim finds nothing due (as a worker does before it waits)."""
    for _ in range(100):
        if await engine.dispatcher.run_once(stop) == 0:
            return
    raise AssertionError("the dispatcher never ran out of work")


async def _deliveries(database: Database, channel: str) -> list[Delivery]:
    async with database.session() as session:
        return list(
            (
                await session.execute(
                    select(Delivery).where(Delivery.channel == channel).order_by(Delivery.id)
                )
            ).scalars()
        )


def _keys(receiver: WebhookReceiver) -> list[str]:
    return [request.headers["idempotency-key"] for request in receiver.accepted]


async def test_a_throttled_channel_pauses_and_the_others_go_on(
    database: Database,
    receiver: WebhookReceiver,
    hook_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(START)
    mono = Monotonic()
    engine, mail = await _engine(database, clock, hook_url, mono)
    refused = Scripted(429, headers={"Retry-After": str(RETRY_AFTER)})
    receiver.faults.push(refused, refused)  # two: the first two sends are on the wire at once
    try:
        with caplog.at_level(logging.WARNING, logger="broadcaster.dispatch"):
            await _drain(engine)  # the whole round, within the pause

        # The e-mails went out at full speed; the webhook got nothing after its 429s.
        assert len(mail.sent) == CUSTOMERS
        assert all(d.state == "sent" for d in await _deliveries(database, "mail"))
        assert receiver.accepted == []
        assert [request.status for request in receiver.requests] == [429, 429]

        hooks = await _deliveries(database, "hook")
        assert len(hooks) == CUSTOMERS
        assert all(d.state == "pending" for d in hooks)
        throttled = [d for d in hooks if d.attempts == 1]
        held = [d for d in hooks if d.attempts == 0]
        # The throttled messages: retried as any retryable failure, their attempt counted.
        assert len(throttled) == 2 and len(held) == CUSTOMERS - 2
        for delivery in throttled:
            assert "429" in (delivery.last_error or "")
            assert delivery.next_attempt_at >= START + timedelta(seconds=RETRY_AFTER)
        # The others: not sent, nothing charged, due at the pause's end. Some were claimed
        # before the pause and given back, the rest were left in the queue by the claims.
        pause_end = START + timedelta(seconds=RETRY_AFTER)
        assert all(d.next_attempt_at == pause_end and d.last_error is None for d in held)
        assert all(d.lease_owner is None for d in hooks)
        stats = engine.dispatcher.stats
        assert stats.pauses == 1 and stats.deferred == CUSTOMERS - 2
        assert stats.sent == CUSTOMERS and stats.retried == 2

        # One warning for the pause, not one per message held.
        paused = [r for r in caplog.records if "paused" in r.getMessage()]
        assert len(paused) == 1
        assert paused[0].levelno == logging.WARNING
        assert "channel hook paused for 30.0 s" in paused[0].getMessage()
        assert getattr(paused[0], "channel", None) == "hook"
        board = engine.dispatcher.pauses.board
        assert board.pauses == {"hook": 1}
        assert board.deferred == {"hook": CUSTOMERS - 2}
        assert board.until == {"hook": pause_end}

        # The pause ends: every message goes out, each once.
        clock.advance(RETRY_AFTER)
        mono.now += RETRY_AFTER
        await _drain(engine)
        assert sorted(_keys(receiver)) == sorted(f"delivery-{d.id}" for d in hooks)
        assert receiver.duplicates == 0
        assert len(receiver.requests) == CUSTOMERS + 2
        after = {d.id: d for d in await _deliveries(database, "hook")}
        assert all(d.state == "sent" for d in after.values())
        assert sorted(d.attempts for d in after.values()) == [1] * (CUSTOMERS - 2) + [2, 2]
        assert len(mail.sent) == CUSTOMERS
        assert not engine.dispatcher.pauses.active
    finally:
        await engine.aclose()


async def test_a_short_pause_is_waited_out_in_place(
    database: Database, receiver: WebhookReceiver, hook_url: str
) -> None:
    clock = FakeClock(START)
    mono = Monotonic()
    engine, mail = await _engine(database, clock, hook_url, mono)
    receiver.faults.push(Scripted(429, headers={"Retry-After": "0.5"}))
    try:
        await _drain(engine)
        assert mono.slept and all(0 < s <= 0.5 for s in mono.slept)
        assert engine.dispatcher.stats.deferred == 0
        hooks = await _deliveries(database, "hook")
        # All but the throttled one went out after the wait, in the same pass.
        assert sum(d.state == "sent" for d in hooks) == CUSTOMERS - 1
        assert len(receiver.accepted) == CUSTOMERS - 1
        clock.advance(timedelta(seconds=10))  # the throttled one's backoff
        mono.now += 10
        await _drain(engine)
        assert sorted(_keys(receiver)) == sorted(f"delivery-{d.id}" for d in hooks)
        assert receiver.duplicates == 0
        assert len(mail.sent) == CUSTOMERS
    finally:
        await engine.aclose()


async def test_a_stop_during_a_pause_loses_nothing(
    database: Database, receiver: WebhookReceiver, hook_url: str
) -> None:
    """The stop comes while messages wait out a short pause: they are not sent, and the
    wind-down gives them back uncounted; the next daemon sends each once."""
    clock = FakeClock(START)
    mono = Monotonic()
    stop = asyncio.Event()
    mono.on_sleep = stop
    engine, mail = await _engine(database, clock, hook_url, mono)
    receiver.faults.push(Scripted(429, headers={"Retry-After": "0.5"}))
    try:
        await engine.dispatcher.run_once(stop)
        assert stop.is_set()
        released = await engine.dispatcher.release()
        assert released > 0
        async with database.session() as session:
            states = (await session.execute(select(Delivery.state))).scalars().all()
        assert "sending" not in states
        hooks = await _deliveries(database, "hook")
        accepted = set(_keys(receiver))
        for delivery in hooks:
            if f"delivery-{delivery.id}" in accepted:
                assert delivery.state == "sent"
            elif delivery.last_error is None:
                assert delivery.attempts == 0  # given back: never handed over
    finally:
        await engine.aclose()

    mono2 = Monotonic()
    again = await Engine.create(
        _settings(hook_url),
        database,
        clock,
        {"mail": mail, "hook": OneConnection(_hook(hook_url))},
        owner="b",
    )
    again.dispatcher.pauses = ChannelPauses(monotonic=mono2, sleep=mono2.sleep, board=PauseBoard())
    try:
        clock.advance(timedelta(seconds=10))
        await _drain(again)
        hooks = await _deliveries(database, "hook")
        assert all(d.state == "sent" for d in hooks)
        assert sorted(_keys(receiver)) == sorted(f"delivery-{d.id}" for d in hooks)
        assert receiver.duplicates == 0
        assert len(mail.sent) == CUSTOMERS
    finally:
        await again.aclose()


def _hook(url: str) -> WebhookChannel:
    return WebhookChannel("hook", WebhookSettings(url=url, secret=SECRET, contact="email"))
