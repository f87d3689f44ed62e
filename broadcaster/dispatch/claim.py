"""The claim: the due deliveries a dispatcher takes under its lease, in one transaction.

Deliveries whose lease expired (their worker died) come first, then due pending ones in
claim order (``next_attempt_at``, ``id``), locked with ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL so that several daemons take disjoint batches. On the way, a delivery whose
address was opted out or disabled since its round was written is cancelled, the
deliveries of a channel paused as a whole are left in the queue until its pause ends
(:mod:`broadcaster.dispatch.pause`; a pause of one receiver of a channel is held at the
send, a claim reading no addresses), and a rate-limited channel's share beyond its rate is
put back for later (a :class:`~broadcaster.dispatch.limits.Pacer`). The statements are
Core, built once per dialect; :class:`~broadcaster.dispatch.worker.Dispatcher` runs them
and sends what they return.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    false,
    func,
    literal_column,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.expression import ColumnClause
from sqlalchemy.types import TypeEngine

from broadcaster.config.settings import DeliverySettings
from broadcaster.dispatch.limits import Pacer, per_process
from broadcaster.dispatch.outcomes import History, Job, write_history
from broadcaster.store import ContactPoint, Customer, Delivery, Followup, Round
from broadcaster.store.bulk import rows_params, rows_table
from broadcaster.store.models import table_of
from broadcaster.store.types import UTCDateTime

log = logging.getLogger("broadcaster.dispatch")


def claim_size(settings: DeliverySettings) -> int:
    """Deliveries one worker claims at a time: ``batch_size``, unless a rate-limited
    channel could not send that many within half the lease.

    A claimed batch is sent at the provider's pace. Its leases are renewed while it sends,
    but what is still unsent when a lease runs out (a renewal failed) is claimed again by
    another worker, and sent twice; and a worker should not hold deliveries for many
    minutes that another could send. With a limit of one message a second, 4 workers
    claiming 200 each would need 800 s against a 30 s lease. So the batch is cut to what
    the slowest limit sends in half the lease, shared by the workers that may all be
    waiting on it (at least one); with several dispatch processes, what this process's
    share of the limit sends."""
    if not settings.rate_limits:
        return settings.batch_size
    limits = per_process(settings.rate_limits, settings.processes).values()
    slowest = min(limit.per_second for limit in limits)
    burst = min(limit.burst for limit in limits)
    fits = (slowest * settings.lease.total_seconds() / 2 + burst) / settings.workers
    return max(1, min(settings.batch_size, int(fits)))


Floor = tuple[datetime, int]
"""The (next_attempt_at, id) of the last due delivery a dispatcher claimed."""


Claimed = tuple[list[Job], list[tuple[int, str, str, str, datetime]], Floor | None, "SetAside"]
"""What a claim returns: the jobs; the open follow-ups their messages announce (incident,
customer, owner, kind, deadline); the claim-order key of the last due delivery taken; what
it set aside."""


def claim_batch(
    session: Session,
    limit: int,
    now: datetime,
    *,
    owner: str,
    lease: timedelta,
    skip_locked: bool,
    expired_too: bool,
    dialect: str,
    after: Floor | None = None,
    pacer: Pacer | None = None,
    max_attempts: int | None = None,
    paused: Mapping[str, datetime] | None = None,
) -> Claimed:
    """Take up to ``limit`` deliveries under ``owner``'s lease: those whose lease expired
    first (their worker died; looked for only when ``expired_too``), then due pending
    ones, those after ``after`` in claim order when it is given; count the attempt (noting a
    reclaim in the history). Returns them with what rendering and routing need, the open
    follow-ups of their customers for their incidents, earliest deadline first (the messages
    say that a named person will contact them: doctrine 6), the claim-order key of the
    last due delivery taken (None when none was), and how many were set aside: cancelled,
    their address having been opted out or disabled since they were written, or put back
    for later by ``pacer`` (a rate-limited channel's share beyond its rate). A delivery whose
    lease expired after ``max_attempts`` claims is not claimed again but failed (``spent``):
    each of its workers stopped, or could not record what it did, and each claim may have
    sent it. A due delivery of a channel in ``paused`` (channel to when its pause ends) is
    not claimed but left pending, due at that end, its attempt not counted (``held``).

    Its statements run on the session's connection: Core, without the ORM's result layer,
    which built an ORM loading context for every claimed row."""
    connection = session.connection()
    sql = _claim_sql(dialect, skip_locked)

    def take(query: Select[Any], n: int, **parameters: Any) -> list[Any]:
        return list(connection.execute(query, {"b_now": now, "b_limit": n, **parameters}).all())

    found: list[Any] = []
    spent: list[Any] = []
    if expired_too:
        if dialect == "postgresql":
            # Oldest lease first, from the lease index (migration 0007), by an index scan:
            # every delivery sent since the last VACUUM left a dead entry there, and only
            # an index scan marks the dead ones it meets so that later scans skip them. A
            # bitmap scan, which the planner picks when few deliveries are being sent,
            # reads every dead row's page again at every look: in a round of 1,000,000
            # that was over half of PostgreSQL's work.
            connection.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
        found = take(sql.expired, limit)
        if dialect == "postgresql":
            connection.exec_driver_sql("SET LOCAL enable_bitmapscan = on")
        if max_attempts is not None:
            spent = [row for row in found if row[_ATTEMPTS] >= max_attempts]
            if spent:
                _give_up(connection, dialect, spent, now)
                found = [row for row in found if row[_ATTEMPTS] < max_attempts]
    last: Floor | None = None
    if len(found) < limit:
        if after is None:
            taken = take(sql.due, limit - len(found))
        else:
            taken = take(
                sql.due_after, limit - len(found), b_after_at=after[0], b_after_id=after[1]
            )
        if taken:
            last = (taken[-1][_DUE_AT], taken[-1][0])
        found += taken
    if not found:
        return [], [], None, SetAside(spent=len(spent))
    moot = [row for row in found if row[_OPTED_OUT] or row[_DISABLED]]
    if moot:
        # The customer unsubscribed (or the address was disabled) after the round was
        # written: what is still queued for that address is not sent (RFC 8058 asks that
        # an unsubscription takes effect; a held or retried message must not follow it).
        _cancel_moot(connection, dialect, moot, now)
        found = [row for row in found if not (row[_OPTED_OUT] or row[_DISABLED])]
    stale = _superseded(connection, found)
    if stale:
        # A message of an earlier round that waited (a retry, quiet hours, a lease) while
        # a later one (an update, the resolution) went to the customer: sent now, it
        # would bring back what is no longer true ("next update by 11:00" after the
        # apology). Doctrine 2 and 4.
        _cancel(connection, dialect, stale, now)
        found = [row for row in found if row[0] not in stale]
    held: dict[str, int] = {}
    if paused:
        # Its provider asked the channel to slow down: not claimed, not counted, due again
        # at the pause's end (before the pacer, which would give them slots they cannot use).
        # One whose lease expired is claimed: the send gives it back, uncounted.
        rows = [row for row in found if row[_STATE] == "pending" and row[3] in paused]
        if rows:
            connection.execute(
                _HOLD_BACK, [{"b_id": row[0], "b_at": paused[row[3]]} for row in rows]
            )
            for row in rows:
                held[row[3]] = held.get(row[3], 0) + 1
            ids = {row[0] for row in rows}
            found = [row for row in found if row[0] not in ids]
    back: dict[int, datetime] = {}
    if pacer:
        due = [i for i, row in enumerate(found) if row[_STATE] == "pending"]
        later = pacer.later([(found[i][3], found[i][_PUT_BACK_MARK] is not None) for i in due], now)
        back = {found[due[k]][0]: at for k, at in later.items()}
        if back:
            connection.execute(
                _PUT_BACK, [{"b_id": delivery, "b_at": at} for delivery, at in back.items()]
            )
            found = [row for row in found if row[0] not in back]
    aside = SetAside(
        moot=tuple(_job(row) for row in moot),
        paced=len(back),
        spent=len(spent),
        superseded=len(stale),
        held=held,
    )
    if not found:
        return [], [], last, aside
    connection.execute(
        sql.take,
        {
            **rows_params(dialect, "claimed", _ID_COLUMN, [(row[0],) for row in found]),
            "b_owner": owner,
            "b_expires": now + lease,
        },
    )
    jobs = [_job(row) for row in found]
    # A first attempt's claim writes no history row: the outcome's row names the attempt
    # (one row per delivery, not two). A reclaim does, as a repeat may follow.
    repeats: list[History] = [
        (job.delivery_id, "sending", None, f"attempt {job.attempts} (lease expired: may repeat)")
        for job in jobs
        if job.reclaimed
    ]
    if repeats:
        write_history(connection, dialect, repeats, now)
    # The follow-up each message announces came with its row (_FOLLOWUP, nearly always
    # none); only the few claimed with one need a look at the follow-ups themselves.
    announced = [row[_FOLLOWUP_AT] for row in found if row[_FOLLOWUP_AT] is not None]
    if not announced:
        return jobs, [], last, aside
    followups = connection.execute(
        select(_F.c.incident_id, _F.c.customer_id, _F.c.owner, _F.c.kind, _F.c.deadline_at)
        .where(_F.c.id.in_(announced))
        .order_by(_F.c.deadline_at, _F.c.id)
    )
    return jobs, [(row[0], row[1], row[2], row[3], row[4]) for row in followups], last, aside


def _job(row: Any) -> Job:
    """The job of a claimed row (:data:`_JOB_COLUMNS`), at the attempt its claim counts."""
    return Job(
        delivery_id=row[0],
        round_id=row[1],
        incident_id=row[2],
        channel=row[3],
        address=row[4],
        attempts=row[5] + 1,
        contact_point_id=row[6],
        customer_id=row[7],
        customer_name=row[8],
        language=row[9],
        timezone=row[10],
        channel_order=row[11],
        failover_from_id=row[12],
        reclaimed=row[13] == "sending",
        promised_at=row[_PROMISED_AT],
        kind=row[_KIND],
    )


@dataclass(frozen=True)
class SetAside:
    """What a claim found due and did not take: cancelled (``moot``: their address was
    opted out or disabled since they were written), put back for later (``paced``), failed
    (``spent``), or left pending until their channel's pause ends (``held``)."""

    moot: tuple[Job, ...] = ()
    paced: int = 0
    spent: int = 0
    """Failed instead: their lease had expired after ``max_attempts`` claims."""
    superseded: int = 0
    """Cancelled: a later round of their incident had reached their customer."""
    held: Mapping[str, int] = field(default_factory=dict)
    """Per paused channel, how many were left pending until its pause ends."""

    @property
    def cancelled(self) -> int:
        return len(self.moot) + self.superseded


def _cancel_moot(connection: Any, dialect: str, rows: list[Any], now: datetime) -> None:
    """End claimed-to-be deliveries whose contact point was opted out or disabled since
    they were written: ``cancelled``, with the reason in their history."""
    _cancel(
        connection,
        dialect,
        {
            row[0]: "the customer opted out of this address"
            if row[_OPTED_OUT]
            else "this address was disabled"
            for row in rows
        },
        now,
    )
    log.info(
        "queued deliveries cancelled: address opted out or disabled", extra={"count": len(rows)}
    )


_REACHED = ("sending", "sent", "delivered", "undelivered")
"""States of a delivery handed to its channel: its round reached its customer."""


def _superseded(connection: Any, found: list[Any]) -> dict[int, str]:
    """The claimed rows a later round of their incident has reached their customer with, or
    is claimed with to reach them now (id → why), on any channel: one query for the
    incidents' latest rounds; for the rows of an earlier round only (a retry, a held
    message; rarely any), one for their customers' deliveries of later rounds."""
    if not found:
        return {}
    incidents = {row[2] for row in found}
    latest = dict(
        connection.execute(
            select(_R.c.incident_id, func.max(_R.c.id))
            .where(_R.c.incident_id.in_(incidents), _R.c.state.in_(_WRITTEN))
            .group_by(_R.c.incident_id)
        ).all()
    )
    older = [row for row in found if latest.get(row[2], row[1]) > row[1]]
    if not older:
        return {}
    later = connection.execute(
        select(_D.c.incident_id, _D.c.customer_id, func.max(_D.c.round_id))
        .where(
            _D.c.customer_id.in_({row[7] for row in older}),
            _D.c.incident_id.in_({row[2] for row in older}),
            _D.c.state.in_(_REACHED),
        )
        .group_by(_D.c.incident_id, _D.c.customer_id)
    ).all()
    newest = {(incident, customer): round_id for incident, customer, round_id in later}
    for row in found:  # a later round claimed with it goes out now, in the same batch
        key = (row[2], row[7])
        newest[key] = max(newest.get(key, row[1]), row[1])
    return {
        row[0]: "superseded: a later round of the incident reached the customer"
        for row in older
        if newest.get((row[2], row[7]), row[1]) > row[1]
    }


def _cancel(connection: Any, dialect: str, reasons: dict[int, str], now: datetime) -> None:
    """Cancel deliveries (id → why) at a claim, out of any lease, with the reason in their
    history."""
    connection.execute(
        update(_D)
        .where(_D.c.id == bindparam("b_id", type_=BigInteger()))
        .values(
            state="cancelled",
            last_error=bindparam("b_why", type_=String()),
            lease_owner=None,
            lease_expires_at=None,
        ),
        [{"b_id": delivery, "b_why": why} for delivery, why in reasons.items()],
    )
    history: list[History] = [(i, "cancelled", None, why) for i, why in reasons.items()]
    write_history(connection, dialect, history, now)


def _give_up(connection: Any, dialect: str, rows: list[Any], now: datetime) -> None:
    """Fail deliveries whose lease expired after their last allowed claim."""
    reasons = {
        row[0]: f"lease expired after {row[_ATTEMPTS]} attempts (each worker stopped or could "
        "not record its outcome; the message may have gone out): not tried again"
        for row in rows
    }
    for delivery, reason in reasons.items():
        connection.execute(
            update(_D)
            .where(_D.c.id == delivery, _D.c.state == _SENDING)
            .values(state="failed", last_error=reason, lease_owner=None, lease_expires_at=None)
        )
    write_history(
        connection, dialect, [(i, "failed", None, why) for i, why in reasons.items()], now
    )
    log.error("deliveries failed: their lease expired at every attempt", extra={"count": len(rows)})


# The tables, not the mapped classes: Core statements skip the ORM's compile and result
# layers (and an update's session synchronisation), a large share of a claim's CPU.
_D = table_of(Delivery)
_C = table_of(Customer)
_F = table_of(Followup)
_P = table_of(ContactPoint)
_R = table_of(Round)
_WRITTEN = ("materialising", "dispatched")
"""States of a round whose deliveries are being written or have been."""

# Constants in the SQL, not parameters: the partial indexes on PostgreSQL (migration 0007)
# serve a query only when its state provably matches theirs, which a generic plan of a
# prepared statement cannot prove of a parameter.
_PENDING: ColumnClause[str] = literal_column("'pending'")
_SENDING: ColumnClause[str] = literal_column("'sending'")

_ID_COLUMN: list[tuple[str, TypeEngine[Any]]] = [("id", BigInteger())]

_OPEN_FOLLOWUP: tuple[ColumnClause[str], ...] = (
    literal_column("'open'"),
    literal_column("'claimed'"),
)

_FOLLOWUP = (
    select(_F.c.id)
    .where(
        _F.c.incident_id == _D.c.incident_id,
        _F.c.customer_id == _D.c.customer_id,
        _F.c.state.in_(_OPEN_FOLLOWUP),
        _F.c.deadline_at > bindparam("b_now", type_=UTCDateTime()),
    )
    .order_by(_F.c.deadline_at, _F.c.id)
    .limit(1)
    .correlate(_D)
    .scalar_subquery()
)
"""The open follow-up of a delivery's customer for its incident with the earliest deadline
still ahead, if any: its message says that a named person will contact them by then
(doctrine 6); one whose deadline passed is not promised again (it is being escalated). Looked up
per claimed row by the (incident, customer, rule) unique index; a statement of its own for
the batch's customers had cost a claim as much as its select of the deliveries."""

_JOB_COLUMNS = (
    _D.c.id,
    _D.c.round_id,
    _D.c.incident_id,
    _D.c.channel,
    _D.c.address,
    _D.c.attempts,
    _D.c.contact_point_id,
    _C.c.id,
    _C.c.name,
    _C.c.language,
    _C.c.timezone,
    _C.c.channel_order,
    _D.c.failover_from_id,
    _D.c.state,
    func.coalesce(_P.c.opted_out, false()),
    func.coalesce(_P.c.disabled, false()),
    _D.c.lease_expires_at,
    _D.c.promised_at,
    _D.c.kind,
    _D.c.next_attempt_at,
    _FOLLOWUP,
)
"""A claimed delivery: what :class:`Job` holds, in its order, then the state it had, whether
its contact point is opted out or disabled now, its lease expiry (on a pending delivery: the
mark of one put back by a :class:`Pacer`), the promise it makes and the kind it says if not
its round's, when it was due (its claim-order key is that and the id) and the follow-up it
announces."""
_ATTEMPTS = 5
_STATE = 13
_OPTED_OUT = 14
_DISABLED = 15
_PUT_BACK_MARK = 16
_PROMISED_AT = 17
_KIND = 18
_DUE_AT = len(_JOB_COLUMNS) - 2
_FOLLOWUP_AT = len(_JOB_COLUMNS) - 1


_HOLD_BACK = (
    update(_D)
    .where(_D.c.id == bindparam("b_id", type_=BigInteger()), _D.c.state == _PENDING)
    .values(next_attempt_at=bindparam("b_at", type_=UTCDateTime()))
)
"""A due delivery of a paused channel left pending until ``b_at`` (the pause's end), its
attempt not counted; executemany."""

_PUT_BACK = (
    update(_D)
    .where(_D.c.id == bindparam("b_id", type_=BigInteger()), _D.c.state == _PENDING)
    .values(
        next_attempt_at=bindparam("b_at", type_=UTCDateTime()),
        lease_expires_at=bindparam("b_at", type_=UTCDateTime()),
    )
)
"""A due delivery put back until ``b_at`` by a :class:`Pacer`, marked so (a pending
delivery has no lease otherwise); executemany."""


@dataclass(frozen=True)
class _ClaimSql:
    """A claim's statements, built once per dialect (building them for every claim cost
    about as much of the interpreter's time as running them). Parameters: ``b_now``,
    ``b_limit``; ``b_after_at`` and ``b_after_id`` (the floor); ``b_owner``, ``b_expires``
    and the claimed ids (:func:`~broadcaster.store.bulk.rows_params`) for ``take``."""

    expired: Select[Any]
    due: Select[Any]
    due_after: Select[Any]
    take: Update


@functools.cache
def _claim_sql(dialect: str, skip_locked: bool) -> _ClaimSql:
    now = bindparam("b_now", type_=UTCDateTime())

    def taking(state: ColumnElement[bool], order: tuple[Any, ...]) -> Select[Any]:
        # One query per state, not one with OR: each walks its index in order and stops
        # at the limit. With OR, SQLite and PostgreSQL gathered every due row and sorted
        # them all for each claim, so a round of 100,000 got slower the more of it was
        # still waiting.
        query = (
            select(*_JOB_COLUMNS)
            .select_from(
                _D.join(_C, _C.c.id == _D.c.customer_id).outerjoin(
                    _P, _P.c.id == _D.c.contact_point_id
                )
            )
            .where(state)
            .order_by(*order)
            .limit(bindparam("b_limit", type_=Integer()))
        )
        if skip_locked:
            query = query.with_for_update(of=_D, skip_locked=True)
        return query

    due = and_(_D.c.state == _PENDING, _D.c.next_attempt_at <= now)
    floor = tuple_(
        bindparam("b_after_at", type_=UTCDateTime()), bindparam("b_after_id", type_=BigInteger())
    )
    claimed = rows_table(dialect, "claimed", _ID_COLUMN)
    return _ClaimSql(
        expired=taking(
            and_(_D.c.state == _SENDING, _D.c.lease_expires_at <= now),
            (_D.c.lease_expires_at, _D.c.id),
        ),
        due=taking(due, (_D.c.next_attempt_at, _D.c.id)),
        due_after=taking(
            and_(due, tuple_(_D.c.next_attempt_at, _D.c.id) > floor),
            (_D.c.next_attempt_at, _D.c.id),
        ),
        take=update(_D)
        .where(_D.c.id.in_(select(claimed.c.id)))
        .values(
            state="sending",
            lease_owner=bindparam("b_owner", type_=String()),
            lease_expires_at=bindparam("b_expires", type_=UTCDateTime()),
            attempts=_D.c.attempts + 1,
        ),
    )
