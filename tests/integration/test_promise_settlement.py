"""A promise is kept when customers hear from the round that keeps it, not when that round
is claimed: a channel down, a daemon killed after a claim, a provider that refuses every
message leave it open (and overdue), stragglers and quiet hours do not; on both stores."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.reports import incident_report, promise_overdue
from broadcaster.schedule import promises as settlement
from broadcaster.schedule.rounds import claim_due_round
from broadcaster.store import Customer, Database, Delivery, Promise, Round, Subscription
from channels.base import DeliveryError, Message, Target
from channels.memory import MemoryChannel
from tests.api.support import api_client
from tests.integration.test_rules_followups import channels as rule_channels
from tests.integration.test_rules_followups import settings as rule_settings
from tests.reliability.common import START, add_customers

GRACE = timedelta(minutes=1)


def make_settings() -> Settings:
    return Settings.model_validate(
        {
            "schedule": {"cadence": {"major": "15m"}, "promise_grace": "1m"},
            "delivery": {
                "channels": ["mail"],
                "backoff": {"initial": "30s", "maximum": "5m", "jitter": 0},
                "max_attempts": 20,
            },
            "channels": {"mail": {"type": "console"}},
            "messages": {"public_url": "https://status.example.org"},
            "http": {"enabled": False},
        }
    )


Fail = Callable[[Target, Message], DeliveryError | None]


class Switch:
    """What the channel answers: nothing wrong, or ``fail``'s error, while it is on."""

    def __init__(self) -> None:
        self.fail: Fail | None = None

    def __call__(self, target: Target, message: Message) -> DeliveryError | None:
        return self.fail(target, message) if self.fail else None


def down(_target: Target, _message: Message) -> DeliveryError:
    return DeliveryError("relay unreachable", retryable=True)


async def declare(database: Database, clock: FakeClock) -> int:
    incident = await service.declare(
        database,
        clock,
        service.Declaration(
            title="Payments", severity="major", message="m", components=["payments"]
        ),
    )
    return incident.id


async def a_minute(engine: Engine) -> None:
    """One minute of the daemon: a pass of its scheduler and its dispatchers."""
    await engine.process_due_rounds()
    await engine.dispatch_all()


async def promises(database: Database) -> list[Promise]:
    async with database.session() as session:
        return list((await session.execute(select(Promise).order_by(Promise.due_at))).scalars())


async def overdue(database: Database, now: datetime) -> int:
    async with database.session() as session:
        return int(
            (
                await session.execute(select(func.count()).where(promise_overdue(now, GRACE)))
            ).scalar_one()
        )


async def test_a_channel_down_leaves_the_promise_open_and_overdue_until_customers_hear(
    database: Database,
) -> None:
    """The relay is down from 08:10 to 09:00: the rounds of 08:15, 08:30 and 08:45 start on
    time and reach nobody. Their promises stay open and overdue, and are settled late by
    what customers heard at 09:00, not kept when the rounds started."""
    clock = FakeClock(START)
    await add_customers(database, clock.now(), 3, ["email"])
    switch = Switch()
    mail = MemoryChannel(name="mail", fail=switch)
    engine = await Engine.create(make_settings(), database, clock, {"mail": mail}, owner="A")
    incident = await declare(database, clock)
    seen: dict[str, int] = {}
    for minute in range(0, 66):
        clock.set(START + timedelta(minutes=minute))
        switch.fail = down if 10 <= minute < 60 else None
        await a_minute(engine)
        seen[f"{clock.now():%H:%M}"] = await overdue(database, clock.now())
    assert len(mail.sent) == 6  # 08:00, and the round of 09:00: nothing in between
    assert seen["08:15"] == 0 and seen["08:17"] == 1  # the 08:15 promise, past its grace
    assert seen["08:47"] == 3 and seen["08:59"] == 3
    assert seen["09:01"] == 0  # settled at the scheduler's first pass after 09:00
    settled = {f"{p.due_at:%H:%M}": (p.state, p.lateness_seconds) for p in await promises(database)}
    assert settled == {
        "08:15": ("late", 2700.0),  # heard at 09:00
        "08:30": ("late", 1800.0),
        "08:45": ("late", 900.0),
        "09:00": ("kept", 0.0),
        "09:15": ("open", None),  # made at 09:00: its round is not due yet
    }
    report = await incident_report(database, incident, now=clock.now(), promise_grace=GRACE)
    assert report.promises_overdue == 0
    assert {p.state: (p.count, p.worst_lateness_s) for p in report.promises}["late"] == (3, 2700.0)


async def test_metrics_say_the_promise_is_broken_while_the_channel_is_down(
    database: Database,
) -> None:
    settings = make_settings()
    async with api_client(database, settings) as api:
        clock = api.clock
        await add_customers(database, clock.now(), 2, ["email"])
        switch = Switch()
        mail = MemoryChannel(name="mail", fail=switch)
        engine = await Engine.create(settings, database, clock, {"mail": mail}, owner="A")
        await declare(database, clock)
        await a_minute(engine)  # the first notice
        switch.fail = down
        for _ in range(20):
            clock.advance(timedelta(minutes=1))
            await a_minute(engine)
        response = await api.call("GET", "/metrics", "viewer")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }
    assert samples[("broadcaster_promises_overdue", ())] == 1
    assert samples[("broadcaster_promises", (("state", "kept"),))] == 0
    assert samples[("broadcaster_promise_lateness_seconds_count", ())] == 0


async def test_a_round_claimed_by_a_daemon_that_died_keeps_nothing_until_it_is_sent(
    database: Database,
) -> None:
    """The only daemon claims round 2 and is killed before writing it out; an hour later a
    new one sends it. Meanwhile the promise is overdue; then it is late by that hour."""
    clock = FakeClock(START)
    await add_customers(database, clock.now(), 3, ["email"])
    settings = make_settings()
    mail = MemoryChannel(name="mail")
    engine = await Engine.create(settings, database, clock, {"mail": mail}, owner="A")
    await declare(database, clock)
    await a_minute(engine)  # round 1, promising 08:15
    clock.set(START + timedelta(minutes=15))
    assert await claim_due_round(database, clock, settings.schedule, "A-dead") is not None
    clock.advance(timedelta(hours=1))
    assert await overdue(database, clock.now()) == 2  # 08:15, and 08:30 its claim promised
    restarted = await Engine.create(settings, database, clock, {"mail": mail}, owner="B")
    await a_minute(restarted)
    await restarted.process_due_rounds()  # the scheduler's next pass
    first = (await promises(database))[0]
    assert (first.state, first.lateness_seconds) == ("late", 3600.0)
    assert first.kept_at == START + timedelta(minutes=75)


async def test_a_few_stragglers_do_not_hold_a_large_rounds_promise(database: Database) -> None:
    """A round of 200 customers has reached its audience with 2 messages (1 %) still
    retrying (a full mailbox); with 3 it has not."""
    clock = FakeClock(START)
    await add_customers(database, clock.now(), 400, ["email"])
    switch = Switch()
    mail = MemoryChannel(name="mail", fail=switch)
    engine = await Engine.create(make_settings(), database, clock, {"mail": mail}, owner="A")
    # Two incidents of 200 customers each (the first 200 and the last 200 customers).
    async with database.session() as session, session.begin():
        await session.execute(
            update(Subscription).where(Subscription.customer_id >= "C00200").values(value="cards")
        )
    incidents = {}
    for component in ("payments", "cards"):
        declared = await service.declare(
            database,
            clock,
            service.Declaration(
                title=component, severity="major", message="m", components=[component]
            ),
        )
        incidents[declared.id] = component
    await a_minute(engine)
    full = {"cust00007@example.org", "cust00008@example.org"}  # payments: 2 of 200
    full |= {"cust00207@example.org", "cust00208@example.org", "cust00209@example.org"}  # 3

    def mailbox_full(target: Target, _message: Message) -> DeliveryError | None:
        if target.address in full:
            return DeliveryError("452 mailbox full", retryable=True)
        return None

    switch.fail = mailbox_full
    clock.set(START + timedelta(minutes=15))
    await a_minute(engine)
    clock.advance(timedelta(seconds=10))
    await engine.process_due_rounds()
    states = {
        incidents[p.incident_id]: (p.state, p.lateness_seconds)
        for p in await promises(database)
        if p.due_at == START + timedelta(minutes=15)
    }
    assert states == {"payments": ("kept", 0.0), "cards": ("open", None)}


async def test_a_provider_refusing_every_message_leaves_the_promise_to_the_next_round(
    database: Database,
) -> None:
    """Every message refused for good (the provider's key revoked) is no promise kept: it
    passes to the next round, overdue meanwhile, and is late when one gets through."""
    clock = FakeClock(START)
    await add_customers(database, clock.now(), 3, ["email"])
    switch = Switch()
    mail = MemoryChannel(name="mail", fail=switch)
    engine = await Engine.create(make_settings(), database, clock, {"mail": mail}, owner="A")
    await declare(database, clock)
    await a_minute(engine)
    switch.fail = lambda _t, _m: DeliveryError("401 unauthorised", retryable=False)
    for minute in range(15, 31):
        clock.set(START + timedelta(minutes=minute))
        await a_minute(engine)
    first = (await promises(database))[0]
    assert first.state == "open"
    assert await overdue(database, clock.now()) >= 1
    async with database.session() as session:
        kept_by = (
            await session.execute(select(Round.number).where(Round.id == first.kept_by_round_id))
        ).scalar_one()
    assert kept_by == 3  # round 2 reached nobody: round 3 (08:30) keeps it
    switch.fail = None  # the key is renewed
    for minute in range(45, 47):
        clock.set(START + timedelta(minutes=minute))
        await a_minute(engine)
    first = (await promises(database))[0]
    assert (first.state, first.lateness_seconds) == ("late", 1800.0)  # heard at 08:45


async def test_customers_held_for_quiet_hours_do_not_make_the_promise_late(
    database: Database,
) -> None:
    """At 22:10 in Amsterdam the example rules hold a minor incident's round for customers
    there until 07:00 (their previous message promised 07:00); customers in New York hear
    it at once, and the round's promise is kept by that."""
    evening = datetime(2026, 1, 6, 20, 40, tzinfo=UTC)  # 21:40 in Amsterdam
    clock = FakeClock(evening)
    ids = await add_customers(database, clock.now(), 4, ["email"], component="rail")
    async with database.session() as session, session.begin():
        await session.execute(
            update(Customer).where(Customer.id.in_(ids[2:])).values(timezone="America/New_York")
        )
    sinks = rule_channels()
    engine = await Engine.create(rule_settings(), database, clock, sinks)
    await service.declare(
        database, clock, service.Declaration("Slow", "minor", "Delays.", components=["rail"])
    )
    await engine.process_due_rounds()
    await engine.dispatch_all()
    clock.set(evening + timedelta(minutes=30))  # round 2: 22:10 in Amsterdam
    await engine.process_due_rounds()
    await engine.dispatch_all()
    clock.advance(timedelta(seconds=5))
    await engine.process_due_rounds()
    async with database.session() as session:
        held = (
            await session.execute(
                select(func.count())
                .select_from(Delivery)
                .join(Round, Round.id == Delivery.round_id)
                .where(Round.number == 2, Delivery.state == "pending")
            )
        ).scalar_one()
    assert held == 2  # Amsterdam's, until 07:00
    first = (await promises(database))[0]
    assert (first.state, first.lateness_seconds) == ("kept", 0.0)
    assert first.kept_at == evening + timedelta(minutes=30)


@pytest.mark.parametrize(
    ("tally", "final", "expected"),
    [
        (settlement.Tally(audience=3, waiting=1, sent=2), False, "wait"),
        (settlement.Tally(audience=3, sent=3), False, "keep"),
        (settlement.Tally(audience=3, sent=2, lost=1), False, "pass"),
        (settlement.Tally(audience=3, sent=2, lost=1), True, "broken"),
        (settlement.Tally(audience=0), False, "keep"),  # nobody to tell: written out is enough
        (settlement.Tally(audience=1000, waiting=10, sent=980, lost=10), False, "keep"),
        (settlement.Tally(audience=1000, waiting=11, sent=989), False, "wait"),
        (settlement.Tally(audience=1000, sent=989, lost=11), False, "pass"),
        (settlement.Tally(audience=1000, waiting=11, lost=989), False, "wait"),
    ],
)
def test_the_verdict_on_a_written_out_round(
    tally: settlement.Tally, final: bool, expected: str
) -> None:
    assert settlement.verdict(tally, final) == expected
