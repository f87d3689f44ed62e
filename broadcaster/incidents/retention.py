"""Retention: the per-message records of incidents closed long ago are purged.

Every round writes a delivery per customer and channel, and each sent delivery a line of
history: a regional outage of a million customers on a 15-minute cadence writes millions of
rows an hour, each with a customer's address, and nothing needs them once the incident is
closed and the rules no longer count it in a customer's history. ``retention.messages`` says
how long after an incident is closed its deliveries, their history and its staff notices
are kept; the leading daemon purges them every ``retention.interval``, and ``broadcaster db
purge`` does it on demand (``--dry-run`` counts what would go).

What stays: the incident, its timeline, its rounds (with their audience sizes and the
promises they kept), its follow-ups and their history, and the audit log. The incident
records when its messages were purged (``incidents.messages_purged_at``, migration 0012), so
its report says its delivery counts are gone rather than showing none, and it is not looked
at again.

An incident is purged only when closed at least ``keep`` ago (a closed incident is never
reopened) and declared before the longest history window the rules count
(``rules.history_window`` and the rules' own windows): a rule's "affected 3 times in 90
days" reads the deliveries, and a purge must not shorten it. Deliveries go in batches, one
transaction each, round by round (the round leads the index that finds them), so that a
purge of millions never holds a long transaction; an interrupted purge carries on where it
stopped at its next run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, delete, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

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


@dataclass
class Purged:
    """What a purge removed (or, dry, would remove)."""

    incidents: list[int] = field(default_factory=list)
    deliveries: int = 0
    events: int = 0
    notices: int = 0

    def __str__(self) -> str:
        which = ", ".join(f"#{i}" for i in self.incidents) or "none"
        return (
            f"{len(self.incidents)} incident(s) ({which}): {self.deliveries} deliveries, "
            f"{self.events} delivery events, {self.notices} staff notices"
        )


def history_window(settings: Settings, ruleset: RuleSet | None) -> timedelta:
    """The longest look-back of a customer's history: ``rules.history_window`` or the
    longest window the rules file counts in, whichever is longer."""
    own = ruleset.history_window if ruleset is not None else timedelta(0)
    return max(own, settings.rules.history_window)


def horizon(now: datetime, keep: timedelta, history_window: timedelta) -> tuple[datetime, datetime]:
    """(closed before, declared before): the bounds of the incidents a purge takes."""
    return now - keep, now - history_window


async def purgeable(
    database: Database, now: datetime, keep: timedelta, history_window: timedelta
) -> list[int]:
    """The ids of the closed incidents whose messages are due to go, oldest first."""
    closed_before, declared_before = horizon(now, keep, history_window)
    async with database.session() as session:
        found = await session.execute(
            select(Incident.id)
            .where(
                Incident.status == "closed",
                Incident.closed_at <= closed_before,
                Incident.created_at <= declared_before,
                Incident.messages_purged_at.is_(None),
            )
            .order_by(Incident.id)
        )
        return list(found.scalars())


async def purge(
    database: Database,
    now: datetime,
    keep: timedelta,
    history_window: timedelta,
    *,
    batch: int = 5000,
    dry_run: bool = False,
    keep_going: Callable[[], bool] = lambda: True,
) -> Purged:
    """Purge (or, ``dry_run``, count) the messages of every incident :func:`purgeable`
    finds; returns what went. ``keep_going`` is asked before each batch: a daemon stopping,
    or no longer leading, stops there (the next run carries on), rather than finish a
    backlog of millions first."""
    purged = Purged()
    for incident_id in await purgeable(database, now, keep, history_window):
        if not keep_going():
            break
        if dry_run:
            deliveries, events, notices = await database.transact(
                functools.partial(_counts, incident_id=incident_id)
            )
        else:
            done = await _purge_incident(database, incident_id, now, batch, keep_going)
            if done is None:  # stopped halfway (logged there): not marked, not reported
                break
            deliveries, events, notices = done
            log.info(
                "purged the messages of a closed incident",
                extra={
                    "incident": incident_id,
                    "deliveries": deliveries,
                    "events": events,
                    "notices": notices,
                },
            )
        purged.incidents.append(incident_id)
        purged.deliveries += deliveries
        purged.events += events
        purged.notices += notices
    return purged


async def _purge_incident(
    database: Database,
    incident_id: int,
    now: datetime,
    batch: int,
    keep_going: Callable[[], bool],
) -> tuple[int, int, int] | None:
    """Delete the incident's messages batch by batch, then mark it; None when
    ``keep_going`` stopped it before the end."""
    async with database.session() as session:
        rounds = list(
            (
                await session.execute(
                    select(Round.id).where(Round.incident_id == incident_id).order_by(Round.id)
                )
            ).scalars()
        )
    deliveries = events = 0
    for round_id in rounds:
        while True:
            if not keep_going():
                log.info(
                    "purge stopped halfway; the next run carries on",
                    extra={"incident": incident_id, "deliveries": deliveries},
                )
                return None
            gone, history = await database.transact(
                functools.partial(_delete_batch, round_id=round_id, batch=batch)
            )
            deliveries += gone
            events += history
            if gone < batch:
                break

    def finish(session: Session) -> int:
        connection = session.connection()
        notices = connection.execute(delete(_N).where(_N.c.incident_id == incident_id)).rowcount
        connection.execute(
            update(Incident)
            .where(Incident.id == incident_id, Incident.messages_purged_at.is_(None))
            .values(messages_purged_at=now)
        )
        return max(notices, 0)

    return deliveries, events, await database.transact(finish)


def _delete_batch(session: Session, round_id: int, batch: int) -> tuple[int, int]:
    """Delete up to ``batch`` of the round's deliveries and their history; returns how many
    of each. The history goes first, explicitly (not by the foreign key's cascade), to be
    counted; the ids are read once, so both statements take the same deliveries."""
    connection = session.connection()
    dialect = connection.dialect.name
    # Any ``batch`` of the round's deliveries, in the order of the (round, customer,
    # channel) index: no sort of a round of a million for each batch.
    ids = list(
        connection.execute(select(_D.c.id).where(_D.c.round_id == round_id).limit(batch)).scalars()
    )
    if not ids:
        return 0, 0
    taken = select(rows_table(dialect, "purged", _ID_COLUMN, [(i,) for i in ids]).c.id)
    events = connection.execute(delete(_E).where(_E.c.delivery_id.in_(taken))).rowcount
    taken = select(rows_table(dialect, "purged", _ID_COLUMN, [(i,) for i in ids]).c.id)
    gone = connection.execute(delete(_D).where(_D.c.id.in_(taken))).rowcount
    return max(gone, 0), max(events, 0)


def _counts(session: Session, incident_id: int) -> tuple[int, int, int]:
    connection = session.connection()
    rounds = select(Round.id).where(Round.incident_id == incident_id)
    deliveries = connection.execute(
        select(func.count()).select_from(_D).where(_D.c.round_id.in_(rounds))
    ).scalar_one()
    events = connection.execute(
        select(func.count())
        .select_from(_E.join(_D, _D.c.id == _E.c.delivery_id))
        .where(_D.c.round_id.in_(rounds))
    ).scalar_one()
    notices = connection.execute(
        select(func.count()).select_from(_N).where(_N.c.incident_id == incident_id)
    ).scalar_one()
    return int(deliveries), int(events), int(notices)
