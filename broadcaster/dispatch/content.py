"""What a round says, loaded once per round and kept in a small cache by the dispatcher.

A round's content does not change once it is claimed (its kind and update are fixed at
claim time), so caching it by round id is safe. A dispatcher sends a whole batch at once,
so the jobs of a round not yet cached would all miss together and each load it (one
transaction per job: on SQLite, where each is ``BEGIN IMMEDIATE``, that serialised whole
batches); one load per round runs at a time, and the others wait for its result.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from broadcaster.compose.context import IncidentFacts, offers_of
from broadcaster.store import Database, Incident, IncidentScope, IncidentUpdate, Round
from rules import PlanSnapshot, SnapshotError


@dataclass(frozen=True)
class RoundContent:
    number: int
    kind: str
    facts: IncidentFacts
    urgency: str = "normal"
    """The escalation step's urgency when the round began (``low``, ``normal``, ``high``)."""
    thread: str = ""
    """The incident's conversation (:func:`thread_of`): its email thread, its push group."""


def thread_of(incident: Incident) -> str:
    """The conversation every message of ``incident`` belongs to (:attr:`Message.thread`):
    ``incident-<id>-<declared, UTC, to the second>``. The id alone would be shared by an
    incident of a store begun again (its ids start from 1 again): mail clients that thread
    by ``References`` alone, and phones grouping push notifications, would then file the
    new incident's messages under an old one's. The declaration time tells them apart and
    never changes during the incident."""
    return f"incident-{incident.id}-{incident.created_at:%Y%m%dT%H%M%S}"


def urgency_of(incident: Incident, started: datetime) -> str:
    """The urgency of the step of the incident's plan in force at ``started``; ``normal``
    without a plan (no rules) or with one that cannot be read."""
    if incident.plan is None:
        return "normal"
    try:
        plan = PlanSnapshot.from_dict(incident.plan)
    except SnapshotError:
        return "normal"
    return plan.step_at(started - incident.created_at).urgency


def facts_of(
    incident: Incident,
    update: IncidentUpdate,
    scopes: Sequence[tuple[str, str]],
    next_update_at: datetime | None,
) -> IncidentFacts:
    """What templates may say about an incident at one timeline entry."""
    return IncidentFacts(
        incident_id=incident.id,
        title=incident.title,
        severity=incident.severity,
        status=update.status,
        components=tuple(v for k, v in scopes if k == "component"),
        regions=tuple(v for k, v in scopes if k == "region"),
        summary=update.message,
        cause_kind=update.cause_kind,
        cause=update.cause,
        actions=update.actions,
        workaround=update.workaround,
        expected_resolution_at=update.expected_resolution_at,
        posted_at=update.created_at,
        next_update_at=next_update_at,
        responsibility=update.responsibility,
        regret=update.regret,
        remedy=update.remedy,
        prevention=update.prevention,
        compensation=update.compensation,
        compensation_offers=offers_of(update.compensation_offers),
    )


class RoundContents:
    def __init__(self, database: Database, size: int = 512) -> None:
        self._db = database
        self._size = size
        self._cache: OrderedDict[int, RoundContent] = OrderedDict()
        self._loading: dict[int, asyncio.Lock] = {}
        self.loads = 0
        """How many times a round's content was read from the store."""

    async def get(self, round_id: int) -> RoundContent:
        cached = self._cache.get(round_id)
        if cached is not None:
            self._cache.move_to_end(round_id)
            return cached
        lock = self._loading.setdefault(round_id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(round_id)  # loaded while this job waited
            if cached is not None:
                return cached
            content = await self._load(round_id)
            self._cache[round_id] = content
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        if self._loading.get(round_id) is lock:
            del self._loading[round_id]  # cached now: later jobs never reach the lock
        return content

    async def _load(self, round_id: int) -> RoundContent:
        self.loads += 1
        async with self._db.session() as session:
            rnd, incident, upd = (
                await session.execute(
                    select(Round, Incident, IncidentUpdate)
                    .join(Incident, Incident.id == Round.incident_id)
                    .join(IncidentUpdate, IncidentUpdate.id == Round.update_id)
                    .where(Round.id == round_id)
                )
            ).one()
            scopes = (
                await session.execute(
                    select(IncidentScope.kind, IncidentScope.value)
                    .where(IncidentScope.incident_id == incident.id)
                    .order_by(IncidentScope.id)
                )
            ).all()
        return RoundContent(
            number=rnd.number,
            kind=rnd.kind,
            facts=facts_of(incident, upd, scopes, rnd.next_due_at),
            urgency=urgency_of(incident, rnd.started_at or rnd.due_at),
            thread=thread_of(incident),
        )
