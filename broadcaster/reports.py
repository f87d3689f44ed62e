"""What staff look at: one incident with its timeline, rounds, delivery counts, promises
and follow-ups, read in one go for the CLI, the API and the console alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import func, select

from broadcaster.incidents import service
from broadcaster.incidents.service import IncidentView
from broadcaster.store import Database, Delivery, Followup, Promise

K = TypeVar("K", int, str)


@dataclass(frozen=True)
class PromiseCount:
    state: str  # open | kept | late
    count: int
    worst_lateness_s: float | None


@dataclass
class IncidentReport:
    view: IncidentView
    per_round: dict[int, dict[str, int]] = field(default_factory=dict)
    """Round id → delivery state → count."""
    by_channel: dict[str, dict[str, int]] = field(default_factory=dict)
    """Channel → delivery state → count (the console's chart)."""
    capacity_warnings: list[str] = field(default_factory=list)
    """The latest written round's capacity warnings, as the daemon that wrote it found
    them (counting what other rounds had queued on its channels)."""
    followups: list[Followup] = field(default_factory=list)
    promises: list[PromiseCount] = field(default_factory=list)
    next_update_due: datetime | None = None
    """The pending round's due time: the next update customers were promised."""

    def promise_summary(self) -> dict[str, int]:
        return {p.state: p.count for p in self.promises}


def _summed(rows: Iterable[tuple[K, str, int]]) -> dict[K, dict[str, int]]:
    """key → state → count, summed, keys and states in order."""
    out: dict[K, dict[str, int]] = {}
    for key, state, count in rows:
        states = out.setdefault(key, {})
        states[state] = states.get(state, 0) + count
    return {key: dict(sorted(states.items())) for key, states in sorted(out.items())}


def by_channel(counts: Iterable[Sequence[Any]]) -> dict[str, dict[str, int]]:
    """Channel → state → count of (round, channel, state, count) rows: an incident's
    deliveries counted, or the counts it kept when they were purged."""
    return _summed((channel, state, count) for _, channel, state, count in counts)


async def incident_report(database: Database, incident_id: int) -> IncidentReport:
    """The report; :class:`service.IncidentNotFound` for an unknown id."""
    view = await service.show(database, incident_id)
    report = IncidentReport(view=view)
    counts: Sequence[Sequence[Any]] | None = view.incident.delivery_counts
    async with database.session() as session:
        if counts is None:
            counts = (
                await session.execute(
                    select(Delivery.round_id, Delivery.channel, Delivery.state, func.count())
                    .where(Delivery.incident_id == incident_id)
                    .group_by(Delivery.round_id, Delivery.channel, Delivery.state)
                )
            ).all()
        # else its deliveries are (being) purged under retention.messages: the counts it
        # kept before the first one went (broadcaster.incidents.retention).
        report.per_round = _summed((round_id, state, count) for round_id, _, state, count in counts)
        report.by_channel = by_channel(counts)
        last = next((r for r in reversed(view.rounds) if r.state == "dispatched"), None)
        if last is not None and last.capacity_warning:
            report.capacity_warnings = last.capacity_warning.split("\n")
        report.followups = list(
            (
                await session.execute(
                    select(Followup)
                    .where(Followup.incident_id == incident_id)
                    .order_by(Followup.id)
                )
            ).scalars()
        )
        report.promises = [
            PromiseCount(state, count, late)
            for state, count, late in await session.execute(
                select(Promise.state, func.count(), func.max(Promise.lateness_seconds))
                .where(Promise.incident_id == incident_id)
                .group_by(Promise.state)
                .order_by(Promise.state)
            )
        ]
    pending = [r for r in view.rounds if r.state == "pending"]
    if pending and view.incident.status not in ("resolved", "closed"):
        report.next_update_due = min(r.due_at for r in pending)
    return report
