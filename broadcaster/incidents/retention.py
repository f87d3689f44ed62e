"""Retention: the per-message records of incidents closed long ago are purged.

Every round writes a delivery per customer and channel, and each sent delivery a line of
history: a regional outage of a million customers on a 15-minute cadence writes millions of
rows an hour, each with a customer's address, and nothing needs them once the incident is
closed and no rule or throttle looks back at it. ``retention.messages`` says how long after
an incident is closed its deliveries, their history and its staff notices are kept; the
leading daemon purges them every ``retention.interval``, and ``broadcaster db purge`` does
it on demand (``--dry-run`` counts what would go).

What stays: the incident, its timeline, its rounds (with their audience sizes and the
promises they kept), its follow-ups and their history, and the audit log, where each purge
is recorded. Before the first delivery goes, the incident keeps its delivery counts by
round, channel and state (``incidents.delivery_counts``, migration 0012), which its report
shows from then on; once nothing is left it records when (``messages_purged_at``) and is not
looked at again.

An incident is purged only when it was closed at least ``keep`` ago (a closed incident is
never reopened) and longer ago than the longest look-back of what reads the deliveries: the
rules' customer history (``rules.history_window`` and the rules' own ``within``) and the
per-customer throttles (``delivery.throttle`` and the rules' ``throttle``), so that neither
"affected 3 times in 90 days" nor "at most 4 SMS a week" is shortened by a purge. An
incident with a message still queued or being sent (a retry, a failover, a staff notice) is
left for a later run; rows in those states are never deleted. Deliveries go in batches, one
transaction each, round by round in the order of the index that finds them (a cursor, not
an offset), so that a purge of millions never holds a long transaction; an interrupted
purge carries on where it stopped at its next run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, String, bindparam, delete, func, select, tuple_, update
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from broadcaster.access.audit import entry
from broadcaster.access.credentials import Principal
from broadcaster.config.settings import Settings
from broadcaster.store import Database, Delivery, DeliveryEvent, Incident, Round, StaffNotice
from broadcaster.store.bulk import rows_table
from broadcaster.store.models import table_of
from rules import RuleSet

log = logging.getLogger("broadcaster.retention")

_D = table_of(Delivery)
_E = table_of(DeliveryEvent)
_N = table_of(StaffNotice)
_ID_COLUMN: list[tuple[str, TypeEngine[Any]]] = [("id", BigInteger())]

QUEUED = ("pending", "sending")
"""Delivery and staff notice states still on their way: never purged."""


@dataclass
class Purged:
    """What a purge removed (or, dry, would remove)."""

    incidents: list[int] = field(default_factory=list)
    deliveries: int = 0
    events: int = 0
    notices: int = 0
    waiting: list[int] = field(default_factory=list)
    """Incidents due to be purged that still have a message queued or being sent."""

    def __str__(self) -> str:
        which = ", ".join(f"#{i}" for i in self.incidents) or "none"
        text = (
            f"{len(self.incidents)} incident(s) ({which}): {self.deliveries} deliveries, "
            f"{self.events} delivery events, {self.notices} staff notices"
        )
        if self.waiting:
            text += "; left for later, with messages still queued: " + ", ".join(
                f"#{i}" for i in self.waiting
            )
        return text


def history_window(settings: Settings, ruleset: RuleSet | None) -> timedelta:
    """The look-back of a customer's history: ``rules.history_window`` or the longest
    ``within`` of the rules, whichever is longer."""
    own = ruleset.history_window if ruleset is not None else timedelta(0)
    return max(own, settings.rules.history_window)


def lookback(settings: Settings, ruleset: RuleSet | None) -> timedelta:
    """The longest look-back of anything that reads past deliveries: the customer history
    (:func:`history_window`) and the per-customer throttles (``delivery.throttle``, a
    rule's ``throttle``)."""
    windows = [history_window(settings, ruleset)]
    windows += [throttle.per for throttle in settings.delivery.throttle.values()]
    if ruleset is not None:
        windows += [rule.throttle.per for rule in ruleset.rules if rule.throttle is not None]
    return max(windows)


def closed_before(now: datetime, keep: timedelta, look_back: timedelta) -> datetime:
    """Incidents closed before this are purged."""
    return now - max(keep, look_back)


async def purgeable(
    database: Database, now: datetime, keep: timedelta, look_back: timedelta
) -> list[int]:
    """The ids of the closed incidents whose messages are due to go, oldest first."""
    async with database.session() as session:
        found = await session.execute(
            select(Incident.id)
            .where(
                Incident.status == "closed",
                Incident.closed_at <= closed_before(now, keep, look_back),
                Incident.messages_purged_at.is_(None),
            )
            .order_by(Incident.id)
        )
        return list(found.scalars())


async def purge(
    database: Database,
    now: datetime,
    keep: timedelta,
    look_back: timedelta,
    *,
    by: Principal,
    batch: int = 5000,
    dry_run: bool = False,
    keep_going: Callable[[], bool] = lambda: True,
) -> Purged:
    """Purge (or, ``dry_run``, count) the messages of every incident :func:`purgeable`
    finds, each recorded in the audit log as done ``by`` that principal; returns what
    went. ``keep_going`` is asked before each batch: a daemon stopping, or no longer
    leading, stops there (the next run carries on) rather than finish a backlog first."""
    purged = Purged()
    for incident_id in await purgeable(database, now, keep, look_back):
        if not keep_going():
            break
        if dry_run:
            counts: tuple[int, int, int] | None = await database.transact(
                functools.partial(_counts, incident_id=incident_id)
            )
        else:
            try:
                counts = await _purge_incident(database, incident_id, now, batch, by, keep_going)
            except _Stopped:
                break
        if counts is None:
            purged.waiting.append(incident_id)
            continue
        deliveries, events, notices = counts
        purged.incidents.append(incident_id)
        purged.deliveries += deliveries
        purged.events += events
        purged.notices += notices
    return purged


class _Stopped(Exception):
    """``keep_going`` said stop."""


async def _purge_incident(
    database: Database,
    incident_id: int,
    now: datetime,
    batch: int,
    by: Principal,
    keep_going: Callable[[], bool],
) -> tuple[int, int, int] | None:
    """Keep the incident's delivery counts, delete its messages batch by batch, then mark
    it and record it; None when it has messages still queued. Raises :class:`_Stopped`
    when ``keep_going`` stopped it before the end (the next run carries on)."""
    rounds = await database.transact(functools.partial(_keep_counts, incident_id=incident_id))
    if rounds is None:
        log.info(
            "an incident due to be purged still has messages queued; it is left for later",
            extra={"incident": incident_id},
        )
        return None
    deliveries = events = 0
    for round_id in rounds:
        after: tuple[str, str] | None = None
        while True:
            if not keep_going():
                log.info(
                    "purge stopped halfway; the next run carries on",
                    extra={"incident": incident_id, "deliveries": deliveries},
                )
                raise _Stopped
            gone, history, after = await database.transact(
                functools.partial(_delete_batch, round_id=round_id, after=after, batch=batch)
            )
            deliveries += gone
            events += history
            if after is None:
                break
    done = await database.transact(
        functools.partial(
            _finish,
            incident_id=incident_id,
            now=now,
            by=by,
            purged=(deliveries, events),
        )
    )
    if done is None:
        log.info(
            "an incident's messages were purged but for some still queued; it is left for later",
            extra={"incident": incident_id, "deliveries": deliveries},
        )
        return None
    log.info(
        "purged the messages of a closed incident",
        extra={
            "incident": incident_id,
            "deliveries": deliveries,
            "events": events,
            "notices": done,
        },
    )
    return deliveries, events, done


def _rounds(session: Session, incident_id: int) -> list[int]:
    return list(
        session.execute(
            select(Round.id).where(Round.incident_id == incident_id).order_by(Round.id)
        ).scalars()
    )


def _deliveries_left(connection: Any, incident_id: int, *, queued: bool = False) -> int:
    """The incident's deliveries still in the store (only those still queued, with
    ``queued``); found through its rounds, which lead the index on deliveries."""
    rounds = select(Round.id).where(Round.incident_id == incident_id)
    query = select(func.count()).select_from(_D).where(_D.c.round_id.in_(rounds))
    if queued:
        query = query.where(_D.c.state.in_(QUEUED))
    return int(connection.execute(query).scalar_one())


def _notices_left(connection: Any, incident_id: int, *, queued: bool = False) -> int:
    """The incident's staff notices still in the store (only those still queued)."""
    query = select(func.count()).select_from(_N).where(_N.c.incident_id == incident_id)
    if queued:
        query = query.where(_N.c.state.in_(QUEUED))
    return int(connection.execute(query).scalar_one())


def _keep_counts(session: Session, incident_id: int) -> list[int] | None:
    """Write the incident's delivery counts by round, channel and state onto it, once,
    before any delivery goes; None (and nothing written) while one of its deliveries or
    notices is still queued. Returns its rounds' ids."""
    incident = session.get(Incident, incident_id)
    if incident is None:
        return None
    rounds = _rounds(session, incident_id)
    if incident.delivery_counts is not None:  # an earlier run began: the counts are kept
        return rounds
    connection = session.connection()
    counts = [
        [round_id, channel, state, int(count)]
        for round_id, channel, state, count in connection.execute(
            select(_D.c.round_id, _D.c.channel, _D.c.state, func.count())
            .where(_D.c.round_id.in_(rounds))
            .group_by(_D.c.round_id, _D.c.channel, _D.c.state)
            .order_by(_D.c.round_id, _D.c.channel, _D.c.state)
        )
    ]
    if _notices_left(connection, incident_id, queued=True) or any(
        state in QUEUED for _, _, state, _ in counts
    ):
        return None
    incident.delivery_counts = counts
    return rounds


def _delete_batch(
    session: Session, round_id: int, after: tuple[str, str] | None, batch: int
) -> tuple[int, int, tuple[str, str] | None]:
    """Delete up to ``batch`` of the round's settled deliveries after the cursor ``after``
    (customer, channel: the order of the round's unique index) and their history; returns
    how many of each, and the cursor to go on from (None: the round is done). The history
    goes first, explicitly, to be counted; the ids are read once, so that both statements
    take the same deliveries. A cursor, not an offset: on PostgreSQL the deleted rows'
    index entries stay until VACUUM, and each batch would walk over all the earlier ones."""
    connection = session.connection()
    dialect = connection.dialect.name
    query = select(_D.c.id, _D.c.customer_id, _D.c.channel).where(
        _D.c.round_id == round_id, _D.c.state.not_in(QUEUED)
    )
    if after is not None:
        query = query.where(
            tuple_(_D.c.customer_id, _D.c.channel)
            > tuple_(
                bindparam("after_customer", after[0], type_=String()),
                bindparam("after_channel", after[1], type_=String()),
            )
        )
    rows = connection.execute(query.order_by(_D.c.customer_id, _D.c.channel).limit(batch)).all()
    if not rows:
        return 0, 0, None
    taken = select(rows_table(dialect, "purged", _ID_COLUMN, [(row[0],) for row in rows]).c.id)
    events = connection.execute(delete(_E).where(_E.c.delivery_id.in_(taken))).rowcount
    gone = connection.execute(delete(_D).where(_D.c.id.in_(taken))).rowcount
    cursor = (rows[-1][1], rows[-1][2]) if len(rows) == batch else None
    return max(gone, 0), max(events, 0), cursor


def _finish(
    session: Session,
    incident_id: int,
    now: datetime,
    by: Principal,
    purged: tuple[int, int],
) -> int | None:
    """Delete the incident's settled staff notices; when none of its deliveries or notices
    is left, mark it purged and record it in the audit log (one transaction). Returns the
    notices deleted, or None when something is left (queued since the counts were kept)."""
    connection = session.connection()
    notices = max(
        connection.execute(
            delete(_N).where(_N.c.incident_id == incident_id, _N.c.state.not_in(QUEUED))
        ).rowcount,
        0,
    )
    if _deliveries_left(connection, incident_id) or _notices_left(connection, incident_id):
        return None
    connection.execute(
        update(Incident)
        .where(Incident.id == incident_id, Incident.messages_purged_at.is_(None))
        .values(messages_purged_at=now)
    )
    deliveries, events = purged
    session.add(
        entry(
            by,
            "messages.purge",
            f"incident:{incident_id}",
            by.kind,
            now,
            detail={"deliveries": deliveries, "events": events, "notices": notices},
        )
    )
    return notices


def _counts(session: Session, incident_id: int) -> tuple[int, int, int] | None:
    """What a purge of the incident would delete; None while it has messages queued."""
    connection = session.connection()
    if _deliveries_left(connection, incident_id, queued=True) or _notices_left(
        connection, incident_id, queued=True
    ):
        return None
    rounds = select(Round.id).where(Round.incident_id == incident_id)
    events = connection.execute(
        select(func.count())
        .select_from(_E.join(_D, _D.c.id == _E.c.delivery_id))
        .where(_D.c.round_id.in_(rounds))
    ).scalar_one()
    return (
        _deliveries_left(connection, incident_id),
        int(events),
        _notices_left(connection, incident_id),
    )
