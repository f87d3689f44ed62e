"""The broadcast loop on a fake clock, through the engine, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select, update

from broadcaster.audience.query import audience_batch, audience_size
from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.incidents.lifecycle import TransitionError
from broadcaster.store import (
    ContactPoint,
    Customer,
    Database,
    Delivery,
    Promise,
    Round,
    Subscription,
)
from broadcaster.store.models import table_of
from channels.base import ContactPointState, DeliveryError, Message, Target
from channels.memory import MemoryChannel

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)


def make_settings(**cadence: str) -> Settings:
    return Settings.model_validate(
        {
            "schedule": {
                "cadence": {"critical": "15m", "major": "30m", "minor": "2h", **cadence},
                "audience_batch": 3,
                "promise_grace": "30s",
            },
            "delivery": {
                "channels": ["mail"],
                "batch_size": 4,
                "max_attempts": 3,
                "backoff": {"initial": "10s", "maximum": "1m", "jitter": 0},
            },
            "channels": {"mail": {"type": "console"}},
        }
    )


async def add_customers(db: Database, clock: FakeClock, specs: list[tuple[str, list[str]]]) -> None:
    """specs: (customer id, ["component:x", "region:y", ...]); each gets an email address."""
    now = clock.now()
    async with db.session() as session, session.begin():
        for cid, subs in specs:
            await session.execute(
                insert(Customer).values(
                    id=cid,
                    name=f"Name {cid}",
                    language="en",
                    timezone="Europe/Amsterdam",
                    created_at=now,
                    updated_at=now,
                )
            )
            await session.execute(
                insert(ContactPoint).values(
                    customer_id=cid,
                    kind="email",
                    address=f"{cid.lower()}@example.org",
                    opted_out=False,
                    disabled=False,
                    updated_at=now,
                )
            )
            for sub in subs:
                kind, value = sub.split(":")
                await session.execute(
                    insert(Subscription).values(customer_id=cid, kind=kind, value=value)
                )


async def sent_rounds(channel: MemoryChannel) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in channel.sent:
        out.setdefault(item.target.customer_id, []).append(
            item.message.headers["X-Broadcaster-Round"]
        )
    return out


async def run_until(engine: Engine, clock: FakeClock, until: datetime) -> None:
    while True:
        await engine.process_due_rounds()
        await engine.dispatch_all()
        wake = await engine.next_wakeup()
        if wake is None or wake > until:
            # The scheduler's next pass (the daemon's within its sweep interval) settles the
            # promises of the rounds whose messages just went out.
            await engine.process_due_rounds()
            clock.set(max(until, clock.now()))
            return
        clock.set(max(wake, clock.now()))


SPECS = [
    ("A1", ["component:payments"]),
    ("A2", ["component:payments", "region:north"]),
    ("A3", ["region:north"]),
    ("A4", ["component:web"]),
    ("A5", ["component:payments"]),
    ("Z9", ["component:mobile"]),
]


async def test_audience_is_subscribers_of_scope_in_keyset_batches(database: Database) -> None:
    clock = FakeClock(START)
    await add_customers(database, clock, SPECS)
    incident = await service.declare(
        database,
        clock,
        service.Declaration(
            title="t", severity="major", message="m", components=["payments"], regions=["north"]
        ),
    )
    pages: list[list[str]] = []
    after: str | None = None
    async with database.session() as session:
        while page := await audience_batch(session, incident.id, after=after, limit=2):
            pages.append(page)
            after = page[-1]
        assert await audience_size(session, incident.id) == 4
    assert pages == [["A1", "A2"], ["A3", "A5"]]


async def test_full_loop_cadence_promises_resolution(database: Database) -> None:
    clock = FakeClock(START)
    await add_customers(database, clock, SPECS)
    mail = MemoryChannel(name="mail")
    engine = await Engine.create(make_settings(), database, clock, {"mail": mail}, owner="test")
    incident = await service.declare(
        database,
        clock,
        service.Declaration(
            title="Payments down", severity="critical", message="Failing.", components=["payments"]
        ),
    )
    await run_until(engine, clock, START)
    assert sorted(await sent_rounds(mail)) == ["A1", "A2", "A5"]
    first = mail.sent[0].message
    assert "next update by 09:15" in first.text  # 08:15 UTC in Amsterdam
    assert "Dear Name A" in first.text

    # No news for 40 minutes: rounds at 08:15 and 08:30, each promising the next.
    await run_until(engine, clock, START + timedelta(minutes=40))
    assert all(len(v) == 3 for v in (await sent_rounds(mail)).values())
    assert "No news yet" in mail.sent[-1].message.text

    # An operator update at 08:40 goes out at once and resets the cadence.
    await service.post_update(
        database,
        clock,
        incident.id,
        service.UpdateRequest(
            "Cause found.", status="identified", cause_kind="known", cause="A bad deploy."
        ),
    )
    await run_until(engine, clock, clock.now())
    latest = mail.sent[-1].message
    assert "Cause: A bad deploy." in latest.text
    assert "next update by 09:55" in latest.text

    clock.advance(timedelta(minutes=5))
    await service.resolve(database, clock, incident.id, service.UpdateRequest("Fixed."))
    await run_until(engine, clock, clock.now() + timedelta(hours=5))
    per_customer = await sent_rounds(mail)
    expected = [f"{incident.id}/{n}" for n in (1, 2, 3, 4, 5)]
    assert per_customer == {cid: expected for cid in ("A1", "A2", "A5")}
    assert "Resolved" in mail.sent[-1].message.subject
    assert "next update" not in mail.sent[-1].message.text

    async with database.session() as session:
        states = dict(
            (
                await session.execute(select(Promise.state, func.count()).group_by(Promise.state))
            ).all()
        )
        assert states == {"kept": 4}
        pending = (
            await session.execute(
                select(func.count()).select_from(Round).where(Round.state == "pending")
            )
        ).scalar_one()
        assert pending == 0


async def test_materialising_twice_inserts_nothing_new(database: Database) -> None:
    clock = FakeClock(START)
    await add_customers(database, clock, SPECS)
    engine = await Engine.create(
        make_settings(), database, clock, {"mail": MemoryChannel(name="mail")}
    )
    await service.declare(
        database,
        clock,
        service.Declaration(title="t", severity="minor", message="m", components=["payments"]),
    )
    await engine.process_due_rounds()
    async with database.session() as session, session.begin():
        # Simulate a crash after the deliveries were written but before the round was done.
        await session.execute(
            update(table_of(Round))
            .where(Round.number == 1)
            .values(state="materialising", cursor=None, lease_expires_at=clock.now())
        )
    clock.advance(1)
    assert await engine.process_due_rounds() == 1
    async with database.session() as session:
        count = (await session.execute(select(func.count()).select_from(Delivery))).scalar_one()
    assert count == 3


async def test_late_round_counts_a_late_promise(database: Database) -> None:
    clock = FakeClock(START)
    await add_customers(database, clock, SPECS)
    engine = await Engine.create(
        make_settings(), database, clock, {"mail": MemoryChannel(name="mail")}
    )
    await service.declare(
        database,
        clock,
        service.Declaration(title="t", severity="critical", message="m", components=["web"]),
    )
    await run_until(engine, clock, START)
    clock.advance(timedelta(minutes=25))  # the daemon was down: 10 minutes past the promise
    await engine.process_due_rounds()
    await engine.dispatch_all()  # customers hear at 08:25
    clock.advance(timedelta(minutes=1))
    await engine.process_due_rounds()  # the scheduler's next pass settles it
    async with database.session() as session:
        promise = (await session.execute(select(Promise).order_by(Promise.id))).scalars().first()
    assert promise is not None
    assert promise.state == "late"
    assert promise.lateness_seconds == pytest.approx(600)  # heard at 08:25, not at the pass


async def test_retry_then_permanent_failure_marks_contact_point(database: Database) -> None:
    clock = FakeClock(START)
    await add_customers(database, clock, SPECS)
    outcomes = {
        "a1@example.org": DeliveryError("try later", retryable=True),
        "a2@example.org": DeliveryError(
            "no such user", retryable=False, contact_point=ContactPointState.DISABLED
        ),
    }

    def fail(target: Target, _message: Message) -> DeliveryError | None:
        return outcomes.get(target.address)

    mail = MemoryChannel(name="mail", fail=fail)
    engine = await Engine.create(make_settings(), database, clock, {"mail": mail})
    await service.declare(
        database,
        clock,
        service.Declaration(title="t", severity="minor", message="m", components=["payments"]),
    )
    await engine.process_due_rounds()
    await engine.dispatch_all()
    async with database.session() as session:
        rows = {d.address: d for d in (await session.execute(select(Delivery))).scalars()}
    assert rows["a5@example.org"].state == "sent"
    assert rows["a2@example.org"].state == "failed"
    assert rows["a1@example.org"].state == "pending"
    assert rows["a1@example.org"].next_attempt_at == START + timedelta(seconds=10)
    # Retries run out after max_attempts (3), each after its backoff.
    for _ in range(3):
        clock.advance(timedelta(minutes=1))
        await engine.dispatch_all()
    async with database.session() as session:
        a1 = (
            await session.execute(select(Delivery).where(Delivery.address == "a1@example.org"))
        ).scalar_one()
        point = (
            await session.execute(
                select(ContactPoint).where(ContactPoint.address == "a2@example.org")
            )
        ).scalar_one()
    assert a1.state == "failed" and a1.attempts == 3
    assert a1.last_error is not None and "gave up after 3 attempts" in a1.last_error
    assert point.disabled
    assert mail.attempts == 1 + 1 + 1 + 2  # a5 once, a2 once, a1 three times


async def test_invalid_operations_are_refused(database: Database) -> None:
    clock = FakeClock(START)
    with pytest.raises(ValueError, match="scope"):
        await service.declare(database, clock, service.Declaration("t", "minor", "m"))
    with pytest.raises(ValueError, match="severity"):
        await service.declare(
            database, clock, service.Declaration("t", "huge", "m", components=["x"])
        )
    with pytest.raises(ValueError, match=r"^regions\[1\]: 201 characters; at most 200$"):
        await service.declare(
            database, clock, service.Declaration("t", "minor", "m", regions=["a", "r" * 201])
        )
    incident = await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["x"])
    )
    with pytest.raises(TransitionError, match="resolve it first"):
        await service.close(database, clock, incident.id)
    with pytest.raises(LookupError):
        await service.post_update(database, clock, 999, service.UpdateRequest("m"))
    await service.resolve(database, clock, incident.id, service.UpdateRequest("done"))
    with pytest.raises(TransitionError, match=r"cannot be closed yet: round 1 \(the resolution"):
        await service.close(database, clock, incident.id)  # its resolution is not sent yet
    engine = await Engine.create(
        make_settings(), database, clock, {"mail": MemoryChannel(name="mail")}
    )
    await engine.process_due_rounds()
    await service.close(database, clock, incident.id)
    with pytest.raises(TransitionError, match="closed"):
        await service.post_update(
            database, clock, incident.id, service.UpdateRequest("m", status="investigating")
        )
