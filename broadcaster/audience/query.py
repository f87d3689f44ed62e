"""The affected customers of an incident: subscribed to one of its components or regions.

Read in keyset-paginated batches ordered by customer id (``WHERE id > :after LIMIT n``),
so memory stays flat however large the audience, and a round interrupted after a batch
resumes from its stored cursor.
"""

from __future__ import annotations

from sqlalchemy import Select, and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.store import IncidentScope, Subscription


def audience_query(incident_id: int, after: str | None, limit: int) -> Select[str]:
    """Distinct customer ids subscribed to the incident's scope, after ``after``, in order."""
    query = (
        select(Subscription.customer_id)
        .join(
            IncidentScope,
            and_(
                IncidentScope.kind == Subscription.kind, IncidentScope.value == Subscription.value
            ),
        )
        .where(IncidentScope.incident_id == incident_id)
        .distinct()
        .order_by(Subscription.customer_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(Subscription.customer_id > after)
    return query


async def audience_batch(
    session: AsyncSession, incident_id: int, *, after: str | None, limit: int
) -> list[str]:
    """The next ``limit`` affected customer ids after ``after``."""
    result = await session.execute(audience_query(incident_id, after, limit))
    return list(result.scalars())


async def audience_size(session: AsyncSession, incident_id: int) -> int:
    """How many customers the incident affects (one COUNT, no rows loaded)."""
    inner = audience_query(incident_id, None, 2**62).order_by(None).limit(None).subquery()
    result = await session.execute(select(func.count()).select_from(inner))
    return int(result.scalar_one())
