"""What staff look at: one incident with its timeline, rounds, delivery counts, promises
and follow-ups, read in one go for the CLI, the API and the console alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.followups.service import OPEN_STATES
from broadcaster.incidents import service
from broadcaster.incidents.service import IncidentView
from broadcaster.store import Database, Delivery, Followup, Promise, Round

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
    """Its follow-ups: every one, or (``followups_shown``) the open ones first, soonest
    deadline first."""
    followup_counts: dict[str, int] = field(default_factory=dict)
    """Follow-up state → count, of every follow-up of the incident."""
    promises: list[PromiseCount] = field(default_factory=list)
    promises_overdue: int = 0
    """Open promises already broken (:func:`promise_overdue`): no round has reached the
    customers since they were made."""
    overdue_since: datetime | None = None
    """The due time of the oldest of those."""
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


def promise_overdue(now: datetime, grace: timedelta) -> ColumnElement[bool]:
    """A promise broken now and not yet settled: open, its "next update by" more than the
    promise grace (``schedule.promise_grace``) ago. A promise stays open until a round has
    reached the customers (:mod:`broadcaster.schedule.promises`), so this counts the rounds
    that did not come (the daemons down, the scheduler stuck) and those that came and could
    not send (a channel down). ``/metrics`` counts these as ``broadcaster_promises_overdue``;
    once a round reaches the customers, it is settled as late."""
    return and_(Promise.state == "open", Promise.due_at < now - grace)


FOLLOWUPS_SHOWN = 50
"""Follow-ups an incident's page and its API detail hold (open ones first, soonest deadline
first), beside the counts of all: a large incident has tens of thousands; the queue and
``/followups`` page them."""


async def rounds_overdue(session: AsyncSession, now: datetime, grace: timedelta) -> int:
    """Rounds due more than ``grace`` ago that are not yet written out to their audience
    (pending, or materialising): the leader gone or frozen, a round stuck. A first notice
    among them has made no promise yet, so ``broadcaster_promises_overdue`` cannot see it.
    A round written out whose messages do not get through (a channel down) is not counted
    here: the promise it keeps stays open, and overdue. The rounds table is small and
    indexed on (state, due_at)."""
    late = select(func.count()).where(
        Round.state.in_(("pending", "materialising")), Round.due_at < now - grace
    )
    return int((await session.execute(late)).scalar_one())


async def incident_report(
    database: Database,
    incident_id: int,
    *,
    now: datetime | None = None,
    promise_grace: timedelta = timedelta(0),
    followups_shown: int | None = None,
) -> IncidentReport:
    """The report; :class:`service.IncidentNotFound` for an unknown id. With ``now``, it
    counts the promises overdue at that time; with ``followups_shown``, it holds at most
    that many follow-ups (and the counts of all of them)."""
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
        tasks = select(Followup).where(Followup.incident_id == incident_id)
        if followups_shown is None:
            tasks = tasks.order_by(Followup.id)
        else:
            done_last = case((Followup.state.in_(OPEN_STATES), 0), else_=1)
            tasks = tasks.order_by(done_last, Followup.deadline_at, Followup.id).limit(
                followups_shown
            )
        report.followups = list((await session.execute(tasks)).scalars())
        report.followup_counts = {
            state: count
            for state, count in await session.execute(
                select(Followup.state, func.count())
                .where(Followup.incident_id == incident_id)
                .group_by(Followup.state)
                .order_by(Followup.state)
            )
        }
        report.promises = [
            PromiseCount(state, count, late)
            for state, count, late in await session.execute(
                select(Promise.state, func.count(), func.max(Promise.lateness_seconds))
                .where(Promise.incident_id == incident_id)
                .group_by(Promise.state)
                .order_by(Promise.state)
            )
        ]
        if now is not None:
            overdue, since = (
                await session.execute(
                    select(func.count(), func.min(Promise.due_at)).where(
                        Promise.incident_id == incident_id, promise_overdue(now, promise_grace)
                    )
                )
            ).one()
            report.promises_overdue = int(overdue or 0)
            report.overdue_since = since
    pending = [r for r in view.rounds if r.state == "pending"]
    if pending and view.incident.status not in ("resolved", "closed"):
        report.next_update_due = min(r.due_at for r in pending)
    return report
