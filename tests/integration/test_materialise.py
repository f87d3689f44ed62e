"""Materialising a round into deliveries, and the audience pages it reads, on both stores."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any
from unittest.mock import ANY

import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.audience.query import (
    audience_batch,
    audience_page_query,
    audience_query,
    audience_size,
)
from broadcaster.clock import FakeClock
from broadcaster.config.settings import ScheduleSettings
from broadcaster.incidents import service
from broadcaster.outbox import materialise as materialise_module
from broadcaster.outbox.materialise import ChannelRoute, materialise_round
from broadcaster.schedule.rounds import ClaimedRound, claim_due_round
from broadcaster.store import (
    ContactPoint,
    Customer,
    Database,
    Delivery,
    IncidentScope,
    Round,
    Subscription,
)
from broadcaster.store.models import table_of
from channels.base import EVERY_CUSTOMER

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
ROUTES = [
    ChannelRoute("mail", "email"),
    ChannelRoute("text", "sms"),
    ChannelRoute("crm", EVERY_CUSTOMER),
    ChannelRoute("mail-copy", "email"),
]


async def add_customer(
    session: AsyncSession,
    customer_id: str,
    subscriptions: list[tuple[str, str]],
    points: list[tuple[str, str, bool, bool]],
) -> list[int]:
    """points: (kind, address, opted_out, disabled), written in this order (ascending ids)."""
    await session.execute(
        insert(Customer).values(
            id=customer_id, name=customer_id, created_at=START, updated_at=START
        )
    )
    for kind, value in subscriptions:
        await session.execute(
            insert(Subscription).values(customer_id=customer_id, kind=kind, value=value)
        )
    ids = []
    for kind, address, opted_out, disabled in points:
        result = await session.execute(
            insert(ContactPoint)
            .values(
                customer_id=customer_id,
                kind=kind,
                address=address,
                opted_out=opted_out,
                disabled=disabled,
                updated_at=START,
            )
            .returning(ContactPoint.id)
        )
        ids.append(result.scalar_one())
    return ids


async def payments_round(database: Database, clock: FakeClock, prefix: str, n: int) -> None:
    """``n`` customers ``<prefix>0``… subscribed to the payments component, one email each,
    and a major incident declared for them."""
    async with database.session() as session, session.begin():
        for i in range(n):
            await add_customer(
                session,
                f"{prefix}{i}",
                [("component", "payments")],
                [("email", f"{prefix.lower()}{i}@example.org", False, False)],
            )
    await service.declare(
        database, clock, service.Declaration("t", "major", "m", components=["payments"])
    )


async def claim(database: Database, clock: FakeClock, batch: int) -> ClaimedRound:
    claimed = await claim_due_round(database, clock, ScheduleSettings(audience_batch=batch), "t")
    assert claimed is not None
    return claimed


async def delivery_rows(database: Database) -> list[tuple[Any, ...]]:
    async with database.session() as session:
        result = await session.execute(
            select(
                Delivery.customer_id,
                Delivery.channel,
                Delivery.contact_point_id,
                Delivery.address,
                Delivery.state,
                Delivery.attempts,
                Delivery.next_attempt_at,
            ).order_by(Delivery.id)
        )
        return [tuple(row) for row in result]


async def test_rows_are_the_first_usable_contact_point_per_route(database: Database) -> None:
    clock = FakeClock(START)
    async with database.session() as session, session.begin():
        c1 = await add_customer(
            session,
            "C1",
            [("component", "payments")],
            [
                ("email", "c1-opted-out@example.org", True, False),
                ("email", "c1-first@example.org", False, False),
                ("email", "c1-second@example.org", False, False),
                ("sms", "+31600000001", False, True),  # disabled: no SMS
            ],
        )
        c2 = await add_customer(
            session,
            "C2",
            [("region", "north")],
            [
                ("sms", "+31600000002", False, False),
                ("email", "c2-disabled@example.org", False, True),
                ("email", "c2@example.org", False, False),
            ],
        )
        await add_customer(session, "C3", [("component", "payments")], [])
        c4 = await add_customer(
            session,
            "C4",
            [("component", "payments"), ("region", "north")],  # in both scopes: once
            [("sms", "+31600000004", False, False), ("sms", "+31600000044", False, False)],
        )
        await add_customer(
            session, "Z9", [("component", "web")], [("email", "z9@example.org", False, False)]
        )
    incident = await service.declare(
        database,
        clock,
        service.Declaration("t", "major", "m", components=["payments"], regions=["north"]),
    )
    claimed = await claim(database, clock, batch=3)
    pages: list[list[str]] = []

    async def on_batch(
        session: AsyncSession, round_id: int, incident_id: int, ids: list[str], now: datetime
    ) -> None:
        assert (round_id, incident_id, now) == (claimed.round_id, incident.id, START)
        # Inside the batch's transaction: its deliveries are already visible.
        written = await session.execute(
            select(Delivery.customer_id).where(Delivery.customer_id.in_(ids)).distinct()
        )
        assert set(written.scalars()) == set(ids)
        pages.append(ids)

    settings = ScheduleSettings(audience_batch=3)
    inserted = await materialise_round(
        database, clock, claimed, ROUTES, settings, on_batch=on_batch
    )

    assert pages == [["C1", "C2", "C3"], ["C4"]]
    expected = [
        ("C1", "mail", c1[1], "c1-first@example.org"),
        ("C1", "crm", None, "C1"),
        ("C1", "mail-copy", c1[1], "c1-first@example.org"),
        ("C2", "mail", c2[2], "c2@example.org"),
        ("C2", "text", c2[0], "+31600000002"),
        ("C2", "crm", None, "C2"),
        ("C2", "mail-copy", c2[2], "c2@example.org"),
        ("C3", "crm", None, "C3"),
        ("C4", "text", c4[0], "+31600000004"),
        ("C4", "crm", None, "C4"),
    ]
    rows = await delivery_rows(database)
    assert [row[:4] for row in rows] == expected  # in customer, then route, order of ids
    assert {row[4:] for row in rows} == {("pending", 0, START)}
    assert inserted == len(expected)
    async with database.session() as session:
        done = (
            await session.execute(select(Round).where(Round.id == claimed.round_id))
        ).scalar_one()
    assert (done.state, done.cursor, done.audience_size) == ("dispatched", "C4", 4)
    assert done.materialised_at == START


async def test_a_customer_unreachable_on_the_round_s_channels_gets_it_on_a_fallback(
    database: Database,
) -> None:
    """A round on email only (an early escalation step): a customer with a phone and no
    usable email gets it by SMS, the first fallback they can be reached on; customers with
    an email get no second copy, and one reachable nowhere gets nothing."""
    clock = FakeClock(START)
    async with database.session() as session, session.begin():
        await add_customer(
            session, "A1", [("component", "payments")], [("email", "a1@example.org", False, False)]
        )
        phone = await add_customer(
            session,
            "A2",
            [("component", "payments")],
            [("email", "a2@example.org", True, False), ("sms", "+31600000002", False, False)],
        )
        await add_customer(
            session, "A3", [("component", "payments")], [("sms", "+31600000003", False, True)]
        )
    await service.declare(
        database, clock, service.Declaration("t", "major", "m", components=["payments"])
    )
    claimed = await claim(database, clock, batch=10)
    fallbacks = [ChannelRoute("push", "push"), ChannelRoute("text", "sms")]

    await materialise_round(
        database,
        clock,
        claimed,
        [ChannelRoute("mail", "email")],
        ScheduleSettings(audience_batch=10),
        fallbacks=fallbacks,
    )

    assert [row[:4] for row in await delivery_rows(database)] == [
        ("A1", "mail", ANY, "a1@example.org"),
        ("A2", "text", phone[1], "+31600000002"),
    ]


async def test_a_replayed_round_counts_only_the_rows_it_wrote(database: Database) -> None:
    clock = FakeClock(START)
    await payments_round(database, clock, "K", 7)
    claimed = await claim(database, clock, batch=2)
    routes = [ChannelRoute("mail", "email"), ChannelRoute("crm", EVERY_CUSTOMER)]
    settings = ScheduleSettings(audience_batch=2)
    assert await materialise_round(database, clock, claimed, routes, settings) == 14

    # A crash lost K3's and K5's rows (say) before the round was done: the replay from
    # the start writes those again, and counts just them.
    async with database.session() as session, session.begin():
        await session.execute(
            delete(table_of(Delivery)).where(Delivery.customer_id.in_(["K3", "K5"]))
        )
        await session.execute(
            update(table_of(Round))
            .where(Round.id == claimed.round_id)
            .values(state="materialising", cursor=None, lease_expires_at=START)
        )
    clock.advance(1)
    again = await claim(database, clock, batch=2)
    assert again.resumed
    assert await materialise_round(database, clock, again, routes, settings) == 4
    assert len(await delivery_rows(database)) == 14


async def test_stopping_between_batches_resumes_at_the_cursor(database: Database) -> None:
    clock = FakeClock(START)
    await payments_round(database, clock, "S", 5)
    claimed = await claim(database, clock, batch=2)
    settings = ScheduleSettings(audience_batch=2)
    calls = 0

    def stop_after_one_batch() -> bool:
        nonlocal calls
        calls += 1
        return calls > 1

    routes = [ChannelRoute("mail", "email")]
    assert (
        await materialise_round(database, clock, claimed, routes, settings, stop_after_one_batch)
        is None
    )
    assert [row[0] for row in await delivery_rows(database)] == ["S0", "S1"]
    assert await materialise_round(database, clock, claimed, routes, settings) == 3
    assert [row[0] for row in await delivery_rows(database)] == [f"S{n}" for n in range(5)]


async def test_pages_are_the_definitions_pages(database: Database) -> None:
    """Per-scope pages, merged, give exactly the plain join's pages (random data)."""
    rng = random.Random(8)
    scopes = [("component", "payments"), ("component", "web"), ("region", "north")]
    others = [("component", "mobile"), ("region", "south")]
    clock = FakeClock(START)
    async with database.session() as session, session.begin():
        for n in range(120):
            chosen = [s for s in scopes + others if rng.random() < 0.3]
            await add_customer(session, f"R{rng.randrange(10**6):06d}-{n}", chosen, [])
    incident = await service.declare(
        database,
        clock,
        service.Declaration("t", "major", "m", components=["payments", "web"], regions=["north"]),
    )
    async with database.session() as session:
        stored = (
            await session.execute(
                select(IncidentScope.kind, IncidentScope.value).where(
                    IncidentScope.incident_id == incident.id
                )
            )
        ).all()
        assert sorted(stored) == sorted(scopes)
        everyone = list((await session.execute(audience_query(incident.id, None, 10**6))).scalars())
        assert 30 < len(everyone) < 120  # some customers are outside the scopes
        assert await audience_size(session, incident.id) == len(everyone)
        for limit in (1, 2, 7, 50, 1000):
            after: str | None = None
            read: list[str] = []
            while page := await audience_batch(session, incident.id, after=after, limit=limit):
                expected = (
                    await session.execute(audience_query(incident.id, after, limit))
                ).scalars()
                assert page == list(expected)
                read += page
                after = page[-1]
            assert read == everyone


async def test_an_incident_without_scopes_has_no_audience(database: Database) -> None:
    async with database.session() as session:
        assert await audience_batch(session, 12345, after=None, limit=10) == []
        assert (await session.execute(audience_page_query([], None, 10))).all() == []


async def test_a_growing_round_refreshes_the_planner_statistics(
    database: Database, monkeypatch: Any
) -> None:
    """Each time the round's rows double past ANALYSE_FROM the store's statistics are
    refreshed (PostgreSQL: ANALYZE), so claims are planned for the table as it is."""
    import broadcaster.outbox.materialise as materialise

    monkeypatch.setattr(materialise, "ANALYSE_FROM", 2)
    refreshed: list[tuple[str, int]] = []
    original = database.refresh_statistics

    async def counting(table: str) -> None:
        refreshed.append((table, len(await delivery_rows(database))))
        await original(table)

    monkeypatch.setattr(database, "refresh_statistics", counting)
    clock = FakeClock(START)
    await payments_round(database, clock, "A", 9)
    claimed = await claim(database, clock, batch=2)
    routes = [ChannelRoute("mail", "email")]
    settings = ScheduleSettings(audience_batch=2)
    assert await materialise_round(database, clock, claimed, routes, settings) == 9
    assert refreshed == [("deliveries", 2), ("deliveries", 4), ("deliveries", 8)]
    if database.dialect == "postgresql":
        async with database.session() as session:
            estimate = (
                await session.execute(
                    text("SELECT reltuples FROM pg_class WHERE relname = 'deliveries'")
                )
            ).scalar_one()
        assert estimate == 8  # as ANALYZE counted them before the last batch


async def test_each_batch_that_wrote_deliveries_is_announced_once_committed(
    database: Database,
) -> None:
    """The daemon wakes its dispatch workers with ``committed``: after each batch's
    transaction, so a large round's first deliveries go out while the rest is written."""
    clock = FakeClock(START)
    await payments_round(database, clock, "W", 7)
    claimed = await claim(database, clock, batch=2)
    settings = ScheduleSettings(audience_batch=2)
    calls: list[tuple[str, int]] = []

    def in_use() -> int:
        checked_out: int = database.engine.pool.checkedout()  # type: ignore[attr-defined]
        return checked_out

    async def on_batch(*_: object) -> None:
        calls.append(("batch", in_use()))

    def committed() -> None:
        calls.append(("committed", in_use()))

    routes = [ChannelRoute("mail", "email")]
    assert (
        await materialise_round(
            database, clock, claimed, routes, settings, on_batch=on_batch, committed=committed
        )
        == 7
    )
    # Four batches (2 + 2 + 2 + 1 customers), each announced after its transaction let go
    # of its connection; the last, empty page announces nothing.
    assert calls == [("batch", 1), ("committed", 0)] * 4

    # A round whose routes reach nobody writes no deliveries and wakes nobody.
    calls.clear()
    await payments_round(database, clock, "N", 3)
    clock.advance(1)
    quiet = await claim(database, clock, batch=2)
    assert await materialise_round(database, clock, quiet, [], settings, committed=committed) == 0
    assert calls == []


async def test_a_customer_erased_while_a_page_is_written_does_not_fail_the_round(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the page's insert failed its foreign key when a customer of it was
    erased between the page's read and the insert: the batch was lost and the round waited
    out its lease. (SQLite's batch holds the write lock: the race cannot happen there.)"""
    clock = FakeClock(START)
    await payments_round(database, clock, "C", 5)
    claimed = await claim(database, clock, 100)
    original = materialise_module.audience_batch  # type: ignore[attr-defined]
    erased: list[str] = []

    async def page_then_erase(session: Any, incident_id: int, *, after: Any, limit: int) -> Any:
        page = await original(session, incident_id, after=after, limit=limit)
        if database.dialect == "postgresql" and not erased:
            erased.append("C2")
            async with database.engine.begin() as other:  # DELETE /api/v1/customers/C2
                await other.execute(delete(Customer).where(Customer.id == "C2"))
        return page

    monkeypatch.setattr(materialise_module, "audience_batch", page_then_erase)
    routes = [ChannelRoute("crm", EVERY_CUSTOMER)]
    written = await materialise_round(
        database, clock, claimed, routes, ScheduleSettings(audience_batch=100)
    )
    expected = 4 if database.dialect == "postgresql" else 5
    assert written == expected
