"""Materialising a claimed round into delivery rows, batch by batch, resumable.

Each batch is one transaction: read the next audience page after the round's cursor,
write its deliveries with one ``INSERT … SELECT … ON CONFLICT DO NOTHING`` on (round,
customer, channel), and move the cursor (renewing the lease under the fencing token). A
crash between batches loses nothing: the next claimer resumes at the cursor, and a
replayed batch inserts nothing twice.

The insert picks each customer's contact point per channel in the database (the first by
id of the route's kind, neither opted out nor disabled), from the page's ids passed as one
parameter (a ``text[]`` on PostgreSQL, a JSON array on SQLite): no contact point travels
to the client and the statement's text is the same for every batch. Building the rows in
Python and sending them as a multi-row VALUES list cost a bound, cast parameter per
column per row, and asyncpg's executemany reported no row count.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    FromClause,
    Integer,
    Select,
    String,
    cast,
    func,
    literal,
    null,
    select,
    true,
    union_all,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeEngine

from broadcaster.audience.query import audience_batch
from broadcaster.clock import Clock
from broadcaster.config.settings import ScheduleSettings
from broadcaster.schedule.rounds import ClaimedRound, extend_lease
from broadcaster.store import ContactPoint, Database, Delivery, Round
from broadcaster.store.bulk import rows_table
from broadcaster.store.models import table_of
from broadcaster.store.types import UTCDateTime
from channels.base import EVERY_CUSTOMER

log = logging.getLogger("broadcaster.outbox")

ANALYSE_FROM = 5_000
"""Deliveries a round has written before the store's planner statistics are refreshed
(and again each time the round's count doubles): see :meth:`Database.refresh_statistics`."""
RACE_RETRIES = 3
"""Times a batch is written again, one after another, when a customer of it went (erased)
while it was being written."""


BatchHook = Callable[[AsyncSession, int, int, list[str], datetime], Awaitable[object]]
"""Called inside each batch's transaction, after its deliveries are written, with
(session, round id, incident id, customers, now): follow-ups and quiet hours."""


@dataclass(frozen=True)
class ChannelRoute:
    """A channel a round goes out on, and the contact-point kind it addresses."""

    name: str
    contact: str


async def materialise_round(
    database: Database,
    clock: Clock,
    claimed: ClaimedRound,
    routes: Sequence[ChannelRoute],
    settings: ScheduleSettings,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: BatchHook | None = None,
    committed: Callable[[], object] | None = None,
    fallbacks: Sequence[ChannelRoute] = (),
) -> int | None:
    """Write the round's deliveries; returns how many rows this call inserted, or None
    when ``should_stop`` said to stop between batches (the caller releases the round).
    ``committed`` is called after each batch that wrote deliveries has committed, so that
    dispatch can start on them while the rest of a large round is still being written.
    A customer with no usable address on any of ``routes`` gets the round on the first of
    ``fallbacks`` they can be reached on (doctrine 1: every affected customer hears).

    Raises :class:`~broadcaster.schedule.rounds.LostLease` if another worker took the
    round over; what was committed before stays (it is idempotent).
    """
    inserted = 0
    analysed = 0
    races = 0
    while True:
        if should_stop():
            return None
        if inserted >= max(2 * analysed, ANALYSE_FROM):
            await database.refresh_statistics("deliveries")
            analysed = inserted
        try:
            async with database.session() as session, session.begin():
                now = clock.now()
                cursor = (
                    await session.execute(select(Round.cursor).where(Round.id == claimed.round_id))
                ).scalar_one()
                customers = await audience_batch(
                    session, claimed.incident_id, after=cursor, limit=settings.audience_batch
                )
                if not customers:
                    await extend_lease(
                        session,
                        claimed,
                        now,
                        settings.round_lease,
                        state="dispatched",
                        materialised_at=now,
                        lease_owner=None,
                    )
                    return inserted
                wrote = 0
                if routes:
                    result = await session.execute(
                        _deliveries_insert(database, claimed, routes, customers, now, fallbacks)
                    )
                    wrote = max(getattr(result, "rowcount", 0), 0)
                    inserted += wrote
                if on_batch is not None:
                    await on_batch(session, claimed.round_id, claimed.incident_id, customers, now)
                await extend_lease(
                    session,
                    claimed,
                    now,
                    settings.round_lease,
                    cursor=customers[-1],
                    audience_size=Round.audience_size + len(customers),
                )
        except IntegrityError:
            # PostgreSQL: a customer erased (or an address removed) between the page's read
            # and the insert fails the insert's foreign key. Nothing of the batch was kept:
            # read the page again, without them; the round goes on.
            races += 1
            if races > RACE_RETRIES:
                raise
            log.info(
                "a customer of the batch went while it was written; writing it again",
                extra={"round": claimed.round_id},
            )
            continue
        races = 0
        if wrote and committed is not None:
            committed()


def _page(database: Database, customers: list[str]) -> FromClause:
    """The page's customer ids as a one-column table (``customer_id``), one parameter."""
    return rows_table(database.dialect, "page", _PAGE_COLUMNS, [(c,) for c in customers])


_PAGE_COLUMNS: list[tuple[str, TypeEngine[Any]]] = [("customer_id", String())]


def _first_point(
    page_ids: Select[Any],
    route: ChannelRoute,
    order: ColumnElement[int],
    *conditions: ColumnElement[bool],
) -> Select[str, str, int, int, str]:
    """A route's rows for the page: each customer's first usable contact point of the
    route's kind (where ``conditions`` hold), as (customer_id, channel, route,
    contact_point_id, address)."""
    first = (
        select(func.min(ContactPoint.id))
        .where(
            ContactPoint.customer_id.in_(page_ids),
            ContactPoint.kind == route.contact,
            ContactPoint.opted_out.is_(False),
            ContactPoint.disabled.is_(False),
        )
        .group_by(ContactPoint.customer_id)
    )
    return select(
        ContactPoint.customer_id.label("customer_id"),
        literal(route.name, String()).label("channel"),
        order.label("route"),
        ContactPoint.id.label("contact_point_id"),
        ContactPoint.address.label("address"),
    ).where(ContactPoint.id.in_(first), *conditions)


_CP2 = aliased(ContactPoint, name="reachable")


def _deliveries_insert(
    database: Database,
    claimed: ClaimedRound,
    routes: Sequence[ChannelRoute],
    customers: list[str],
    now: datetime,
    fallbacks: Sequence[ChannelRoute] = (),
) -> Insert:
    """``INSERT INTO deliveries … SELECT`` the page's rows: per customer and route, the first
    usable contact point of the route's kind (or, for ``EVERY_CUSTOMER``, the customer id),
    in customer then route order (the ids the rows get), ignoring rows already there. A
    customer with no usable point of any route's kind gets one row on the first fallback
    they have a usable point for."""
    page = _page(database, customers)
    page_ids = select(page.c.customer_id)
    branches = []
    if any(route.contact == EVERY_CUSTOMER for route in routes):
        fallbacks = ()  # every customer has a row already
    kinds_before = [route.contact for route in routes]
    for index, route in enumerate(fallbacks, start=len(routes)):
        if route.contact == EVERY_CUSTOMER or route.contact in kinds_before:
            continue
        reachable_before = (
            select(literal(1))
            .select_from(_CP2)
            .where(
                _CP2.customer_id == ContactPoint.customer_id,
                _CP2.kind.in_(list(kinds_before)),
                _CP2.opted_out.is_(False),
                _CP2.disabled.is_(False),
            )
            .exists()
        )
        branches.append(_first_point(page_ids, route, literal(index, Integer()), ~reachable_before))
        kinds_before.append(route.contact)
    for index, route in enumerate(routes):
        order: ColumnElement[int] = literal(index, Integer())
        if route.contact == EVERY_CUSTOMER:
            branches.append(
                select(
                    page.c.customer_id.label("customer_id"),
                    literal(route.name, String()).label("channel"),
                    order.label("route"),
                    cast(null(), BigInteger()).label("contact_point_id"),
                    page.c.customer_id.label("address"),
                )
            )
            continue
        branches.append(_first_point(page_ids, route, order))
    rows = union_all(*branches).subquery()
    at = literal(now, UTCDateTime())
    source = (
        select(
            literal(claimed.round_id, BigInteger()),
            literal(claimed.incident_id, BigInteger()),
            rows.c.customer_id,
            rows.c.channel,
            rows.c.contact_point_id,
            rows.c.address,
            literal("pending", String()),
            literal(0, Integer()),
            at,
            at,
        )
        # SQLite reads ``ON CONFLICT`` after a bare FROM as a join constraint.
        .where(true())
        .order_by(rows.c.customer_id, rows.c.route)
    )
    columns = [
        "round_id",
        "incident_id",
        "customer_id",
        "channel",
        "contact_point_id",
        "address",
        "state",
        "attempts",
        "next_attempt_at",
        "created_at",
    ]
    insert = database.insert_ignoring_duplicates(
        table_of(Delivery), "round_id", "customer_id", "channel"
    )
    return insert.from_select(columns, source)
