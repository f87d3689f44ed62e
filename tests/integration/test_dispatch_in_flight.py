"""A batch in flight: a channel that declares its concurrency (a small connection pool)
gets its sends prepared just ahead of its connections, not a whole batch at once; any other
channel gets the batch's messages once all of them are made, and a send that ends early
holds none of the others back; the deliveries of a batch that is still sending keep
their leases, however slow the channel, and what each send may take is bounded; outcomes
are written as their sends end while the rest still sends; and a stopping batch hands
nothing more to its channel."""

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
from broadcaster.dispatch.worker import LEASES_KEPT, RENEWALS_PER_LEASE
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


@dataclass
class SteppedChannel(MemoryChannel):
    """Each send waits for a step the test gives (``steps.release()``), then goes out."""

    concurrency: int | None = None
    steps: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(0))
    entered: int = 0

    async def send(self, target: Target, message: Message) -> Receipt:
        self.entered += 1
        await self.steps.acquire()
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

    def message(self, request: Any, idempotency_key: str, **more: Any) -> Message:
        self.made += 1
        if idempotency_key == self._fail_for:
            raise RenderError("the template failed for this customer")
        return self._renderer.message(request, idempotency_key=idempotency_key, **more)


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


async def _states(database: Database) -> list[tuple[str, str | None, int]]:
    async with database.session() as session:
        query = select(Delivery.state, Delivery.lease_owner, Delivery.attempts)
        return sorted(
            (state, owner, attempts) for state, owner, attempts in await session.execute(query)
        )


async def test_a_batch_still_sending_keeps_its_leases_and_nobody_reclaims_it(
    database: Database,
) -> None:
    """A relay far slower than the batch's leases (one connection, one message every two
    thirds of a lease): one message sent and not yet written, two in the channel, one
    waiting for the gate. Their leases are kept past what used to be a batch's cap (ten
    leases' time), and a rival dispatcher claims none of them; each goes out once."""
    clock = FakeClock(START)
    channel = SteppedChannel(name="mail", concurrency=1)
    engine = await _round_of(database, clock, channel)
    engine.dispatcher.lease_renewal = timedelta(milliseconds=20)
    engine.dispatcher.record_after = 3600  # nothing written before the batch ends
    lease = engine.settings.delivery.lease
    rival = await Engine.create(
        make_settings(), database, clock, {"mail": MemoryChannel(name="mail")}, owner="b"
    )
    batch = asyncio.create_task(engine.dispatcher.run_once())
    channel.steps.release()  # the first goes out

    async def one_out() -> bool:
        return len(channel.sent) == 1 and channel.entered == 1 + SENDS_AHEAD

    await _until(one_out, "the first send")
    for _ in range(LEASES_KEPT * RENEWALS_PER_LEASE + 6):  # past the old cap of 30 renewals
        clock.advance(lease * 2 / 3)

        async def renewed() -> bool:
            earliest = await _earliest_lease(database)
            return earliest is not None and earliest >= clock.now() + lease

        await _until(renewed, "a renewal")
        assert await rival.dispatcher.claim(10) == []
    for _ in range(3):
        channel.steps.release()
    assert await batch == 4
    assert len(channel.sent) == 4
    assert await _states(database) == [("sent", None, 1)] * 4
    assert engine.dispatcher.stats.spent == engine.dispatcher.stats.reclaimed == 0
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("leases ")]


async def test_outcomes_are_written_as_their_sends_end_while_the_batch_still_sends(
    database: Database,
) -> None:
    """A message that went out is recorded within ``record_after`` while the rest of its
    batch still waits on the relay: a crash then repeats what was on the wire, not what
    had been sent minutes before."""
    clock = FakeClock(START)
    channel = SteppedChannel(name="mail", concurrency=1)
    engine = await _round_of(database, clock, channel)
    engine.dispatcher.record_after = 0.02
    batch = asyncio.create_task(engine.dispatcher.run_once())
    channel.steps.release()

    async def first_written() -> bool:
        return [state for state, _, _ in await _states(database)] == ["sending"] * 3 + ["sent"]

    await _until(first_written, "the first outcome written")
    channel.steps.release()

    async def second_written() -> bool:
        return [state for state, _, _ in await _states(database)] == ["sending"] * 2 + ["sent"] * 2

    await _until(second_written, "the second outcome written")
    for _ in range(2):
        channel.steps.release()
    assert await batch == 4
    assert await _states(database) == [("sent", None, 1)] * 4
    assert engine.dispatcher.stats.sent == 4
    assert engine.dispatcher.stats.by_channel == {"mail": 4}


async def test_a_failed_write_of_some_outcomes_is_made_again_at_the_end_of_the_batch(
    database: Database, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(START)
    channel = SteppedChannel(name="mail", concurrency=1)
    engine = await _round_of(database, clock, channel)
    dispatcher = engine.dispatcher
    dispatcher.record_after = 0.02
    record = dispatcher._record
    written: list[int] = []

    async def down_once(outcomes: list[Any]) -> Any:
        written.append(len(outcomes))
        if len(written) == 1:
            raise OSError("the store went away")  # after its retries, as _record raises
        return await record(outcomes)

    monkeypatch.setattr(dispatcher, "_record", down_once)
    with caplog.at_level(logging.WARNING, logger="broadcaster.dispatch"):
        batch = asyncio.create_task(dispatcher.run_once())
        channel.steps.release()

        async def tried() -> bool:
            return len(written) == 1

        await _until(tried, "a write while sending")
        for _ in range(3):
            channel.steps.release()
        assert await batch == 4
    assert written[0] == 1 and sum(written[1:]) == 4  # the failed one's outcome again
    assert await _states(database) == [("sent", None, 1)] * 4
    assert dispatcher.stats.sent == 4
    assert any("written at its end" in record.getMessage() for record in caplog.records)


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


async def test_a_send_that_never_returns_is_given_up_and_tried_again_later(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Each send is bounded (``send_bound``, ten leases by default), not the batch: one
    that outlasts it is cancelled and recorded as a retryable failure, with its backoff,
    and the worker goes on."""
    clock = FakeClock(START)
    channel = HeldChannel(name="mail")  # a send that never returns
    engine = await _round_of(database, clock, channel)
    dispatcher = engine.dispatcher
    assert dispatcher.send_bound == engine.settings.delivery.lease * LEASES_KEPT
    dispatcher.lease_renewal = timedelta(milliseconds=10)
    dispatcher.send_bound = timedelta(milliseconds=50)
    with caplog.at_level(logging.WARNING, logger="broadcaster.dispatch"):
        async with asyncio.timeout(10):
            assert await dispatcher.run_once() == 4
    assert channel.entered == 4 and channel.sent == []
    assert dispatcher.stats.retried == 4 and dispatcher.stats.sent == 0
    async with database.session() as session:
        rows = (
            await session.execute(
                select(
                    Delivery.state, Delivery.attempts, Delivery.next_attempt_at, Delivery.last_error
                )
            )
        ).all()
    assert {(state, attempts) for state, attempts, _, _ in rows} == {("pending", 1)}
    assert all(due > clock.now() for _, _, due, _ in rows)  # after the backoff
    assert all("did not answer within" in str(error) for _, _, _, error in rows)
    assert any("giving it up" in record.getMessage() for record in caplog.records)
    channel.go.set()
    clock.advance(timedelta(minutes=1))
    assert await dispatcher.run_once() == 4
    assert len(channel.sent) == 4


@dataclass
class DeafChannel(MemoryChannel):
    """A send that ignores being cancelled (once: the test's end cancels it again), and
    ends only when ``go`` is set."""

    go: asyncio.Event = field(default_factory=asyncio.Event)
    ignored: int = 0

    async def send(self, target: Target, message: Message) -> Receipt:
        try:
            await self.go.wait()
        except asyncio.CancelledError:
            self.ignored += 1
            await self.go.wait()
        return await super().send(target, message)


async def test_a_send_that_does_not_end_when_given_up_has_its_lease_left_to_expire(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    channel = DeafChannel(name="mail")
    engine = await _round_of(database, clock, channel)
    dispatcher = engine.dispatcher
    dispatcher.lease_renewal = timedelta(milliseconds=10)
    dispatcher.send_bound = timedelta(milliseconds=50)
    lease = engine.settings.delivery.lease
    batch = asyncio.create_task(dispatcher.run_once())
    try:
        with caplog.at_level(logging.WARNING, logger="broadcaster.dispatch"):

            async def gave_up() -> bool:
                messages = [record.getMessage() for record in caplog.records]
                return sum("left to expire" in message for message in messages) == 4

            await _until(gave_up, "the leases left to expire")
        assert channel.ignored == 4
        clock.advance(lease * 2)
        rival = await Engine.create(
            make_settings(), database, clock, {"mail": MemoryChannel(name="mail")}, owner="b"
        )
        assert len(await rival.dispatcher.claim(10)) == 4  # left to expire, and claimed again
    finally:
        channel.go.set()
        assert await batch == 4


@pytest.mark.parametrize("gated", [True, False])
async def test_a_stopping_batch_hands_nothing_more_over_and_the_rest_is_given_back(
    database: Database, gated: bool
) -> None:
    """Once ``stop`` is set, the sends already in the channel finish and are recorded;
    the others do not reach it, stay claimed, and :meth:`release` gives them back as
    they were (their attempt not counted); a later batch sends them, each once."""
    clock = FakeClock(START)
    channel = SteppedChannel(name="mail", concurrency=1 if gated else None)
    engine = await _round_of(database, clock, channel)
    dispatcher = engine.dispatcher
    stop = asyncio.Event()
    if gated:  # a stop while two are in the channel (one connection) and two wait
        batch = asyncio.create_task(dispatcher.run_once(stop))

        async def two_in() -> bool:
            return channel.entered == SENDS_AHEAD

        await _until(two_in, "the first sends")
        stop.set()
    else:  # the stop came while the batch was being claimed and made
        claim = dispatcher._claim

        async def claimed_as_the_stop_came(limit: int) -> Any:
            taken = await claim(limit)
            stop.set()
            return taken

        dispatcher._claim = claimed_as_the_stop_came  # type: ignore[method-assign]
        batch = asyncio.create_task(dispatcher.run_once(stop))
    for _ in range(4):
        channel.steps.release()
    async with asyncio.timeout(10):
        assert await batch == 4
    handed = SENDS_AHEAD if gated else 0
    assert channel.entered == len(channel.sent) == handed
    assert await _states(database) == sorted(
        [("sending", "a", 1)] * (4 - handed) + [("sent", None, 1)] * handed
    )
    assert await dispatcher.release() == 4 - handed
    assert await _states(database) == sorted(
        [("pending", None, 0)] * (4 - handed) + [("sent", None, 1)] * handed
    )
    for _ in range(4):
        channel.steps.release()
    if not gated:
        dispatcher._claim = claim  # type: ignore[method-assign]
    clock.advance(timedelta(seconds=1))  # PostgreSQL: behind the floor, seen at a full look
    assert await dispatcher.run_once() == 4 - handed
    assert len(channel.sent) == 4
    assert len({sent.message.idempotency_key for sent in channel.sent}) == 4
