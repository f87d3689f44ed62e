"""Claiming due rounds under a lease, and the promises a round makes and keeps.

A round is claimed in one transaction that also (first claim only):
- takes on the incident's open promise (it stays open until this round has reached its
  audience: :mod:`broadcaster.schedule.promises` settles it, kept or late);
- cancels any other pending round of the incident (this one supersedes it);
- while the incident is open, creates the next round at the cadence and records the
  promise this round's messages make ("next update by …").
The claim bumps the round's fencing token; every later write of the claimer checks it.
Each claim first settles the promises whose round has reached its audience since the last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.clock import Clock
from broadcaster.config.settings import ScheduleSettings
from broadcaster.followups.service import queue_notice
from broadcaster.incidents import lifecycle
from broadcaster.incidents.service import latest_update
from broadcaster.schedule.cadence import next_due
from broadcaster.schedule.promises import settle_promises, take_on
from broadcaster.store import Database, Incident, Promise, Round
from broadcaster.store.retry import store_unreachable

if TYPE_CHECKING:
    from broadcaster.escalation.plan import Escalation

log = logging.getLogger("broadcaster.schedule")


@dataclass(frozen=True)
class ClaimedRound:
    round_id: int
    incident_id: int
    number: int
    kind: str
    fence: int
    owner: str
    resumed: bool
    """True when this claim took over an expired lease (a crash or a stuck worker)."""
    notify_staff: tuple[str, ...] = ()
    """Staff to tell: the incident entered an escalation step that names them."""


class LostLease(RuntimeError):
    """Another worker holds the round now; stop writing for it."""


async def claim_due_round(
    database: Database,
    clock: Clock,
    settings: ScheduleSettings,
    owner: str,
    escalation: Escalation | None = None,
) -> ClaimedRound | None:
    """Claim the earliest due round (or one whose lease expired); None when nothing is due.
    Settles first the promises whose keeping round has reached its audience."""
    await _settle(database, clock, settings)
    now = clock.now()
    async with database.session() as session, session.begin():
        query = (
            select(Round)
            .where(
                or_(
                    and_(Round.state == "pending", Round.due_at <= now),
                    and_(Round.state == "materialising", Round.lease_expires_at <= now),
                )
            )
            .order_by(Round.due_at, Round.id)
            .limit(CANDIDATES if database.skip_locked else 1)
        )
        if database.skip_locked:
            query = query.with_for_update(skip_locked=True)
        found = None
        for candidate in (await session.execute(query)).scalars():
            if (
                candidate.state == "pending"
                and database.skip_locked
                and not await _incident_free(session, candidate)
            ):
                # An operator's update holds the incident, and will ask for this round's
                # lock next (it pulls the pending round forward): waiting on it here would
                # deadlock. A later sweep finds the round as the update left it; meanwhile
                # the next due round, another incident's, is taken.
                continue
            found = candidate
            break
        if found is None:
            return None
        resumed = found.state == "materialising"
        found.fence += 1
        found.lease_owner = owner
        found.lease_expires_at = now + settings.round_lease
        notify_staff: list[str] = []
        if not resumed:
            await _start_round(session, found, now, settings, escalation, notify_staff)
        return ClaimedRound(
            round_id=found.id,
            incident_id=found.incident_id,
            number=found.number,
            kind=found.kind,
            fence=found.fence,
            owner=owner,
            resumed=resumed,
            notify_staff=tuple(notify_staff),
        )


async def _settle(database: Database, clock: Clock, settings: ScheduleSettings) -> None:
    """:func:`settle_promises`, without holding up the rounds: a failure is logged and
    tried again at the next pass (one of the store's own ends the pass as it would the
    claim)."""
    try:
        await settle_promises(database, clock, settings)
    except Exception as exc:
        if store_unreachable(exc):
            raise
        log.exception("could not settle promises; trying again at the next pass")


CANDIDATES = 8
"""Due rounds a claim looks at (PostgreSQL), so that one whose incident an operator is
updating does not hold up the others."""


async def _incident_free(session: AsyncSession, found: Round) -> bool:
    """Lock the round's incident unless another transaction holds it (PostgreSQL): the lock
    order of an operator's update is incident, then round."""
    locked = await session.execute(
        select(Incident.id)
        .where(Incident.id == found.incident_id)
        # FOR NO KEY UPDATE: it waits for an operator's FOR UPDATE, but not for the key
        # share lock of a row being inserted that refers to the incident (a delivery, a
        # follow-up, a promise).
        .with_for_update(skip_locked=True, key_share=True)
    )
    return locked.scalar_one_or_none() is not None


async def _start_round(
    session: AsyncSession,
    current: Round,
    now: datetime,
    settings: ScheduleSettings,
    escalation: Escalation | None,
    notify_staff: list[str],
) -> None:
    # FOR NO KEY UPDATE (as in _incident_free): serialised with an operator's update, not
    # held up by rows being inserted that refer to the incident.
    incident = await session.get(Incident, current.incident_id, with_for_update={"key_share": True})
    if incident is None:  # the foreign key makes this impossible; say so if it happens
        raise LookupError(f"round {current.id} belongs to a missing incident")
    current.state = "materialising"
    current.started_at = now
    if current.kind == "no_news":
        last = await latest_update(session, incident.id)
        current.update_id = last.id if last else current.update_id
    # Kept once this round's messages have reached its audience, not now: a round that
    # starts on time and then cannot send (a channel down) must not count as kept.
    await take_on(session, incident.id, current.id)
    await session.execute(
        update(Round)
        .where(
            Round.incident_id == incident.id,
            Round.state == "pending",
            Round.id != current.id,
        )
        .values(state="cancelled")
    )
    tell: list[str] = []
    if escalation is not None:
        cadence, channels, tell = await escalation.cadence(session, incident, now)
        current.channels = ",".join(channels) if channels else None
    else:
        cadence = settings.cadence.for_severity(incident.severity)
    notify_staff.extend(tell)
    for staff in dict.fromkeys(tell):
        queue_notice(
            session,
            key=f"step-{incident.id}-{current.number}-{staff}",
            kind="step",
            staff=staff,
            incident_id=incident.id,
            now=now,
            round_number=current.number,
        )
    if current.kind == "resolution" or not lifecycle.is_open(incident.status):
        current.next_due_at = None
        return
    due = next_due(now, cadence)
    incident.rounds_made = max(incident.rounds_made, current.number) + 1
    session.add(
        Round(
            incident_id=incident.id,
            number=incident.rounds_made,
            kind="no_news",
            due_at=due,
            update_id=current.update_id,
        )
    )
    current.next_due_at = due
    await session.flush()
    session.add(Promise(incident_id=incident.id, made_by_round_id=current.id, due_at=due))


async def extend_lease(
    session: AsyncSession, claimed: ClaimedRound, now: datetime, lease: timedelta, **values: object
) -> None:
    """Renew the lease (and write ``values``) only while we still hold the fence."""
    result = await session.execute(
        update(Round)
        .where(
            Round.id == claimed.round_id,
            Round.fence == claimed.fence,
            Round.lease_owner == claimed.owner,
        )
        .values(lease_expires_at=now + lease, **values)
    )
    if getattr(result, "rowcount", 0) != 1:
        raise LostLease(f"round {claimed.round_id} was taken over by another worker")


async def release_round(database: Database, claimed: ClaimedRound) -> None:
    """Give the round back (clean shutdown): another worker may claim it at once."""
    async with database.session() as session, session.begin():
        await session.execute(
            update(Round)
            .where(
                Round.id == claimed.round_id,
                Round.fence == claimed.fence,
                Round.state == "materialising",
            )
            .values(
                lease_owner=None, lease_expires_at=func.coalesce(Round.started_at, Round.due_at)
            )
        )


async def next_wakeup(database: Database) -> datetime | None:
    """When the scheduler should next look: the earliest pending due time or lease expiry."""
    async with database.session() as session:
        due = (
            await session.execute(select(func.min(Round.due_at)).where(Round.state == "pending"))
        ).scalar_one_or_none()
        lease = (
            await session.execute(
                select(func.min(Round.lease_expires_at)).where(Round.state == "materialising")
            )
        ).scalar_one_or_none()
    candidates = [_aware(t) for t in (due, lease) if t is not None]
    return min(candidates) if candidates else None


def _aware(value: object) -> datetime:
    """``min()`` over a TypeDecorator column may come back raw on SQLite; normalise it."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp from the store, got {value!r}")
    return value if value.tzinfo else value.replace(tzinfo=UTC)
