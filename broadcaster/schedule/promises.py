"""Settling promises: a promise is kept when customers have heard from the round that keeps
it, not when that round starts.

Every round's messages promise the next update ("next update by 14:30": a ``promises`` row,
``open``). The next round to start takes it on (its ``kept_by_round_id``, :func:`take_on`)
and it stays open until that round has *reached its audience*:

- the round is written out (``dispatched``), and
- no more than 1 % of its audience (:data:`STRAGGLERS`; none in a round of fewer than 100
  customers) still waits for its message: queued, being sent, or between retries.

Messages held for the customer's quiet hours do not count: their customers were promised
the end of their quiet hours by their own previous message (``deliveries.promised_at``),
not this round's time. A few messages retrying for a full mailbox or a dead webhook do not
hold a large round's promise open; a channel that is down does.

The promise is then settled at the moment the round reached its audience, estimated from
when its messages went out (the send after which no more than that 1 % still waited), or
when it was written out if it had no more than that to send: ``kept``, or ``late`` when that
is more than ``schedule.promise_grace`` after the promised time, with its lateness. A round
that has reached its audience also settles, at the same time, the open promises of earlier
rounds of its incident still waiting on theirs: those customers have now heard, and the
earlier messages will not go out after it (a claim cancels them).

A round that reached its audience with more than 1 % of it lost (failed for good with no
other channel after them, or cancelled: a later round reached the customer first, the
address was opted out) does not keep the promise: the next round of the incident to start
does, and it stays open (overdue past its grace) meanwhile. So a provider that refuses every
message (a revoked key) shows as a promise broken now, not as one kept. A final round (a
resolution) has no next round: it breaks the promise, settled ``late`` at once.

The leading daemon settles promises at each pass of its scheduler: :func:`settle_promises`
runs at the start of each :func:`~broadcaster.schedule.rounds.claim_due_round`, so every
``schedule.sweep_interval`` at least. Nothing of it is on the dispatch path. A pass reads the
rounds written out that keep an open promise (a few rows), and for each the deliveries of
its last customers (one index range of the round's key, :data:`TAIL` rows): while those
still wait for their first try, the round is still going out. Only then are the round's
deliveries counted (one pass over them, and one more to find when it reached its audience):
once when it has; while it has not (a channel down), again after 1, 2, 4 … 30 s.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, not_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.clock import Clock
from broadcaster.config.settings import ScheduleSettings
from broadcaster.schedule.cadence import is_late, lateness
from broadcaster.store import Database, Delivery, Promise, Round
from broadcaster.store.models import table_of

log = logging.getLogger("broadcaster.schedule")

STRAGGLERS = 100
"""A round has reached its audience when no more than one in this many of its customers
still waits for its message (1 %; rounded down, so every message of a round of fewer than
100 customers)."""

TAIL = 20
"""Deliveries at the end of a round (its last customers, written and claimed last) a pass
reads to see whether the round is still going out."""

RECOUNT_FIRST = timedelta(seconds=1)
RECOUNT_LONGEST = timedelta(seconds=30)
"""How soon a round whose outcome was counted and that had not reached its audience (a
channel down, a retry wave) is counted again: doubling from the first to the longest."""

SENT_STATES = ("sent", "delivered", "undelivered")
"""States of a delivery handed to its provider (``undelivered``: the provider said later
that it failed, and a failover then follows it as a delivery of its own)."""


@dataclass(frozen=True)
class Tally:
    """What became of a written-out round's messages, those held for quiet hours left out."""

    audience: int
    """Customers the round was written for (``rounds.audience_size``)."""
    waiting: int = 0
    """Queued, being sent, or waiting for a retry."""
    sent: int = 0
    lost: int = 0
    """Failed for good with no delivery on another channel after them, or cancelled."""

    @property
    def tolerated(self) -> int:
        """Messages that may still wait, or be lost, when the round has reached its audience."""
        return self.audience // STRAGGLERS


def verdict(tally: Tally, final: bool) -> str:
    """What a round's outcome means for the promise it keeps: ``wait`` (it has not reached
    its audience yet), ``keep`` (it has: settle it, kept or late by the time), ``pass`` (it
    lost too many: the next round keeps it) or ``broken`` (so did a final round, after which
    no round comes: late)."""
    if tally.waiting > tally.tolerated:
        return "wait"
    if tally.lost > tally.tolerated:
        return "broken" if final else "pass"
    return "keep"


def _held() -> Any:
    """A delivery held for its customer's quiet hours (and never tried): written with a
    ``next_attempt_at`` later than its creation. A retry has attempts, and a delivery put
    back by a rate limit a lease mark (:mod:`broadcaster.dispatch.claim`). Cancelled too
    when a later round held the customer again."""
    d = table_of(Delivery)
    return and_(
        d.c.state.in_(("pending", "cancelled")),
        d.c.attempts == 0,
        d.c.lease_expires_at.is_(None),
        d.c.next_attempt_at > d.c.created_at,
    )


def _first_try_to_come(
    state: str, attempts: int, lease: object, due: datetime, made: datetime
) -> bool:
    """Whether a delivery (of the rows :func:`_still_going_out` reads) is still to be tried
    for the first time, or being sent: the round it belongs to is still going out."""
    if state == "sending":
        return True
    return state == "pending" and attempts == 0 and not (lease is None and due > made)


async def _still_going_out(session: AsyncSession, round_id: int) -> bool:
    """Whether the round's last customers' messages still wait for their first try: the
    round is still going out, and need not be counted (an index range of :data:`TAIL` rows
    of the ``(round_id, customer_id, channel)`` key)."""
    d = table_of(Delivery)
    rows = await session.execute(
        select(d.c.state, d.c.attempts, d.c.lease_expires_at, d.c.next_attempt_at, d.c.created_at)
        .where(d.c.round_id == round_id)
        .order_by(d.c.customer_id.desc(), d.c.channel.desc())
        .limit(TAIL)
    )
    return any(_first_try_to_come(*row) for row in rows)


async def _tally(session: AsyncSession, round_id: int, audience: int) -> Tally:
    """Count the round's messages by what became of them: one pass over its deliveries."""
    d = table_of(Delivery)
    held = _held()

    def count(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    row = (
        await session.execute(
            select(
                count(and_(d.c.state.in_(("pending", "sending")), not_(held))),
                count(d.c.state.in_(SENT_STATES)),
                count(
                    and_(
                        not_(held),
                        or_(
                            d.c.state == "cancelled",
                            and_(d.c.state == "failed", d.c.failover_to.is_(None)),
                        ),
                    )
                ),
            ).where(d.c.round_id == round_id)
        )
    ).one()
    return Tally(audience=audience, waiting=int(row[0]), sent=int(row[1]), lost=int(row[2]))


@dataclass(frozen=True)
class _Keeping:
    """A written-out round that keeps open promises."""

    round_id: int
    incident_id: int
    audience: int
    final: bool
    """A resolution, or a round of an incident no longer open: no round comes after it."""
    written: datetime
    """When it was written out (``materialised_at``)."""


async def _reached_at(session: AsyncSession, keeper: _Keeping, tally: Tally) -> datetime:
    """When the round reached its audience: the send after which no more than the tolerated
    messages still waited (the latest but as many as have gone out since), or, when it had
    that few to send from the start, when it was written out."""
    d = table_of(Delivery)
    since = max(tally.tolerated - tally.waiting, 0)
    found: datetime | None = (
        await session.execute(
            select(d.c.sent_at)
            .where(
                d.c.round_id == keeper.round_id,
                d.c.state.in_(SENT_STATES),
                d.c.sent_at.is_not(None),
            )
            .order_by(d.c.sent_at.desc())
            .offset(since)
            .limit(1)
        )
    ).scalar_one_or_none()
    return found or keeper.written


_recounts: weakref.WeakKeyDictionary[Database, dict[int, tuple[datetime, timedelta]]] = (
    weakref.WeakKeyDictionary()
)
"""Per store, the rounds counted that had not reached their audience: when to count them
again, and the wait after that (a cache: lost, a round is counted at the next pass)."""


async def settle_promises(database: Database, clock: Clock, settings: ScheduleSettings) -> int:
    """Settle the open promises whose keeping round has reached its audience (see the module
    docstring); returns how many were settled. A round that has reached its audience also
    settles the open promises of earlier rounds of its incident still waiting on theirs:
    its customers have heard from it, and those earlier messages will not go out."""
    now = clock.now()
    async with database.session() as session:
        rows = (
            await session.execute(
                select(
                    Round.id,
                    Round.incident_id,
                    Round.audience_size,
                    Round.next_due_at,
                    Round.kind,
                    Round.materialised_at,
                )
                .where(
                    Round.state == "dispatched",
                    Round.id.in_(
                        select(Promise.kept_by_round_id).where(
                            Promise.state == "open", Promise.kept_by_round_id.is_not(None)
                        )
                    ),
                )
                .order_by(Round.id)
            )
        ).all()
    keeping = [
        _Keeping(
            round_id,
            incident,
            audience,
            next_due is None or kind == "resolution",
            written or now,  # a written-out round has its time; not to fail on one without
        )
        for round_id, incident, audience, next_due, kind, written in rows
    ]
    recounts = _recounts.setdefault(database, {})
    for stale in set(recounts) - {keeper.round_id for keeper in keeping}:
        del recounts[stale]
    settled = 0
    for keeper in keeping:  # earlier rounds first
        recount = recounts.get(keeper.round_id)
        if recount is not None and now < recount[0] and recount[0] - now <= recount[1]:
            continue  # counted lately, not reached then (a clock set back counts again)
        async with database.session() as session, session.begin():
            if await _still_going_out(session, keeper.round_id):
                continue
            tally = await _tally(session, keeper.round_id, keeper.audience)
            decided = verdict(tally, keeper.final)
            if decided == "wait":
                wait = RECOUNT_FIRST if recount is None else min(2 * recount[1], RECOUNT_LONGEST)
                recounts[keeper.round_id] = (now + wait, wait)
                continue
            recounts.pop(keeper.round_id, None)
            if decided == "pass":
                await _pass_on(session, keeper)
                log.info(
                    "a round missed more than 1 % of its audience (failed for good, or "
                    "overtaken by a later round): the next round keeps its promise",
                    extra={
                        "incident": keeper.incident_id,
                        "round_id": keeper.round_id,
                        "sent": tally.sent,
                        "lost": tally.lost,
                    },
                )
                continue
            broken = decided == "broken"
            at = now if broken else await _reached_at(session, keeper, tally)
            settled += await _settle(session, keeper, at, settings.promise_grace, broken=broken)
    return settled


async def _settle(
    session: AsyncSession, keeper: _Keeping, at: datetime, grace: timedelta, *, broken: bool
) -> int:
    """Settle, as kept by the round at ``at`` (late past their grace, or when ``broken``),
    its incident's open promises that it or an earlier round took on; guarded, so that a
    second settler changes nothing."""
    found = (
        await session.execute(
            select(Promise.id, Promise.due_at).where(
                Promise.incident_id == keeper.incident_id,
                Promise.state == "open",
                Promise.kept_by_round_id <= keeper.round_id,
            )
        )
    ).all()
    done = 0
    for promise_id, due in found:
        late = broken or is_late(due, at, grace)
        result = await session.execute(
            update(Promise)
            .where(Promise.id == promise_id, Promise.state == "open")
            .values(
                state="late" if late else "kept",
                kept_by_round_id=keeper.round_id,
                kept_at=at,
                lateness_seconds=lateness(due, at).total_seconds(),
            )
            .execution_options(synchronize_session=False)
        )
        done += max(getattr(result, "rowcount", 0), 0)
    return done


async def _pass_on(session: AsyncSession, keeper: _Keeping) -> None:
    """Hand the round's open promises to the next round of its incident that has started,
    or to none yet: the next to start takes them on (:func:`take_on`)."""
    later = (
        await session.execute(
            select(func.min(Round.id)).where(
                Round.incident_id == keeper.incident_id,
                Round.id > keeper.round_id,
                Round.started_at.is_not(None),
            )
        )
    ).scalar_one_or_none()
    await session.execute(
        update(Promise)
        .where(Promise.state == "open", Promise.kept_by_round_id == keeper.round_id)
        .values(kept_by_round_id=later)
        .execution_options(synchronize_session=False)
    )


async def take_on(session: AsyncSession, incident_id: int, round_id: int) -> None:
    """A round of the incident starts: it keeps the incident's open promises no round has
    taken on yet. They stay open until it has reached its audience (:func:`settle_promises`);
    those an earlier round took on and is still sending stay with it."""
    await session.execute(
        update(Promise)
        .where(
            Promise.incident_id == incident_id,
            Promise.state == "open",
            Promise.kept_by_round_id.is_(None),
        )
        .values(kept_by_round_id=round_id)
        .execution_options(synchronize_session=False)
    )
