"""A resolution reported by a feed or webhook, under the rules.

Staff resolve through :func:`broadcaster.incidents.service.resolve` with the engine's
escalation: the rules add their compensation and refuse a resolution of a severe incident
that lacks the apology parts they require (cause, remedy, prevention, …). A feed cannot be
refused like an operator (the incident has ended at its source, and refusing would leave
it open here for ever), and it never carries those parts. So a feed's resolution takes the
same decision, attaches the same compensation, and resolves; the parts the rules require
and the resolution lacks are logged (``feed resolution lacks what the rules require``) and
returned, for staff to follow up.

Imported when used (by :mod:`broadcaster.intake.apply`): the escalation imports the
settings, which import the intake.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.clock import Clock
from broadcaster.escalation.plan import Escalation
from broadcaster.incidents import service
from broadcaster.store import Also, Database, Incident, IncidentUpdate
from rules import Decision

log = logging.getLogger("broadcaster.intake")


class _Recorded(Escalation):
    """The engine's escalation, with the resolution requirements recorded, not enforced."""

    def __init__(self, escalation: Escalation) -> None:
        super().__init__(escalation.settings, escalation.holder, escalation.directory)
        self.decision: Decision | None = None

    async def decide(
        self, session: AsyncSession, incident: Incident, now: datetime, *, resolving: bool = False
    ) -> Decision | None:
        decision = await super().decide(session, incident, now, resolving=resolving)
        self.decision = decision
        if decision is None:
            return None
        return dataclasses.replace(decision, required_for_resolution=frozenset())


def _given(update: IncidentUpdate, part: str) -> bool:
    if part == "cause":
        return update.cause_kind != "unknown" and bool(update.cause)
    return bool(getattr(update, part, None))


async def resolve(
    database: Database,
    clock: Clock,
    incident_id: int,
    request: service.UpdateRequest,
    escalation: Escalation | None,
    *,
    source: str,
    also: Also | None = None,
) -> list[str]:
    """Resolve as :func:`service.resolve` does with ``escalation`` (and ``also``, run in its
    transaction), never refused for what the rules require; the required parts the
    resolution lacks (sorted)."""
    if escalation is None:
        await service.resolve(database, clock, incident_id, request, also=also)
        return []
    recorded = _Recorded(escalation)
    update = await service.resolve(database, clock, incident_id, request, recorded, also=also)
    decision = recorded.decision
    if decision is None:
        return []
    missing = sorted(p for p in decision.required_for_resolution if not _given(update, p))
    if missing:
        log.warning(
            "feed resolution lacks what the rules require",
            extra={
                "incident": incident_id,
                "source": source,
                "missing": missing,
                "rules": list(decision.matched_rules),
                "compensation": update.compensation,
                "compensation_offers": update.compensation_offers,
            },
        )
    return missing
