"""Dispatch: delivery history, failover to the next channel, per-customer throttles."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select, text, update

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.dispatch.limits import TokenBucket
from broadcaster.dispatch.outcomes import Job, Outcome, record_outcomes
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.reports import incident_report
from broadcaster.store import (
    ContactPoint,
    Customer,
    Database,
    Delivery,
    DeliveryEvent,
    Subscription,
)
from channels.base import (
    ContactPointState,
    DeliveryError,
    Message,
    Receipt,
    Target,
    units_of,
)
from channels.memory import MemoryChannel
from channels.twilio_sms import TwilioSettings, TwilioSmsChannel

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)


def settings(**delivery: object) -> Settings:
    return Settings.model_validate(
        {
            "delivery": {
                "channels": ["sms"],
                "failover": ["sms", "mail"],
                "backoff": {"jitter": 0},
                **delivery,
            },
            "channels": {
                "sms": {"type": "console", "contact": "sms"},
                "mail": {"type": "console", "contact": "email"},
            },
        }
    )


async def customer(db: Database, cid: str, order: str | None = None) -> None:
    now = START
    async with db.session() as session, session.begin():
        await session.execute(
            insert(Customer).values(
                id=cid,
                name=cid,
                language="en",
                timezone="UTC",
                channel_order=order,
                created_at=now,
                updated_at=now,
            )
        )
        for kind, address in (("sms", f"+3161234{cid[-4:]}"), ("email", f"{cid}@example.org")):
            await session.execute(
                insert(ContactPoint).values(
                    customer_id=cid,
                    kind=kind,
                    address=address,
                    opted_out=False,
                    disabled=False,
                    updated_at=now,
                )
            )
        await session.execute(
            insert(Subscription).values(customer_id=cid, kind="component", value="rail")
        )


async def declare(db: Database, clock: FakeClock) -> int:
    incident = await service.declare(
        db, clock, service.Declaration("Rail", "major", "Trains stopped.", components=["rail"])
    )
    return incident.id


async def test_permanent_failure_fails_over_once_and_both_record_it(database: Database) -> None:
    clock = FakeClock(START)
    await customer(database, "c0001")

    def refuse(target: Target, _m: Message) -> DeliveryError | None:
        return DeliveryError(
            "21211 invalid number", retryable=False, contact_point=ContactPointState.DISABLED
        )

    sms = MemoryChannel(name="sms", contact="sms", fail=refuse)
    mail = MemoryChannel(name="mail", contact="email")
    engine = await Engine.create(settings(), database, clock, {"sms": sms, "mail": mail})
    await declare(database, clock)
    await engine.process_due_rounds()
    await engine.dispatch_all()
    async with database.session() as session:
        rows = {d.channel: d for d in (await session.execute(select(Delivery))).scalars()}
        events = (
            await session.execute(
                select(
                    DeliveryEvent.delivery_id, DeliveryEvent.state, DeliveryEvent.detail
                ).order_by(DeliveryEvent.id)
            )
        ).all()
        point = (
            await session.execute(select(ContactPoint).where(ContactPoint.kind == "sms"))
        ).scalar_one()
    assert rows["sms"].state == "failed" and rows["sms"].failover_to == "mail"
    assert rows["mail"].state == "sent" and rows["mail"].failover_from_id == rows["sms"].id
    assert [m.target.address for m in mail.sent] == ["c0001@example.org"]
    assert point.disabled
    # One history row per attempt's outcome, naming the attempt (a first claim writes none).
    assert [(s, t) for d, s, t in events if d == rows["sms"].id] == [
        ("failed", "attempt 1: 21211 invalid number")
    ]
    assert [s for d, s, _ in events if d == rows["mail"].id] == ["pending", "sent"]


async def test_failover_follows_the_customers_own_order(database: Database) -> None:
    clock = FakeClock(START)
    await customer(database, "c0002", order="mail,sms")
    mail = MemoryChannel(
        name="mail",
        contact="email",
        fail=lambda t, m: DeliveryError("550 no such user", retryable=False),
    )
    sms = MemoryChannel(name="sms", contact="sms")
    engine = await Engine.create(
        settings(channels=["mail"]), database, clock, {"sms": sms, "mail": mail}
    )
    await declare(database, clock)
    await engine.process_due_rounds()
    await engine.dispatch_all()
    assert len(sms.sent) == 1  # mail failed, so the customer's next channel: sms


async def test_a_failover_delivery_that_fails_does_not_fail_over_again(database: Database) -> None:
    clock = FakeClock(START)
    await customer(database, "c0003")
    never = lambda t, m: DeliveryError("refused", retryable=False)  # noqa: E731
    sms = MemoryChannel(name="sms", contact="sms", fail=never)
    mail = MemoryChannel(name="mail", contact="email", fail=never)
    engine = await Engine.create(
        settings(failover=["sms", "mail", "sms"]), database, clock, {"sms": sms, "mail": mail}
    )
    await declare(database, clock)
    await engine.process_due_rounds()
    await engine.dispatch_all()
    async with database.session() as session:
        states = sorted((await session.execute(select(Delivery.channel, Delivery.state))).all())
    assert states == [("mail", "failed"), ("sms", "failed")]


async def test_throttle_reroutes_to_the_lighter_channel(database: Database) -> None:
    clock = FakeClock(START)
    await customer(database, "c0004")
    sms = MemoryChannel(name="sms", contact="sms")
    mail = MemoryChannel(name="mail", contact="email")
    config = settings(throttle={"sms": {"max": 2, "per": "1h", "fallback": "mail"}})
    engine = await Engine.create(config, database, clock, {"sms": sms, "mail": mail})
    incident_id = await declare(database, clock)
    for minute in (0, 10, 20, 30):
        clock.set(START + timedelta(minutes=minute))
        if minute:
            await service.post_update(
                database, clock, incident_id, service.UpdateRequest(f"news {minute}")
            )
        await engine.process_due_rounds()
        await engine.dispatch_all()
    assert len(sms.sent) == 2  # at most 2 SMS an hour
    assert len(mail.sent) == 2  # the rest by email: rerouted, not skipped
    async with database.session() as session:
        rerouted = (
            (await session.execute(select(Delivery).where(Delivery.state == "rerouted")))
            .scalars()
            .all()
        )
    assert len(rerouted) == 2 and all(d.failover_to == "mail" for d in rerouted)
    # An hour later SMS is allowed again.
    clock.set(START + timedelta(minutes=95))
    await service.post_update(database, clock, incident_id, service.UpdateRequest("later"))
    await engine.process_due_rounds()
    await engine.dispatch_all()
    assert len(sms.sent) == 3


async def test_a_throttle_whose_fallback_the_customer_lacks_still_sends(
    database: Database,
) -> None:
    """A customer with no usable email is not silenced by the SMS throttle: with nowhere to
    move the message (a resolution, a promised update), it goes by SMS."""
    clock = FakeClock(START)
    await customer(database, "c0005")
    async with database.session() as session, session.begin():
        await session.execute(
            update(ContactPoint)
            .where(ContactPoint.customer_id == "c0005", ContactPoint.kind == "email")
            .values(opted_out=True)
        )
    sms = MemoryChannel(name="sms", contact="sms")
    mail = MemoryChannel(name="mail", contact="email")
    config = settings(throttle={"sms": {"max": 2, "per": "1h", "fallback": "mail"}})
    engine = await Engine.create(config, database, clock, {"sms": sms, "mail": mail})
    incident_id = await declare(database, clock)
    for minute in (0, 10, 20):
        clock.set(START + timedelta(minutes=minute))
        if minute:
            await service.post_update(
                database, clock, incident_id, service.UpdateRequest(f"news {minute}")
            )
        await engine.process_due_rounds()
        await engine.dispatch_all()
    assert len(sms.sent) == 3 and mail.sent == []
    async with database.session() as session:
        states = set((await session.execute(select(Delivery.state))).scalars())
    assert states == {"sent"}


async def test_a_throttle_thins_updates_but_never_holds_back_the_resolution(
    database: Database,
) -> None:
    """Without a fallback a throttled message is not sent: that thinned the updates, and
    dropped the apology of a customer over the cap (doctrine 4)."""
    clock = FakeClock(START)
    await customer(database, "c0006")
    sms = MemoryChannel(name="sms", contact="sms")
    config = settings(channels=["sms"], throttle={"sms": {"max": 1, "per": "1h"}})
    engine = await Engine.create(config, database, clock, {"sms": sms})
    incident_id = await declare(database, clock)
    await engine.process_due_rounds()
    await engine.dispatch_all()
    clock.set(START + timedelta(minutes=10))
    await service.post_update(database, clock, incident_id, service.UpdateRequest("news"))
    await engine.process_due_rounds()
    await engine.dispatch_all()
    clock.set(START + timedelta(minutes=20))
    await service.resolve(database, clock, incident_id, service.UpdateRequest("Fixed."))
    await engine.process_due_rounds()
    await engine.dispatch_all()
    assert len(sms.sent) == 2 and "is resolved" in sms.sent[-1].message.text
    async with database.session() as session:
        states = (
            await session.execute(select(Delivery.state, Delivery.last_error).order_by(Delivery.id))
        ).all()
    assert [state for state, _ in states] == ["sent", "failed", "sent"]
    assert states[1][1] == "per-customer throttle reached"


async def test_a_rate_limited_channel_does_not_hold_the_others_back(database: Database) -> None:
    """SMS at 5/s and e-mail unlimited, both for every customer: a claim keeps the SMS its
    rate sends within two seconds and puts the others back, each due at its slot, so the
    claims go on to the e-mails instead of waiting on the SMS rate batch after batch."""
    clock = FakeClock(START)
    for i in range(20):
        await customer(database, f"c{i:04d}")
    sms = MemoryChannel(name="sms", contact="sms")
    mail = MemoryChannel(name="mail", contact="email")
    config = settings(channels=["sms", "mail"], rate_limits={"sms": {"per_second": 5}})
    engine = await Engine.create(config, database, clock, {"sms": sms, "mail": mail})
    await declare(database, clock)
    await engine.process_due_rounds()

    await engine.dispatch_all()  # the round's start: nothing else falls due meanwhile

    assert len(mail.sent) == 20
    assert len(sms.sent) == 11  # slots +0 s … +2 s at 5/s
    async with database.session() as session:
        waiting = (
            await session.execute(
                select(Delivery.next_attempt_at, Delivery.lease_expires_at)
                .where(Delivery.state == "pending")
                .order_by(Delivery.next_attempt_at)
            )
        ).all()
    assert [row[0] for row in waiting] == [
        START + timedelta(seconds=2.2 + 0.2 * k) for k in range(9)
    ]
    assert all(row[1] == row[0] for row in waiting)  # marked as put back
    assert engine.dispatcher.stats.paced == 9

    clock.advance(timedelta(seconds=5))
    await engine.dispatch_all()  # each taken as it falls due: its slot is kept for it
    assert len(sms.sent) == 20
    assert len({m.target.customer_id for m in sms.sent}) == 20


async def test_token_bucket_paces_to_the_configured_rate() -> None:
    now = [0.0]
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(10.0, burst=2, monotonic=lambda: now[0], sleep=fake_sleep)
    for _ in range(12):
        await bucket.acquire()
    # 2 from the burst, then 10 more at 10/s: one second of pacing in all.
    assert sum(waits) == pytest.approx(1.0)


async def test_a_message_of_several_sms_segments_costs_them_all() -> None:
    """Providers count SMS throughput in segments: a three-segment message at 1/s takes
    three seconds of the rate, even with a burst of one."""
    now = [0.0]

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds

    bucket = TokenBucket(1.0, burst=1, monotonic=lambda: now[0], sleep=fake_sleep)
    assert await bucket.acquire(3) == 0.0  # a full bucket lets it go, owing two
    assert await bucket.acquire(1) == pytest.approx(3.0)  # the debt, then its own token
    assert await bucket.acquire(2) == pytest.approx(1.0)  # waits for a full bucket (1)


def test_the_twilio_channel_counts_a_message_in_segments() -> None:

    sms = TwilioSmsChannel(
        "sms",
        TwilioSettings(
            account_sid="AC" + "0" * 32, auth_token="t" * 32, from_number="+15005550006"
        ),
    )
    assert units_of(sms, Message(subject="", text="Trains run again.")) == 1
    assert units_of(sms, Message(subject="", text="Trains run again. " * 12)) == 2
    assert units_of(MemoryChannel(name="mail"), Message(subject="", text="x" * 900)) == 1


async def test_contact_point_marked_by_failure_is_not_used_again(database: Database) -> None:
    clock = FakeClock(START)
    await customer(database, "c0005")
    async with database.session() as session, session.begin():
        await session.execute(
            update(ContactPoint).where(ContactPoint.kind == "sms").values(opted_out=True)
        )
    sms = MemoryChannel(name="sms", contact="sms")
    mail = MemoryChannel(name="mail", contact="email")
    engine = await Engine.create(settings(), database, clock, {"sms": sms, "mail": mail})
    await declare(database, clock)
    await engine.process_due_rounds()
    await engine.dispatch_all()
    assert sms.sent == []  # opted out: never materialised on SMS


async def test_a_round_too_big_for_its_rate_is_flagged(database: Database) -> None:
    clock = FakeClock(START)
    for n in range(5):
        await customer(database, f"c100{n}")
    config = settings(rate_limits={"sms": {"per_second": 0.001}})
    sms = MemoryChannel(name="sms", contact="sms")
    mail = MemoryChannel(name="mail", contact="email")
    engine = await Engine.create(config, database, clock, {"sms": sms, "mail": mail})
    await declare(database, clock)
    await engine.process_due_rounds()
    [warning] = engine.capacity_warnings
    assert "5 sms messages at 0.001/s" in warning and "longer than the 30m cadence" in warning


class TakenWhileSending(MemoryChannel):
    """Fails every send permanently, after another daemon took the delivery's lease (as
    after a stall longer than the lease)."""

    database: Database | None = None

    async def send(self, target: Target, message: Message) -> Receipt:
        assert self.database is not None
        async with self.database.session() as session, session.begin():
            await session.execute(
                update(Delivery).values(
                    lease_owner="another-daemon", lease_expires_at=START + timedelta(hours=1)
                )
            )
        raise DeliveryError("21211 invalid number", retryable=False)


async def test_no_failover_from_a_delivery_whose_lease_was_lost(database: Database) -> None:
    """The new holder decides what becomes of it: a failover made by the old one would send
    the message a second time, on another channel."""
    clock = FakeClock(START)
    await customer(database, "c0007")
    sms = TakenWhileSending(name="sms", contact="sms")
    sms.database = database
    mail = MemoryChannel(name="mail", contact="email")
    engine = await Engine.create(settings(), database, clock, {"sms": sms, "mail": mail})
    await declare(database, clock)
    await engine.process_due_rounds()
    await engine.dispatch_all()
    async with database.session() as session:
        rows = (await session.execute(select(Delivery.channel, Delivery.state))).all()
    assert rows == [("sms", "sending")]  # still the other daemon's
    assert mail.sent == [] and engine.dispatcher.stats.failovers == 0


async def test_a_failover_racing_another_for_the_same_channel_does_not_fail_the_batch(
    database: Database,
) -> None:
    """Two workers failing over two of a customer's deliveries of one round to the same
    channel at once: the second insert finds the first's row once it commits, and does
    nothing, instead of failing the whole batch's outcomes on the unique key."""
    if database.dialect != "postgresql":
        pytest.skip("needs two concurrent writers: PostgreSQL")
    clock = FakeClock(START)
    await customer(database, "c0008")
    engine = await Engine.create(
        settings(), database, clock, {"sms": MemoryChannel(name="sms", contact="sms")}
    )
    await declare(database, clock)
    await engine.process_due_rounds()
    async with database.session() as session, session.begin():
        row = (await session.execute(select(Delivery))).scalar_one()
        row.state, row.lease_owner, row.attempts = "sending", "me", 1  # as a claim leaves it
        row.lease_expires_at = START + timedelta(minutes=1)
    job = Job(
        row.id,
        row.round_id,
        row.incident_id,
        "sms",
        row.address,
        1,
        row.contact_point_id,
        "c0008",
        "c0008",
        "en",
        "UTC",
        None,
        None,
    )
    failure = Outcome(job, error=DeliveryError("21211 invalid number", retryable=False))
    async with database.engine.connect() as rival:
        await rival.execute(
            insert(Delivery).values(
                round_id=row.round_id,
                incident_id=row.incident_id,
                customer_id="c0008",
                channel="mail",
                address="c0008@example.org",
                state="pending",
                attempts=0,
                next_attempt_at=START,
                created_at=START,
            )
        )  # not committed yet: the failover below cannot see it, and waits on its key
        recording = asyncio.create_task(
            record_outcomes(
                database,
                "me",
                [failure],
                START,
                failover=["sms", "mail"],
                contact_kinds={"sms": "sms", "mail": "email"},
            )
        )
        async with asyncio.timeout(10):
            while not await _waits_on_a_lock(database):
                assert not recording.done(), recording
                await asyncio.sleep(0.02)
        await rival.commit()
    recorded = await asyncio.wait_for(recording, 10)
    assert recorded.failed == 1 and recorded.failovers == 0
    async with database.session() as session:
        states = sorted((await session.execute(select(Delivery.channel, Delivery.state))).all())
    assert states == [("mail", "pending"), ("sms", "failed")]


async def _waits_on_a_lock(database: Database) -> bool:
    async with database.session() as session:
        waiting = await session.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
        return bool(waiting.scalar_one())


async def test_what_other_incidents_queued_on_a_channel_counts_against_a_round(
    database: Database,
) -> None:
    """Two incidents' rounds share the SMS rate: each fits its 30 min cadence alone (3
    messages at 0.002/s: 16m40s), both together do not; the second round's warning counts
    the first's queued messages."""
    clock = FakeClock(START)
    for n in range(3):
        await customer(database, f"c200{n}")
    config = settings(rate_limits={"sms": {"per_second": 0.002}})
    sms = MemoryChannel(name="sms", contact="sms")
    mail = MemoryChannel(name="mail", contact="email")
    engine = await Engine.create(config, database, clock, {"sms": sms, "mail": mail})
    await declare(database, clock)
    await engine.process_due_rounds()
    assert engine.capacity_warnings == []
    await service.declare(
        database, clock, service.Declaration("Bus", "major", "Buses stopped.", components=["rail"])
    )
    await engine.process_due_rounds()
    [warning] = engine.capacity_warnings
    assert warning.startswith("incident 2 round 1: 6 sms messages (3 of them queued from other")
    assert "it needs 0.00333/s" in warning


async def test_every_daemon_reports_the_capacity_warning_from_the_store(
    database: Database,
) -> None:
    """The warning is kept with the round: another daemon, or this one after a restart,
    reports it too, and so does ``incident show`` whatever its own configuration; once the
    incident is resolved no daemon does."""
    clock = FakeClock(START)
    for n in range(5):
        await customer(database, f"c300{n}")
    config = settings(rate_limits={"sms": {"per_second": 0.001}})
    channels = {"sms": MemoryChannel(name="sms", contact="sms"), "mail": MemoryChannel("mail")}
    leader = await Engine.create(config, database, clock, channels, owner="a")
    incident_id = await declare(database, clock)
    await leader.process_due_rounds()
    [warning] = leader.capacity_warnings

    restarted = await Engine.create(config, database, clock, channels, owner="b")
    assert restarted.capacity_warnings == []
    await restarted.refresh_capacity()
    assert restarted.capacity_warnings == [warning]
    assert (await incident_report(database, incident_id)).capacity_warnings == [warning]

    await service.resolve(database, clock, incident_id, service.UpdateRequest("Fixed."))
    await restarted.refresh_capacity()
    assert restarted.capacity_warnings == []


class _Unsendable(MemoryChannel):
    """A channel that cannot size this message (an SMS whose link alone is too long)."""

    def units(self, message: Message) -> int:
        raise ValueError("the link alone needs 2 SMS segments, more than max_segments=1")


async def test_a_message_its_channel_cannot_size_fails_for_good_at_once(
    database: Database,
) -> None:
    clock = FakeClock(START)
    await customer(database, "c0400")
    sms = _Unsendable(name="sms", contact="sms")
    mail = MemoryChannel(name="mail", contact="email")
    config = settings(rate_limits={"sms": {"per_second": 100}})
    engine = await Engine.create(config, database, clock, {"sms": sms, "mail": mail})
    await declare(database, clock)
    await engine.process_due_rounds()
    await engine.dispatch_all()
    async with database.session() as session:
        rows = (
            await session.execute(
                select(
                    Delivery.channel, Delivery.state, Delivery.attempts, Delivery.last_error
                ).order_by(Delivery.id)
            )
        ).all()
    assert rows[0][:3] == ("sms", "failed", 1) and "max_segments=1" in (rows[0][3] or "")
    assert rows[1][:2] == ("mail", "sent")  # failed over at once, not after retries
