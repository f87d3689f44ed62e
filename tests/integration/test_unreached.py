"""Who an incident has not reached (:mod:`broadcaster.unreached`), on SQLite and PostgreSQL:
through the engine on a fake clock with channels that fail some customers, and on rows
written directly for what the engine takes long to reach (every reason, several channels,
pages, several incidents, a purged incident)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, update

from broadcaster import unreached
from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import (
    ContactPoint,
    Customer,
    Database,
    Delivery,
    DeliveryEvent,
    Incident,
    IncidentScope,
    Round,
    Subscription,
)
from channels.base import ContactPointState, DeliveryError, Message, Target
from channels.memory import MemoryChannel

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)


def make_settings() -> Settings:
    return Settings.model_validate(
        {
            "schedule": {"cadence": {"major": "30m"}, "audience_batch": 3},
            "delivery": {
                "channels": ["mail"],
                "batch_size": 10,
                "max_attempts": 3,
                "backoff": {"initial": "10s", "maximum": "1m", "jitter": 0},
            },
            "channels": {"mail": {"type": "console", "contact": "email"}},
        }
    )


async def add_customer(
    db: Database, cid: str, *, email: bool = True, opted_out: bool = False
) -> None:
    async with db.session() as session, session.begin():
        await session.execute(
            insert(Customer).values(id=cid, name=f"Name {cid}", created_at=START, updated_at=START)
        )
        if email:
            await session.execute(
                insert(ContactPoint).values(
                    customer_id=cid,
                    kind="email",
                    address=f"{cid.lower()}@example.org",
                    opted_out=opted_out,
                    disabled=False,
                    updated_at=START,
                )
            )
        await session.execute(
            insert(Subscription).values(customer_id=cid, kind="component", value="payments")
        )


async def test_through_the_engine_who_was_not_reached_and_who_is_still_tried(
    database: Database,
) -> None:
    """OK: sent. GONE: refused for good (its address disabled, so round 2 writes it nothing
    and it stays not reached). SLOW: retried, then failed after its tries. OPTOUT: opted out
    after its round was written, before it was sent (cancelled). LATE: refused in round 1,
    sent in round 2 (reached: one message of the incident is enough). NOADDR: no contact
    point at all, and OPTONLY: only an address opted out before the round was written, get
    no delivery: listed as no_address."""
    clock = FakeClock(START)
    for cid in ("OK", "GONE", "SLOW", "OPTOUT", "LATE"):
        await add_customer(database, cid)
    await add_customer(database, "NOADDR", email=False)
    await add_customer(database, "OPTONLY", opted_out=True)
    round_two = False

    def fail(target: Target, _message: Message) -> DeliveryError | None:
        if target.customer_id == "GONE":
            return DeliveryError(
                "550 no such mailbox", retryable=False, contact_point=ContactPointState.DISABLED
            )
        if target.customer_id == "SLOW":
            return DeliveryError("421 try later", retryable=True)
        if target.customer_id == "LATE" and not round_two:
            return DeliveryError("552 mailbox full", retryable=False)
        return None

    mail = MemoryChannel(name="mail", contact="email", fail=fail)
    engine = await Engine.create(make_settings(), database, clock, {"mail": mail}, owner="t")
    try:
        incident = await service.declare(
            database,
            clock,
            service.Declaration(
                title="Payments down", severity="major", message="m", components=["payments"]
            ),
        )
        await engine.process_due_rounds()
        async with database.session() as session, session.begin():
            await session.execute(
                update(ContactPoint)
                .where(ContactPoint.customer_id == "OPTOUT")
                .values(opted_out=True)
            )
        await engine.dispatch_all()

        counts, page = await unreached.unreached_report(database, incident.id)
        assert (counts.unreached, counts.still_trying) == (5, 1)
        assert counts.by_reason == {
            "failed": 2,
            "undelivered": 0,
            "cancelled": 1,
            "other": 0,
            "no_address": 2,
        }
        listed = {c.customer_id: c for c in page.customers}
        # By id, both kinds merged; not OK.
        assert list(listed) == ["GONE", "LATE", "NOADDR", "OPTONLY", "OPTOUT", "SLOW"]
        for cid in ("NOADDR", "OPTONLY"):
            no_address = listed[cid]
            assert (no_address.name, no_address.reason) == (f"Name {cid}", "no_address")
            assert not no_address.still_trying and no_address.channels == []
        assert page.next_after is None
        slow = listed["SLOW"]
        assert slow.still_trying and slow.reason == "trying"
        [outcome] = slow.channels
        assert outcome.state == "pending" and outcome.last_error == "421 try later"
        assert outcome.next_attempt_at is not None and outcome.next_attempt_at > clock.now()
        gone = listed["GONE"]
        assert not gone.still_trying and gone.reason == "failed"
        assert gone.channels[0].state == "failed"
        assert gone.channels[0].last_error == "550 no such mailbox"
        assert gone.channels[0].at == START  # when its failure was recorded
        assert listed["OPTOUT"].reason == "cancelled"
        assert "opted out" in (listed["OPTOUT"].channels[0].last_error or "")

        final = await unreached.unreached_page(database, incident.id, only="final")
        assert [c.customer_id for c in final.customers] == [
            "GONE",
            "LATE",
            "NOADDR",
            "OPTONLY",
            "OPTOUT",
        ]
        trying = await unreached.unreached_page(database, incident.id, only="trying")
        assert [c.customer_id for c in trying.customers] == ["SLOW"]

        # The retries run out: SLOW fails for good.
        for _ in range(3):
            clock.advance(timedelta(minutes=2))
            await engine.dispatch_all()
        counts, page = await unreached.unreached_report(database, incident.id)
        assert (counts.unreached, counts.still_trying) == (6, 0)
        slow = next(c for c in page.customers if c.customer_id == "SLOW")
        assert slow.reason == "failed" and slow.channels[0].attempts == 3
        assert slow.channels[0].next_attempt_at is None

        # Round 2 (30 min on) reaches LATE, and tries SLOW again. GONE's and OPTOUT's
        # addresses can no longer be used: round 2 writes them nothing.
        round_two = True
        clock.set(START + timedelta(minutes=30))
        await engine.process_due_rounds()
        await engine.dispatch_all()
    finally:
        await engine.aclose()

    counts, page = await unreached.unreached_report(database, incident.id)
    assert (counts.unreached, counts.still_trying) == (4, 1)
    assert counts.by_reason == {
        "failed": 1,
        "undelivered": 0,
        "cancelled": 1,
        "other": 0,
        "no_address": 2,
    }
    listed = {c.customer_id: c for c in page.customers}
    assert list(listed) == ["GONE", "NOADDR", "OPTONLY", "OPTOUT", "SLOW"]
    assert listed["NOADDR"].reason == "no_address"
    assert listed["SLOW"].still_trying and listed["SLOW"].channels[0].attempts == 1
    assert listed["GONE"].channels[0].delivery_id == gone.channels[0].delivery_id


# --- Rows written directly ----------------------------------------------------------------


async def _incident(db: Database, rounds: int = 2, **values: object) -> tuple[int, list[int]]:
    async with db.session() as session, session.begin():
        incident = Incident(
            title="t",
            severity=str(values.pop("severity", "major")),
            status=str(values.pop("status", "investigating")),
            created_at=START,
            updated_at=START,
            **values,
        )
        session.add(incident)
        await session.flush()
        made = [
            Round(
                incident_id=incident.id,
                number=n,
                kind="first" if n == 1 else "update",
                state="dispatched",
                due_at=START,
            )
            for n in range(1, rounds + 1)
        ]
        session.add_all(made)
        await session.flush()
        return incident.id, [r.id for r in made]


async def _deliver(
    db: Database,
    incident_id: int,
    round_id: int,
    customer: str,
    channel: str,
    state: str,
    *,
    error: str | None = None,
    events: list[datetime] | None = None,
) -> int:
    async with db.session() as session, session.begin():
        delivery = Delivery(
            round_id=round_id,
            incident_id=incident_id,
            customer_id=customer,
            channel=channel,
            address="x",
            state=state,
            attempts=1,
            next_attempt_at=START + timedelta(minutes=5),
            created_at=START,
            last_error=error,
        )
        session.add(delivery)
        await session.flush()
        session.add_all(
            DeliveryEvent(delivery_id=delivery.id, at=at, state=state) for at in events or []
        )
        return delivery.id


async def _customers(db: Database, *ids: str) -> None:
    async with db.session() as session, session.begin():
        for cid in ids:
            await session.execute(
                insert(Customer).values(id=cid, name=f"N {cid}", created_at=START, updated_at=START)
            )


async def test_every_reason_the_latest_delivery_per_channel_and_pages(database: Database) -> None:
    await _customers(database, "a", "b", "c", "d", "e", "f", "g")
    incident, (r1, r2) = await _incident(database)
    other, (o1, _) = await _incident(database, severity="critical")
    later = START + timedelta(minutes=7)
    await _deliver(database, incident, r1, "a", "email", "failed", error="old", events=[START])
    await _deliver(database, incident, r1, "a", "sms", "undelivered", error="30003")
    newest = await _deliver(
        database, incident, r2, "a", "email", "failed", error="550", events=[START, later]
    )
    await _deliver(database, incident, r1, "b", "sms", "undelivered")  # the carrier said no
    await _deliver(database, incident, r1, "c", "email", "cancelled", error="opted out")
    await _deliver(database, incident, r1, "d", "email", "failed")
    await _deliver(database, incident, r2, "d", "email", "delivered")  # reached in round 2
    await _deliver(database, incident, r1, "e", "email", "sent")
    await _deliver(database, incident, r2, "e", "email", "failed")  # reached in round 1
    await _deliver(database, incident, r1, "f", "email", "failed")
    await _deliver(database, incident, r2, "f", "email", "sending")  # not yet
    await _deliver(database, incident, r1, "g", "email", "rerouted")
    # Another incident: its deliveries count there only ("e" is reached here, not there).
    await _deliver(database, other, o1, "e", "email", "failed")
    await _deliver(database, other, o1, "a", "email", "sent")

    counts = await unreached.unreached_counts(database, incident)
    assert counts == unreached.UnreachedCounts(
        4, 1, {"failed": 1, "undelivered": 1, "cancelled": 1, "other": 1, "no_address": 0}
    )
    first = await unreached.unreached_page(database, incident, limit=2)
    assert [c.customer_id for c in first.customers] == ["a", "b"]
    assert first.next_after == "b"
    a = first.customers[0]
    assert (a.name, a.reason, a.still_trying) == ("N a", "failed", False)
    assert [(o.channel, o.state, o.last_error) for o in a.channels] == [
        ("email", "failed", "550"),  # the latest of round 1's and round 2's
        ("sms", "undelivered", "30003"),
    ]
    assert a.channels[0].delivery_id == newest and a.channels[0].at == later
    assert a.channels[1].at == START  # no history: when it was written
    assert a.channels[0].next_attempt_at is None
    second = await unreached.unreached_page(database, incident, after="b", limit=2)
    assert [c.customer_id for c in second.customers] == ["c", "f"]
    assert second.customers[1].reason == "trying" and second.customers[1].still_trying
    assert second.next_after == "f"
    third = await unreached.unreached_page(database, incident, after="f", limit=2)
    assert [(c.customer_id, c.reason) for c in third.customers] == [("g", "other")]
    assert third.next_after is None

    async with database.session() as session:
        both = await unreached.count_unreached(session, [incident, other])
    assert both[incident] == counts
    assert (both[other].unreached, both[other].by_reason["failed"]) == (1, 1)


async def _audience(db: Database, incident_id: int, **subscribers: list[str]) -> None:
    """Scope the incident to ``component:payments`` and ``region:north``; subscribe each
    customer to the scopes named (``payments``, ``north``, or anything else)."""
    async with db.session() as session, session.begin():
        session.add_all(
            [
                IncidentScope(incident_id=incident_id, kind="component", value="payments"),
                IncidentScope(incident_id=incident_id, kind="region", value="north"),
            ]
        )
        for cid, values in subscribers.items():
            for value in values:
                kind = "region" if value in ("north", "south") else "component"
                session.add(Subscription(customer_id=cid, kind=kind, value=value))


async def test_no_address_merged_with_the_others_in_counts_and_pages(database: Database) -> None:
    """The audience now (two scopes, one customer in both) without any delivery of the
    incident is no_address, listed with no channel, in id order among the others, the
    pages cut across both kinds; a subscriber of neither scope is not the audience."""
    await _customers(database, "a", "b", "c", "d", "e", "f", "g", "h")
    incident, (r1, _) = await _incident(database)
    async with database.session() as session, session.begin():
        await session.execute(update(Round).where(Round.id == r1).values(materialised_at=START))
    await _audience(
        database,
        incident,
        a=["payments"],
        b=["payments", "north"],  # no delivery: once, though in both scopes
        c=["north"],
        d=["north"],  # no delivery
        e=["payments"],
        f=["south"],  # no delivery, but not in the audience
        g=["payments"],  # no delivery
    )
    await _deliver(database, incident, r1, "a", "email", "failed")
    await _deliver(database, incident, r1, "c", "email", "cancelled", error="opted out")
    await _deliver(database, incident, r1, "e", "email", "sent")  # reached
    await _deliver(database, incident, r1, "h", "email", "pending")  # not subscribed now

    counts = await unreached.unreached_counts(database, incident)
    assert counts == unreached.UnreachedCounts(
        5, 1, {"failed": 1, "undelivered": 0, "cancelled": 1, "other": 0, "no_address": 3}
    )
    seen: list[tuple[str, str, int]] = []
    after: str | None = None
    for expected_next in ("b", "d", None):
        page = await unreached.unreached_page(database, incident, after=after, limit=2)
        seen += [(c.customer_id, c.reason, len(c.channels)) for c in page.customers]
        assert page.next_after == expected_next
        after = page.next_after
        if after is None:
            break
    assert seen == [
        ("a", "failed", 1),
        ("b", "no_address", 0),
        ("c", "cancelled", 1),
        ("d", "no_address", 0),
        ("g", "no_address", 0),
        ("h", "trying", 1),
    ]
    final = await unreached.unreached_page(database, incident, only="final", after="a", limit=3)
    assert [c.customer_id for c in final.customers] == ["b", "c", "d"]
    assert final.next_after == "d"
    trying = await unreached.unreached_page(database, incident, only="trying")
    assert [c.customer_id for c in trying.customers] == ["h"]
    _, whole = await unreached.unreached_report(database, incident, limit=1000)
    assert [c.customer_id for c in whole.customers] == ["a", "b", "c", "d", "g", "h"]
    # /metrics's count leaves no_address out.
    async with database.session() as session:
        metric = (await unreached.count_unreached(session, [incident]))[incident]
    assert (metric.unreached, metric.by_reason["no_address"]) == (2, 0)


async def test_no_address_only_once_a_round_was_written(database: Database) -> None:
    """Before any round of the incident is written nobody has a delivery: nobody is
    no_address yet."""
    await _customers(database, "a", "b")
    incident, _ = await _incident(database)
    await _audience(database, incident, a=["payments"], b=["north"])
    counts, page = await unreached.unreached_report(database, incident)
    assert (counts.unreached, counts.by_reason["no_address"]) == (0, 0)
    assert page.customers == []
    assert (await unreached.unreached_page(database, incident)).customers == []


async def test_an_incident_that_reached_everyone_was_purged_or_does_not_exist(
    database: Database,
) -> None:
    await _customers(database, "a")
    incident, (r1, _) = await _incident(database)
    await _deliver(database, incident, r1, "a", "email", "sent")
    counts, page = await unreached.unreached_report(database, incident)
    assert (counts.unreached, counts.still_trying, counts.purged) == (0, 0, False)
    assert page.customers == [] and page.next_after is None

    purged, (p1, _) = await _incident(
        database, status="closed", delivery_counts=[[1, "email", "failed", 3]]
    )
    await _deliver(database, purged, p1, "a", "email", "failed")  # a purge under way
    counts, page = await unreached.unreached_report(database, purged)
    assert counts.purged and counts.unreached == 0 and page.customers == []

    with pytest.raises(service.IncidentNotFound):
        await unreached.unreached_report(database, 999_999)


@pytest.mark.parametrize(
    ("after", "limit", "only", "message"),
    [
        (None, 0, None, "limit: 0 is not between 1 and 1000"),
        (None, 1001, None, "limit: 1001"),
        ("", 10, None, "after: a customer id is 1 to 64 characters"),
        ("x" * 65, 10, None, "after: a customer id is 1 to 64 characters"),
        ("a\x00b", 10, None, "after: contains a NUL character"),
        (None, 10, "failed", "only: 'failed' is not one of final, trying"),
    ],
)
def test_a_page_that_cannot_be_read_is_refused_naming_the_input(
    after: str | None, limit: int, only: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        unreached.check_page(after, limit, only)
