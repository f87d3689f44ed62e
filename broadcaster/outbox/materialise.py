"""Materialising a claimed round into delivery rows, batch by batch, resumable.

Each batch is one transaction: read the next audience page after the round's cursor,
pick each customer's contact point per channel, bulk-insert the deliveries with
``ON CONFLICT DO NOTHING`` on (round, customer, channel), and move the cursor (renewing
the lease under the fencing token). A crash between batches loses nothing: the next
claimer resumes at the cursor, and a replayed batch inserts nothing twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.audience.query import audience_batch
from broadcaster.clock import Clock
from broadcaster.config.settings import ScheduleSettings
from broadcaster.schedule.rounds import ClaimedRound, extend_lease
from broadcaster.store import ContactPoint, Database, Delivery, Round
from broadcaster.store.models import table_of

EVERY_CUSTOMER = "customer"
"""A channel whose contact kind is ``customer`` reaches every affected customer, addressed by
id (a fixed-URL webhook into a CRM, say); no contact point is needed."""


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
) -> int | None:
    """Write the round's deliveries; returns how many rows this call inserted, or None
    when ``should_stop`` said to stop between batches (the caller releases the round).

    Raises :class:`~broadcaster.schedule.rounds.LostLease` if another worker took the
    round over; what was committed before stays (it is idempotent).
    """
    kinds = sorted({route.contact for route in routes})
    insert = database.insert_ignoring_duplicates(
        table_of(Delivery), "round_id", "customer_id", "channel"
    )
    inserted = 0
    while True:
        if should_stop():
            return None
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
            contacts = await session.execute(
                select(
                    ContactPoint.customer_id,
                    ContactPoint.kind,
                    ContactPoint.id,
                    ContactPoint.address,
                )
                .where(
                    ContactPoint.customer_id.in_(customers),
                    ContactPoint.kind.in_(kinds),
                    ContactPoint.opted_out.is_(False),
                    ContactPoint.disabled.is_(False),
                )
                .order_by(ContactPoint.customer_id, ContactPoint.id)
            )
            first: dict[tuple[str, str], tuple[int | None, str]] = {}
            for customer_id, kind, point_id, address in contacts:
                first.setdefault((customer_id, kind), (point_id, address))
            rows = []
            for customer_id in customers:
                for route in routes:
                    point = first.get((customer_id, route.contact))
                    if route.contact == EVERY_CUSTOMER:
                        point = (None, customer_id)
                    if point is None:
                        continue
                    rows.append(
                        {
                            "round_id": claimed.round_id,
                            "incident_id": claimed.incident_id,
                            "customer_id": customer_id,
                            "channel": route.name,
                            "contact_point_id": point[0],
                            "address": point[1],
                            "state": "pending",
                            "attempts": 0,
                            "next_attempt_at": now,
                            "created_at": now,
                        }
                    )
            if rows:
                result = await session.execute(insert, rows)
                inserted += max(getattr(result, "rowcount", 0), 0)
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
