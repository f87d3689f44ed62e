"""A provider's "too many requests" for the sender pauses the channel, on the real dispatcher;
one receiver's, among several a channel reaches, pauses that receiver's messages only.

The webhook channel (one fixed receiver, so its 429 is the channel's rate) posts over real
HTTP to a local receiver that answers the first requests 429 with a ``Retry-After``; a
second channel (e-mail, in memory) goes on beside it. Then the channels that reach several
receivers: a webhook to each customer's own URL, on two local receivers, and Web Push to two
local push services; one of the two answers 429, and only its messages wait. The pause runs
on a fake monotonic clock, moved with the daemon's fake clock: no real waiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import insert, select

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.devsmtp import SmtpSink
from broadcaster.dispatch.pause import DEFAULT_PAUSE, WHOLE, ChannelPauses, PauseBoard
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import ContactPoint, Database, Delivery
from channels import webpush
from channels.base import Channel, Message, Receipt, Target, scope_of
from channels.email import EmailChannel, EmailSettings
from channels.memory import MemoryChannel
from channels.webhook import WebhookChannel, WebhookSettings
from channels.webpush import WebPushChannel, WebPushSettings
from tests.fakes.control import Scripted
from tests.fakes.http import serve
from tests.fakes.webhook import WebhookReceiver
from tests.fakes.webpush import PushService
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
    """A channel with one connection (sends one after another), declared as such: the
    dispatcher hands it two messages at a time, so that a batch's later messages are still
    claimed and not yet handed over when the first answer comes. Its scopes are the inner
    channel's."""

    concurrency = 1

    def __init__(self, inner: Channel) -> None:
        self.inner = inner
        self.name = inner.name
        self.contact = inner.contact
        self._lock = asyncio.Lock()

    def pause_scope(self, address: str) -> str | None:
        return scope_of(self.inner, address)

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
        # Given back after their claim (deferred), or left pending by a claim (held).
        assert stats.pauses == 1 and stats.deferred + stats.held == CUSTOMERS - 2
        assert stats.sent == CUSTOMERS and stats.retried == 2

        # One warning for the pause, not one per message held.
        paused = [r for r in caplog.records if "paused" in r.getMessage()]
        assert len(paused) == 1
        assert paused[0].levelno == logging.WARNING
        assert "channel hook paused for 30.0 s" in paused[0].getMessage()
        assert getattr(paused[0], "channel", None) == "hook"
        board = engine.dispatcher.pauses.board
        assert board.pauses == {("hook", WHOLE): 1}
        assert board.deferred == {("hook", WHOLE): CUSTOMERS - 2}
        assert board.until == {("hook", WHOLE): pause_end}

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


async def test_a_relay_that_refuses_our_rate_pauses_the_email_channel(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """E-mail over SMTP to a local relay that refuses the first MAIL for our rate (Postfix's
    "too much mail from"): the channel pauses for the default 5 s (SMTP says no length),
    the other messages wait uncharged instead of each spending an attempt on the refusal,
    and all go out, each once, when it ends."""
    clock = FakeClock(START)
    mono = Monotonic()
    await add_customers(
        database, clock, [(f"C{i:02d}", ["component:rail"]) for i in range(CUSTOMERS)]
    )
    sink = SmtpSink(mail_refusals=["450 4.7.1 Error: too much mail from 127.0.0.1"]).start()
    try:
        mail = EmailChannel(
            "mail",
            EmailSettings.model_validate(
                {"port": sink.port, "security": "none", "pool_size": 1, "timeout": 5.0}
            ),
        )
        hook = MemoryChannel(name="hook")
        settings = _settings("http://127.0.0.1:9/in")
        engine = await Engine.create(
            settings, database, clock, {"mail": mail, "hook": hook}, owner="a"
        )
        engine.dispatcher.pauses = ChannelPauses(
            monotonic=mono, sleep=mono.sleep, board=PauseBoard()
        )
        await service.declare(
            database, clock, service.Declaration("t", "minor", "m", components=["rail"])
        )
        await engine.process_due_rounds()
        try:
            with caplog.at_level(logging.WARNING, logger="broadcaster.dispatch"):
                await _drain(engine)

            assert len(hook.sent) == CUSTOMERS  # the other channel went on
            mails = await _deliveries(database, "mail")
            # The dispatcher hands a channel of one connection two messages at a time: the
            # one already waiting for the connection when the refusal came is sent.
            early = [d for d in mails if d.state == "sent"]
            assert len(early) <= 1 and len(sink.messages) == len(early)
            [throttled] = [d for d in mails if d.state == "pending" and d.attempts == 1]
            assert "too much mail" in (throttled.last_error or "")
            pause_end = START + timedelta(seconds=DEFAULT_PAUSE)
            held = [d for d in mails if d.attempts == 0]
            assert len(held) == CUSTOMERS - 1 - len(early)
            assert all(d.next_attempt_at == pause_end and d.last_error is None for d in held)
            paused = [r for r in caplog.records if "paused" in r.getMessage()]
            assert len(paused) == 1
            assert "channel mail paused for 5.0 s" in paused[0].getMessage()
            assert engine.dispatcher.pauses.board.pauses == {("mail", WHOLE): 1}

            clock.advance(timedelta(seconds=10))  # the pause, and the throttled one's backoff
            mono.now += 10
            await _drain(engine)
            after = await _deliveries(database, "mail")
            assert all(d.state == "sent" for d in after)
            assert sorted(d.attempts for d in after) == [1] * (CUSTOMERS - 1) + [2]
            received = sink.wait_for(CUSTOMERS, 5.0)
            assert sorted(m.recipients[0] for m in received) == sorted(
                f"c{i:02d}@example.org" for i in range(CUSTOMERS)
            )
        finally:
            await engine.aclose()
    finally:
        sink.stop()


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


# --- One receiver among several ---------------------------------------------------------------


async def _scoped_engine(
    database: Database,
    clock: FakeClock,
    mono: Monotonic,
    name: str,
    channel: Channel,
    addresses: list[str],
) -> Engine:
    """An engine whose one channel ``name`` reaches customer ``C0i`` at ``addresses[i]``
    (contact points of the channel's kind), with the incident declared and its round
    written out."""
    await add_customers(
        database, clock, [(f"C{i:02d}", ["component:rail"]) for i in range(len(addresses))]
    )
    async with database.session() as session, session.begin():
        for i, address in enumerate(addresses):
            await session.execute(
                insert(ContactPoint).values(
                    customer_id=f"C{i:02d}",
                    kind=channel.contact,
                    address=address,
                    opted_out=False,
                    disabled=False,
                    updated_at=clock.now(),
                )
            )
    settings = Settings.model_validate(
        {
            "schedule": {"cadence": {"minor": "2h"}, "audience_batch": 5},
            "delivery": {
                "channels": [name],
                "batch_size": 8,
                "max_attempts": 5,
                "backoff": {"initial": "10s", "maximum": "1m", "jitter": 0},
            },
            "channels": {name: {"type": "console", "contact": channel.contact}},
        }
    )
    engine = await Engine.create(
        settings, database, clock, {name: OneConnection(channel)}, owner="a"
    )
    engine.dispatcher.pauses = ChannelPauses(monotonic=mono, sleep=mono.sleep, board=PauseBoard())
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    return engine


def _split(deliveries: list[Delivery], origin: str) -> tuple[list[Delivery], list[Delivery]]:
    """The deliveries to ``origin``'s receiver, and the others."""
    to = [d for d in deliveries if f"{origin}/" in d.address]
    return to, [d for d in deliveries if f"{origin}/" not in d.address]


async def _only_the_throttled_receiver_waits(
    database: Database,
    engine: Engine,
    clock: FakeClock,
    mono: Monotonic,
    channel: str,
    refusing: str,
    accepted: dict[str, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The round went out with ``refusing``'s first answer a 429 (Retry-After
    :data:`RETRY_AFTER`): the other receiver's messages are all sent at once, ``refusing``'s
    wait for the pause's end, not charged; ``accepted``: per origin, how many it took."""
    deliveries = await _deliveries(database, channel)
    assert len(deliveries) == CUSTOMERS
    waiting, others = _split(deliveries, refusing)
    assert len(waiting) == len(others) == CUSTOMERS // 2
    # The other receiver's messages went out at once, each once.
    assert all(d.state == "sent" and d.attempts == 1 for d in others)
    assert accepted == {refusing: 0, **{o: CUSTOMERS // 2 for o in accepted if o != refusing}}
    # The refusing receiver's: the throttled one retried as any, its attempt counted; the
    # rest not handed over, nothing charged, due at the pause's end.
    assert all(d.state == "pending" and d.lease_owner is None for d in waiting)
    throttled = [d for d in waiting if d.attempts == 1]
    held = [d for d in waiting if d.attempts == 0]
    assert len(throttled) == 1 and len(held) == CUSTOMERS // 2 - 1
    assert "429" in (throttled[0].last_error or "")
    assert throttled[0].next_attempt_at >= START + timedelta(seconds=RETRY_AFTER)
    pause_end = START + timedelta(seconds=RETRY_AFTER)
    assert all(d.next_attempt_at == pause_end and d.last_error is None for d in held)
    stats = engine.dispatcher.stats
    assert (stats.pauses, stats.deferred) == (1, CUSTOMERS // 2 - 1)
    assert (stats.sent, stats.retried) == (CUSTOMERS // 2, 1)
    # One warning, naming the channel and the receiver's origin.
    paused = [r for r in caplog.records if "paused" in r.getMessage()]
    assert len(paused) == 1 and paused[0].levelno == logging.WARNING
    assert f"channel {channel} paused for 30.0 s for {refusing}" in paused[0].getMessage()
    assert getattr(paused[0], "scope", None) == refusing
    board = engine.dispatcher.pauses.board
    assert board.pauses == {(channel, refusing): 1}
    assert board.deferred == {(channel, refusing): CUSTOMERS // 2 - 1}
    assert board.until == {(channel, refusing): pause_end}
    assert engine.dispatcher.pauses.paused() == {}  # claims hold nothing back for a scope


async def _after_the_pause_each_goes_once(
    database: Database, engine: Engine, clock: FakeClock, mono: Monotonic, channel: str
) -> list[Delivery]:
    clock.advance(RETRY_AFTER)
    mono.now += RETRY_AFTER
    await _drain(engine)
    after = await _deliveries(database, channel)
    assert all(d.state == "sent" for d in after)
    assert sorted(d.attempts for d in after) == [1] * (CUSTOMERS - 1) + [2]
    assert not engine.dispatcher.pauses.active
    return after


async def test_a_customers_host_that_throttles_holds_its_own_webhooks_only(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Each customer's own URL, on two hosts (two local receivers): the one answering 429
    holds the webhooks to it; the other customers' go out at once."""
    clock = FakeClock(START)
    mono = Monotonic()
    receivers = [WebhookReceiver(SECRET), WebhookReceiver(SECRET)]
    with ExitStack() as stack:
        urls = [stack.enter_context(serve(receiver.app)) for receiver in receivers]
        addresses = [f"{urls[i % 2]}/customers/C{i:02d}?token=t{i}" for i in range(CUSTOMERS)]
        hook = WebhookChannel(
            "hook", WebhookSettings(secret=SECRET, contact="webhook", timeout=5.0)
        )
        engine = await _scoped_engine(database, clock, mono, "hook", hook, addresses)
        refusing, other = receivers
        refusing.faults.push(Scripted(429, headers={"Retry-After": str(RETRY_AFTER)}))
        try:
            with caplog.at_level(logging.WARNING, logger="broadcaster.dispatch"):
                await _drain(engine)  # the whole round, within the pause
            await _only_the_throttled_receiver_waits(
                database,
                engine,
                clock,
                mono,
                "hook",
                urls[0],
                {url: len(r.accepted) for url, r in zip(urls, receivers, strict=True)},
                caplog,
            )
            assert [request.status for request in refusing.requests] == [429]

            after = await _after_the_pause_each_goes_once(database, engine, clock, mono, "hook")
            for url, receiver in zip(urls, receivers, strict=True):
                to, _ = _split(after, url)
                assert sorted(_keys(receiver)) == sorted(f"delivery-{d.id}" for d in to)
                assert receiver.duplicates == 0
            assert len(refusing.requests) == CUSTOMERS // 2 + 1  # the 429, then each once
            assert len(other.requests) == CUSTOMERS // 2
        finally:
            await engine.aclose()


async def test_a_push_service_that_throttles_holds_its_own_notifications_only(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Web Push to two push services (as Chrome's and Firefox's): the one answering 429
    holds the notifications to it; the other's subscribers get theirs at once."""
    clock = FakeClock(START)
    mono = Monotonic()
    vapid = ec.generate_private_key(ec.SECP256R1())
    pem = vapid.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    services = [PushService(), PushService()]
    with ExitStack() as stack:
        urls = [stack.enter_context(serve(s.app)) for s in services]
        key = webpush.application_server_key(vapid)
        subscribers = [services[i % 2].subscribe(urls[i % 2], key) for i in range(CUSTOMERS)]
        push = WebPushChannel(
            "push",
            WebPushSettings(
                vapid_private_key=pem,
                vapid_subject="mailto:ops@example.com",
                push_hosts=["127.0.0.1"],
                allow_http=True,
                timeout=5.0,
            ),
        )
        addresses = [subscriber.address for subscriber in subscribers]
        engine = await _scoped_engine(database, clock, mono, "push", push, addresses)
        refusing, other = services
        refusing.faults.push(Scripted(429, headers={"Retry-After": str(RETRY_AFTER)}))
        try:
            with caplog.at_level(logging.WARNING, logger="broadcaster.dispatch"):
                await _drain(engine)
            await _only_the_throttled_receiver_waits(
                database,
                engine,
                clock,
                mono,
                "push",
                urls[0],
                {url: len(s.accepted) for url, s in zip(urls, services, strict=True)},
                caplog,
            )
            assert [request.status for request in refusing.requests] == [429]

            await _after_the_pause_each_goes_once(database, engine, clock, mono, "push")
            for i, subscriber in enumerate(subscribers):
                sub = subscriber.endpoint.rsplit("/", 1)[1]
                got = [r for r in services[i % 2].accepted if r.subscription == sub]
                assert len(got) == 1  # each subscriber's notification once
                delivery = json.loads(subscriber.decrypt(got[0].body))["delivery"]
                assert delivery.startswith("delivery-")
            assert len(refusing.requests) == CUSTOMERS // 2 + 1
            assert len(other.requests) == CUSTOMERS // 2
        finally:
            await engine.aclose()
