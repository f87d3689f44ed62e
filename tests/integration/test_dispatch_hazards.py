"""What must not stop dispatch, nor make it send a message again and again: an outcome the
store refuses, a lease that expires at every attempt, a clock set back, a store that fails
between a claim and its failover, a long host name, a daemon's host that dies inside a
transaction."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DataError, OperationalError

from broadcaster.clock import FakeClock, RealClock
from broadcaster.config.settings import Settings
from broadcaster.customers.importer import REMOVED, import_customers
from broadcaster.daemon import Daemon
from broadcaster.dispatch import outcomes as outcomes_module
from broadcaster.dispatch import worker
from broadcaster.dispatch.outcomes import Job, Outcome, Recorded
from broadcaster.engine import LEASE_OWNER_LENGTH, Engine, make_owner
from broadcaster.incidents import service
from broadcaster.store import ContactPoint, Database, Delivery, DeliveryEvent
from broadcaster.store.db import KEEPALIVE
from broadcaster.store.migrate import upgrade_async
from broadcaster.store.models import PROVIDER_ID_LENGTH
from channels.base import DeliveryError, Message, Receipt, Target
from channels.memory import MemoryChannel
from tests.integration import test_dispatch_routing as routing
from tests.integration.test_broadcast_loop import START, add_customers, make_settings
from tests.reliability import common as reliability


class IdChannel(MemoryChannel):
    """Records each message and answers with the provider id ``ids`` gives its customer."""

    def __init__(self, ids: dict[str, str]) -> None:
        super().__init__(name="mail")
        self.ids = ids

    async def send(self, target: Target, message: Message) -> Receipt:
        await super().send(target, message)
        return Receipt(provider_message_id=self.ids.get(target.customer_id, "ok"))


async def _declared(
    database: Database, clock: Any, channel: MemoryChannel, **delivery: Any
) -> Engine:
    await add_customers(database, clock, [(f"C{i}", ["component:rail"]) for i in range(3)])
    settings = make_settings()
    settings = settings.model_copy(
        update={"delivery": settings.delivery.model_copy(update=delivery)}
    )
    engine = await Engine.create(settings, database, clock, {"mail": channel}, owner="a")
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    return engine


async def _deliveries(database: Database) -> dict[str, tuple[Any, ...]]:
    async with database.session() as session:
        rows = await session.execute(
            select(
                Delivery.customer_id,
                Delivery.state,
                Delivery.attempts,
                Delivery.provider_message_id,
                Delivery.last_error,
            )
        )
        return {row[0]: tuple(row[1:]) for row in rows}


def _sends(channel: MemoryChannel) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sent in channel.sent:
        counts[sent.target.customer_id] = counts.get(sent.target.customer_id, 0) + 1
    return counts


async def test_a_provider_id_longer_than_the_store_keeps_is_cut_not_refused(
    database: Database,
) -> None:
    """A Web Push service answers with its message's URL, of any length: kept as far as it
    fits. Uncut, PostgreSQL refused the batch's outcomes, and the whole batch went out again
    at every lease."""
    clock = FakeClock(START)
    long_id = "https://push.example/m/" + "x" * 400
    channel = IdChannel({"C1": long_id})
    engine = await _declared(database, clock, channel)

    assert await engine.dispatcher.run_once() == 3
    rows = await _deliveries(database)
    assert {c: row[:2] for c, row in rows.items()} == {f"C{i}": ("sent", 1) for i in range(3)}
    assert rows["C1"][2] == long_id[:PROVIDER_ID_LENGTH]
    clock.advance(timedelta(minutes=5))  # leases long gone: nothing is due again
    assert await engine.dispatcher.run_once() == 0
    assert _sends(channel) == {"C0": 1, "C1": 1, "C2": 1}


async def test_an_outcome_the_store_refuses_is_kept_without_what_it_refused(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's write refused (not the store away: tried again would be refused again),
    each outcome is written alone; the one refused again is written without its provider
    id. Every message went out once and is recorded as sent."""
    clock = FakeClock(START)
    channel = IdChannel({"C1": "poison"})
    engine = await _declared(database, clock, channel)
    real = outcomes_module.record_outcomes
    batches: list[int] = []

    async def refusing(
        database: Database, owner: str, outcomes: list[Outcome], *a: Any, **k: Any
    ) -> Recorded:
        batches.append(len(outcomes))
        if any(o.receipt and o.receipt.provider_message_id == "poison" for o in outcomes):
            raise DataError("UPDATE deliveries", {}, Exception("value too long"))
        return await real(database, owner, outcomes, *a, **k)

    monkeypatch.setattr(worker, "record_outcomes", refusing)
    assert await engine.dispatcher.run_once() == 3

    assert batches == [3, 1, 1, 1, 1]  # once whole, no retry; then one by one; C1 plain
    rows = await _deliveries(database)
    assert {c: row[:3] for c, row in rows.items()} == {
        "C0": ("sent", 1, "ok"),
        "C1": ("sent", 1, None),
        "C2": ("sent", 1, "ok"),
    }
    assert engine.dispatcher.stats.sent == 3
    clock.advance(timedelta(minutes=5))
    assert await engine.dispatcher.run_once() == 0
    assert _sends(channel) == {"C0": 1, "C1": 1, "C2": 1}


async def test_a_delivery_whose_lease_expires_at_every_attempt_is_failed_at_max_attempts(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing recorded at any attempt (the store refuses every outcome): each claim after
    a lease ran out sends again, up to ``max_attempts`` claims; then the delivery fails
    instead of going out for ever."""
    clock = FakeClock(START)
    channel = MemoryChannel(name="mail")
    engine = await _declared(database, clock, channel, max_attempts=3)

    async def refused(*_a: Any, **_k: Any) -> None:
        raise DataError("UPDATE deliveries", {}, Exception("refused"))

    monkeypatch.setattr(worker, "record_outcomes", refused)
    handled = []
    for _ in range(5):
        handled.append(await engine.dispatcher.run_once())
        clock.advance(timedelta(seconds=61))  # past the 60 s lease
    assert handled == [3, 3, 3, 3, 0]  # three sends, then the three given up

    rows = await _deliveries(database)
    assert {row[:2] for row in rows.values()} == {("failed", 3)}
    assert all("lease expired after 3 attempts" in row[3] for row in rows.values())
    assert _sends(channel) == {"C0": 3, "C1": 3, "C2": 3}
    assert engine.dispatcher.stats.spent == 3
    async with database.session() as session:
        events = (
            await session.execute(
                select(DeliveryEvent.state).where(DeliveryEvent.state == "failed")
            )
        ).all()
    assert len(events) == 3


class SteppedClock:
    """A host's clock that an operator can set back."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


async def test_a_clock_set_back_does_not_hold_up_what_is_written_after(
    database: Database,
) -> None:
    """A host whose clock ran ten minutes ahead is corrected. What is written now is due
    at the corrected time, behind the dispatcher's floor and its next full look, both set
    by the old time: it is claimed at once all the same."""
    clock = SteppedClock(START + timedelta(minutes=10))
    await add_customers(
        database,
        FakeClock(clock.at),
        [(f"C{i}", ["component:rail", "component:bus"]) for i in range(3)],
    )
    channel = MemoryChannel(name="mail")
    engine = await Engine.create(make_settings(), database, clock, {"mail": channel}, owner="a")
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    assert await engine.dispatch_all() == 3

    clock.at = START  # set back ten minutes
    await service.declare(
        database, clock, service.Declaration("t2", "major", "m", components=["bus"])
    )
    await engine.process_due_rounds()
    clock.at = START + timedelta(seconds=1)
    assert await engine.dispatcher.run_once() == 3
    assert len(channel.sent) == 6

    # A claim that began before the clock went back (another worker's) sets the floor
    # after the reset, from the old time: it is no floor for now.
    await service.declare(
        database, clock, service.Declaration("t3", "major", "m", components=["bus"])
    )
    await engine.process_due_rounds()
    engine.dispatcher._floor = (START + timedelta(minutes=10), 10**9)
    engine.dispatcher._look_for_expired_at = clock.at + timedelta(hours=1)  # no full look
    clock.at = START + timedelta(seconds=2)
    assert await engine.dispatcher.run_once() == 3
    assert len(channel.sent) == 9


async def test_a_cancelled_deliverys_failover_commits_with_its_cancellation(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery whose address was disabled after its round was written is cancelled at
    the claim and goes to the customer's next channel. Were the two in separate
    transactions, a store failing between them would lose the round for the customer."""
    clock = FakeClock(START)
    await routing.customer(database, "c0042")
    sms = MemoryChannel(name="sms", contact="sms")
    mail = MemoryChannel(name="mail", contact="email")
    engine = await Engine.create(routing.settings(), database, clock, {"sms": sms, "mail": mail})
    await routing.declare(database, clock)
    await engine.process_due_rounds()
    async with database.session() as session, session.begin():
        await session.execute(
            update(ContactPoint).where(ContactPoint.kind == "sms").values(disabled=True)
        )
    real = outcomes_module.create_follow
    calls = 0

    def failing_once(*args: Any, **kwargs: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationalError("INSERT INTO deliveries", {}, Exception("connection reset"))
        return real(*args, **kwargs)

    monkeypatch.setattr(worker, "create_follow", failing_once)
    with pytest.raises(OperationalError):
        await engine.dispatcher.run_once()
    async with database.session() as session:
        states = (await session.execute(select(Delivery.channel, Delivery.state))).all()
    assert states == [("sms", "pending")]  # the cancellation rolled back with it

    await engine.dispatch_all()
    async with database.session() as session:
        states = (
            await session.execute(select(Delivery.channel, Delivery.state).order_by(Delivery.id))
        ).all()
    assert states == [("sms", "cancelled"), ("mail", "sent")]
    assert (len(sms.sent), len(mail.sent)) == (0, 1)


def test_an_outcome_written_plain_carries_printable_text_only() -> None:
    """PostgreSQL refuses a NUL in text: a provider's answer quoted in a reason, written
    plain after the whole was refused, must not be refused again."""
    job = Job(1, 1, 1, "mail", "a@example.org", 1, None, "C0", "C0", "en", "UTC", None, None)
    failed = Outcome(job, error=DeliveryError("bad\x00answer \udcff" + "x" * 500, retryable=True))
    reason = worker._plain(failed).error.reason  # type: ignore[union-attr]
    assert "\x00" not in reason and reason.startswith("bad\ufffdanswer ?")
    assert len(reason) <= worker.PLAIN_REASON
    sent = Outcome(job, receipt=Receipt(provider_message_id="x" * 999))
    assert worker._plain(sent).receipt is None


def test_a_long_host_name_is_cut_to_fit_the_lease_owner() -> None:
    owner = make_owner("node-17.rack-4.eu-west-3.broadcaster.internal.example.com" * 2)
    assert len(owner) == LEASE_OWNER_LENGTH
    assert owner.startswith("node-17.rack-4.")
    short = make_owner("host")
    assert short.startswith("host:") and len(short.split(":")) == 3


async def test_a_daemon_on_a_long_host_name_claims_and_sends(database: Database) -> None:
    """Its owner is written into every lease; uncut, PostgreSQL refused every claim."""
    clock = FakeClock(START)
    await add_customers(database, clock, [("C0", ["component:rail"])])
    channel = MemoryChannel(name="mail")
    owner = make_owner("a-fully-qualified-host-name.datacentre.example.org" * 3)
    engine = await Engine.create(make_settings(), database, clock, {"mail": channel}, owner=owner)
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    assert await engine.dispatch_all() == 1


@pytest.mark.postgres
async def test_a_daemons_sessions_ask_the_server_to_drop_them_when_their_host_goes_silent(
    postgres_url: str,
) -> None:
    """A daemon's host that dies inside a transaction leaves its session "idle in
    transaction", holding its locks (a round being written), until the server gives up on
    it: over two hours with the usual keepalives, the round skipped by every other daemon's
    claim meanwhile. Every session of a daemon asks for short ones (about 11 s)."""
    database = Database(postgres_url)
    try:
        async with database.session() as session:
            settings = await session.execute(
                text("SELECT name, setting FROM pg_settings WHERE name = ANY(:names)"),
                {"names": list(KEEPALIVE)},
            )
            assert dict(settings.all()) == KEEPALIVE
    finally:
        await database.dispose()


@pytest.mark.postgres
async def test_a_due_round_another_session_holds_is_looked_at_again_without_spinning(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round locked by a session that is gone but not yet dropped is skipped by the
    leader's claim, while it is still due: the leader looks again a second later, not at
    once over and over; and takes it when the lock goes."""
    await upgrade_async(postgres_url)
    database = Database(postgres_url)
    clock = RealClock()
    await reliability.add_customers(database, clock.now(), 3, ["email"])
    looks = 0
    real = Engine.next_wakeup

    async def counted(self: Engine) -> datetime | None:
        nonlocal looks
        looks += 1
        return await real(self)

    monkeypatch.setattr(Engine, "next_wakeup", counted)
    await service.declare(
        database, clock, service.Declaration("t", "major", "m", components=["payments"])
    )
    locker = await database.engine.connect()
    await locker.execute(text("SELECT id FROM rounds FOR UPDATE"))
    settings = Settings.model_validate(
        {
            "database": {"url": postgres_url},
            "schedule": {"sweep_interval": "1h"},
            "delivery": {"channels": ["mail"], "workers": 1, "poll_interval": "50ms"},
            "channels": {"mail": {"type": "console"}},
            "http": {"enabled": False},
        }
    )
    mail = MemoryChannel(name="mail")
    daemon = Daemon(settings, clock=clock, channels={"mail": mail})
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        await asyncio.sleep(2.5)
        assert 1 <= looks <= 5, f"{looks} looks in 2.5 s"
        assert mail.sent == []
        await locker.rollback()
        async with asyncio.timeout(10):
            while len(mail.sent) < 3:
                assert not task.done(), "the daemon ended"
                await asyncio.sleep(0.05)
    finally:
        await locker.close()
        stop.set()
        await asyncio.wait_for(task, 20)
        await database.dispose()


class WaitChannel(MemoryChannel):
    """Sends to everyone but ``refused``, who gets a retryable error asking for ``wait`` s."""

    def __init__(self, refused: str, wait: float) -> None:
        super().__init__(name="mail")
        self.refused, self.wait = refused, wait

    async def send(self, target: Target, message: Message) -> Receipt:
        if target.customer_id == self.refused:
            raise DeliveryError("HTTP 503", retryable=True, retry_after=self.wait)
        return await super().send(target, message)


@pytest.mark.parametrize("wait", [1e14, float("inf")])
async def test_a_provider_asking_to_wait_for_ever_loses_nothing_of_the_batch(
    database: Database, wait: float
) -> None:
    """``Retry-After: 100000000000000`` (a customer's own webhook URL may answer it) made
    the retry's date overflow inside the batch: its outcomes went unrecorded and every
    message already sent went out again at the next lease."""
    clock = FakeClock(START)
    channel = WaitChannel("C1", wait)
    engine = await _declared(database, clock, channel)
    await engine.dispatcher.run_once()
    states = await _deliveries(database)
    assert {c: s[0] for c, s in states.items()} == {"C0": "sent", "C1": "pending", "C2": "sent"}
    clock.advance(timedelta(minutes=10))  # every lease long expired
    await engine.dispatcher.run_once()
    assert _sends(channel) == {"C0": 1, "C2": 1}
    async with database.session() as session:
        retry_at = (
            await session.execute(
                select(Delivery.next_attempt_at).where(Delivery.customer_id == "C1")
            )
        ).scalar_one()
    assert retry_at <= START + timedelta(days=1, minutes=1)


class FailOnceChannel(MemoryChannel):
    """Asks ``customer``'s next message to wait ``wait`` s, once; sends everything else."""

    def __init__(self, wait: float) -> None:
        super().__init__(name="mail")
        self.wait = wait
        self.customer: str | None = None

    async def send(self, target: Target, message: Message) -> Receipt:
        if target.customer_id == self.customer:
            self.customer = None
            raise DeliveryError("busy", retryable=True, retry_after=self.wait)
        return await super().send(target, message)


async def _update_waiting_for_c1(
    database: Database, clock: FakeClock, *, wait: float
) -> tuple[Engine, FailOnceChannel]:
    """The first round sent to all; an update ("Still stopped.") sent to all but C1, whose
    copy waits ``wait`` s for a retry."""
    channel = FailOnceChannel(wait=wait)
    engine = await _declared(database, clock, channel)
    await engine.dispatcher.run_once()
    channel.customer = "C1"
    await service.post_update(database, clock, 1, service.UpdateRequest("Still stopped."))
    await engine.process_due_rounds()
    await engine.dispatcher.run_once()
    return engine, channel


async def test_a_message_that_waited_is_not_sent_after_a_later_round_reached_the_customer(
    database: Database,
) -> None:
    """An update that waited for a retry went out after the resolution: the customer's last
    message said "next update by ..." after the apology (doctrine 2 and 4)."""
    clock = FakeClock(START)
    engine, channel = await _update_waiting_for_c1(database, clock, wait=300)
    clock.advance(timedelta(minutes=1))
    await service.resolve(database, clock, 1, service.UpdateRequest("Trains run again."))
    await engine.process_due_rounds()
    await engine.dispatcher.run_once()
    clock.advance(timedelta(minutes=10))  # the update's retry is due
    await engine.dispatcher.run_once()
    to_c1 = [sent.message.text for sent in channel.sent if sent.target.customer_id == "C1"]
    assert len(to_c1) == 2 and "Trains run again." in to_c1[-1]
    assert sum("Still stopped." in sent.message.text for sent in channel.sent) == 2
    async with database.session() as session:
        state, why = (
            await session.execute(
                select(Delivery.state, Delivery.last_error).where(
                    Delivery.customer_id == "C1", Delivery.round_id == 2
                )
            )
        ).one()
    assert (state, why) == (
        "cancelled",
        "superseded: a later round of the incident reached the customer",
    )
    assert engine.dispatcher.stats.cancelled == 1


async def test_a_waiting_message_and_a_later_round_due_together_send_only_the_later(
    database: Database,
) -> None:
    """A retry of an update and the resolution, due in the same claim, both went out (in
    either order): the customer could read the stale update after the apology."""
    clock = FakeClock(START)
    engine, channel = await _update_waiting_for_c1(database, clock, wait=60)
    clock.advance(timedelta(minutes=2))
    await service.resolve(database, clock, 1, service.UpdateRequest("Trains run again."))
    await engine.process_due_rounds()
    await engine.dispatcher.run_once()  # the retry and the resolution, one claim
    to_c1 = [sent.message.text for sent in channel.sent if sent.target.customer_id == "C1"]
    assert len(to_c1) == 2 and "Trains run again." in to_c1[-1]
    assert not any("Still stopped." in text for text in to_c1)


async def test_a_message_waiting_for_an_address_an_import_removed_is_not_sent(
    database: Database, tmp_path: Path
) -> None:
    """A nightly CRM import removed an address (a number given to someone else) while a
    message held for quiet hours, or a retry, waited for it: it still went there."""
    clock = FakeClock(START)
    channel = MemoryChannel(name="mail")
    engine = await _declared(database, clock, channel)  # the round's deliveries wait
    crm = tmp_path / "crm.csv"
    crm.write_text(
        "id,name,email,components\nC0,Name C0,new-c0@example.org,rail\n", encoding="utf-8"
    )
    result = await import_customers(database, crm, clock=clock)
    assert result.imported == 1
    await engine.dispatcher.run_once()
    assert sorted(sent.target.address for sent in channel.sent) == [
        "c1@example.org",
        "c2@example.org",
    ]
    states = await _deliveries(database)
    assert states["C0"][0] == "cancelled" and states["C0"][3] == REMOVED
