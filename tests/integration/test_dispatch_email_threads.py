"""What the dispatcher hands a channel so that an incident's messages make one conversation:
its thread (``incident-<id>-<declared>``) and the time the round's update was posted, the
same on every attempt. The email channel builds the Message-ID and the thread's References
from them, the push channels their grouping (unit and channel tests pin those; this pins
the hand-over)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from broadcaster.clock import FakeClock
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import Database
from broadcaster.store.migrate import upgrade_async
from channels.base import DeliveryError, Message, Receipt, Target, push_replaces, push_thread
from channels.email import EmailChannel, EmailSettings
from channels.memory import MemoryChannel
from tests.integration.test_broadcast_loop import START, add_customers, make_settings

THREAD = f"incident-1-{START:%Y%m%dT%H%M%S}"
"""Incident 1's thread: its id and when it was declared (the clock's start)."""

EMAIL = EmailChannel("mail", EmailSettings.model_validate({"from": "Ops <ops@example.org>"}))


class FlakyChannel(MemoryChannel):
    """Records every attempt; the first attempt at each of ``customers``' messages fails,
    retryably, as an SMTP timeout after the relay took the message would."""

    def __init__(self, *customers: str) -> None:
        super().__init__(name="mail", contact="email")
        self.attempted: list[tuple[Target, Message]] = []
        self.flaky = set(customers)

    async def send(self, target: Target, message: Message) -> Receipt:
        self.attempted.append((target, message))
        if target.customer_id in self.flaky:
            self.flaky.discard(target.customer_id)
            raise DeliveryError("SMTP connection failed: timed out", retryable=True)
        return await super().send(target, message)


async def _run(database: Database, clock: FakeClock, channel: MemoryChannel) -> Engine:
    await add_customers(database, clock, [("C1", ["component:rail"]), ("C2", ["component:rail"])])
    engine = await Engine.create(make_settings(), database, clock, {"mail": channel}, owner="a")
    await service.declare(
        database, clock, service.Declaration("Line 4", "minor", "Stopped.", components=["rail"])
    )
    await engine.process_due_rounds()
    await engine.dispatcher.run_once()
    return engine


async def test_a_retry_carries_the_thread_and_posted_time_of_its_first_attempt(
    database: Database,
) -> None:
    """The retried copy is the same email (one Message-ID), although it is composed anew at
    a later time by the daemon's clock."""
    clock = FakeClock(START)
    channel = FlakyChannel("C1")
    engine = await _run(database, clock, channel)
    clock.advance(timedelta(minutes=5))
    await engine.dispatcher.run_once()

    to_c1 = [(t, m) for t, m in channel.attempted if t.customer_id == "C1"]
    assert len(to_c1) == 2
    (target, first), (_, retried) = to_c1
    assert first.created_at != retried.created_at
    assert first.thread == retried.thread == THREAD
    assert first.posted_at == retried.posted_at is not None
    assert EMAIL.build(target, first).message_id == EMAIL.build(target, retried).message_id


async def test_an_incidents_messages_share_a_thread_and_group_on_a_phone(
    database: Database,
) -> None:
    clock = FakeClock(START)
    channel = MemoryChannel(name="mail", contact="email")
    engine = await _run(database, clock, channel)
    clock.advance(timedelta(minutes=20))
    await service.resolve(database, clock, 1, service.UpdateRequest("Trains run again."))
    await engine.process_due_rounds()
    await engine.dispatcher.run_once()

    to_c1 = [sent for sent in channel.sent if sent.target.customer_id == "C1"]
    assert [sent.message.headers["X-Broadcaster-Kind"] for sent in to_c1] == [
        "first",
        "resolution",
    ]
    built = [EMAIL.build(sent.target, sent.message).parse() for sent in to_c1]
    assert len({str(email["References"]) for email in built}) == 1
    assert len({str(email["Message-ID"]) for email in built}) == 2
    first, resolution = (sent.message for sent in to_c1)
    assert first.posted_at != resolution.posted_at
    assert {push_thread(first), push_thread(resolution)} == {THREAD}
    assert (push_replaces(first), push_replaces(resolution)) == (None, f"{THREAD}-wait")
    to_c2 = next(sent for sent in channel.sent if sent.target.customer_id == "C2")
    assert str(EMAIL.build(to_c2.target, to_c2.message).parse()["References"]) != str(
        built[0]["References"]
    )


async def test_a_store_begun_again_does_not_thread_a_new_incident_under_an_old_one(
    database: Database, tmp_path: Path
) -> None:
    """Ids start from 1 again in a new store: incident 1 of the new store, declared later,
    is another conversation for the same customer (References, push group), not the old
    incident 1's."""
    old = MemoryChannel(name="mail", contact="email")
    await _run(database, FakeClock(START), old)
    url = f"sqlite+aiosqlite:///{tmp_path / 'again.db'}"
    await upgrade_async(url)
    again = Database(url)
    try:
        new = MemoryChannel(name="mail", contact="email")
        await _run(again, FakeClock(START + timedelta(days=30)), new)
    finally:
        await again.dispose()
    (before,) = [sent for sent in old.sent if sent.target.customer_id == "C1"]
    (after,) = [sent for sent in new.sent if sent.target.customer_id == "C1"]
    assert before.message.headers["X-Broadcaster-Round"] == "1/1"
    assert after.message.headers["X-Broadcaster-Round"] == "1/1"
    references = [
        str(EMAIL.build(sent.target, sent.message).parse()["References"])
        for sent in (before, after)
    ]
    assert references[0] != references[1]
    assert push_thread(before.message) != push_thread(after.message)
