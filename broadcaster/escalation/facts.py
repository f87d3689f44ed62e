"""Facts for the rules, read from the store: the incident's and each customer's."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.audience.query import audience_size
from broadcaster.store import Customer, Delivery, Followup, Incident, IncidentScope
from rules import CustomerFacts, IncidentFacts
from rules.facts import zone

log = logging.getLogger("broadcaster.escalation")

RULE_STATUS = {"closed": "resolved"}


async def incident_facts(session: AsyncSession, incident: Incident) -> IncidentFacts:
    scopes = (
        await session.execute(
            select(IncidentScope.kind, IncidentScope.value).where(
                IncidentScope.incident_id == incident.id
            )
        )
    ).all()
    return IncidentFacts(
        severity=incident.severity,
        status=RULE_STATUS.get(incident.status, incident.status),
        started_at=incident.created_at,
        components=frozenset(v for k, v in scopes if k == "component"),
        regions=frozenset(v for k, v in scopes if k == "region"),
        source=incident.source,
        affected_customers=await audience_size(session, incident.id),
        resolved_at=incident.resolved_at,
        labels=dict(incident.labels or {}),
    )


async def load_customers(session: AsyncSession, customer_ids: Sequence[str]) -> list[Customer]:
    result = await session.execute(select(Customer).where(Customer.id.in_(customer_ids)))
    return list(result.scalars().all())


async def customer_facts(
    session: AsyncSession,
    customers: Sequence[Customer],
    now: datetime,
    window: timedelta,
) -> dict[str, CustomerFacts]:
    """Facts for a batch of (loaded) customers: profile, incidents that hit them in the
    window (those they were sent something about), open follow-ups."""
    customer_ids = [c.id for c in customers]
    hits = await session.execute(
        select(Delivery.customer_id, Incident.created_at)
        .join(Incident, Incident.id == Delivery.incident_id)
        .where(Delivery.customer_id.in_(customer_ids), Incident.created_at >= now - window)
        .group_by(Delivery.customer_id, Incident.id, Incident.created_at)
    )
    history: dict[str, list[datetime]] = {}
    for customer_id, started in hits:
        history.setdefault(customer_id, []).append(started)
    open_counts = dict(
        (
            await session.execute(
                select(Followup.customer_id, func.count())
                .where(
                    Followup.customer_id.in_(customer_ids),
                    Followup.state.in_(("open", "claimed")),
                )
                .group_by(Followup.customer_id)
            )
        ).all()
    )
    return {
        c.id: CustomerFacts(
            id=c.id,
            tier=c.tier or "standard",
            tags=frozenset(t for t in (c.tags or "").split(",") if t),
            language=c.language,
            region=c.region,
            timezone=_known_zone(c),
            incident_history=tuple(sorted(history.get(c.id, ()))),
            open_followups=int(open_counts.get(c.id, 0)),
            sla=c.sla,
        )
        for c in customers
    }


def _known_zone(customer: Customer) -> str:
    """The customer's time zone, or UTC (with a warning) when this host does not know it: a
    row imported where the time zone data differs must not stop its whole round."""
    try:
        zone(customer.timezone)
    except ValueError:
        log.warning(
            "unknown time zone; the rules take UTC for this customer",
            extra={"customer": customer.id, "timezone": customer.timezone},
        )
        return "UTC"
    return customer.timezone
