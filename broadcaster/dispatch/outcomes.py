"""Recording what happened to a batch of sends, in bulk, under the lease.

One transaction per batch (:meth:`~broadcaster.store.Database.transact`) writes: the
deliveries' new states (only rows we still lease; the sent ones, nearly all, with one
set-based statement), one history event per delivery naming its attempt,
contact points that a permanent error condemned, and the follow-on deliveries: a
permanent failure *fails over* to the customer's next channel for the same round (once: a
failover delivery does not fail over again), and a throttled message is *rerouted* to the
throttle's lighter channel. Both are new delivery rows under
the same (round, customer, channel) key, so recording twice creates nothing twice. A
message not handed to its channel because the channel is paused (its provider asked to slow
down) goes back to ``pending``, due at the pause's end, its attempt given back.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Connection,
    Integer,
    String,
    and_,
    bindparam,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert, Update
from sqlalchemy.types import TypeEngine

from broadcaster.store import ContactPoint, Database, Delivery, DeliveryEvent
from broadcaster.store.bulk import joined_by_key, rows_params, rows_table
from broadcaster.store.models import PROVIDER_ID_LENGTH, table_of
from broadcaster.store.types import UTCDateTime
from channels.base import ContactPointState, DeliveryError, Receipt

log = logging.getLogger("broadcaster.dispatch")


class Job(NamedTuple):
    """A claimed delivery with what is needed to render and route it.

    Immutable, as a frozen dataclass would be, but built for every claimed delivery at a
    fifth of the cost: a frozen dataclass sets each of its fields through
    ``object.__setattr__``."""

    delivery_id: int
    round_id: int
    incident_id: int
    channel: str
    address: str
    attempts: int
    contact_point_id: int | None
    customer_id: str
    customer_name: str
    language: str
    timezone: str
    channel_order: str | None
    failover_from_id: int | None
    reclaimed: bool = False
    promised_at: datetime | None = None
    """The next update this message promises when not the round's (the end of the
    customer's quiet hours that will hold the next round)."""
    kind: str | None = None
    """What the message says when not its round's kind (``deliveries.kind``)."""


class Outcome(NamedTuple):
    """What became of one delivery's send (immutable, one per delivery: see :class:`Job`)."""

    job: Job
    receipt: Receipt | None = None
    error: DeliveryError | None = None
    retry_at: datetime | None = None
    """Set for a retryable error with attempts left: when to try again."""
    reroute_to: str | None = None
    """Set when a throttle moved the message to a lighter channel instead of sending it."""
    deferred_to: datetime | None = None
    """Set when the message was not handed to its channel because the channel is paused (its
    provider asked to slow down): pending again, due then, its attempt not counted."""


@dataclass
class Follow:
    """A follow-on delivery to create: failover after a failure, or a throttle reroute."""

    job: Job
    channel: str
    contact_kind: str
    reason: str


@dataclass
class Recorded:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    rerouted: int = 0
    failovers: int = 0
    deferred: int = 0
    follows: list[Follow] = field(default_factory=list)


def next_channel(job: Job, failover: list[str]) -> str | None:
    """The channel after ``job.channel`` in the customer's order (or the default order)."""
    order = [c for c in (job.channel_order or "").split(",") if c] or failover
    rest = order[order.index(job.channel) + 1 :] if job.channel in order else order
    return rest[0] if rest else None


def fail_over_reported(
    session: Session,
    database: Database,
    delivery: Delivery,
    channel_order: str | None,
    failover: list[str],
    contact_kinds: dict[str, str],
    now: datetime,
) -> str | None:
    """A provider reported after the send that ``delivery`` failed for good (an SMS status
    callback: ``undelivered``, ``failed``): fail over to the customer's next channel, as a
    permanent error at the send does, unless a later round of the incident already has a
    delivery for them (a late report must not send a stale update after the next one, or
    after the resolution). Returns that channel when a delivery was made there."""
    if delivery.failover_from_id is not None or delivery.failover_to is not None:
        return None  # only a first delivery fails over, and only once
    newer = session.execute(
        select(Delivery.id)
        .where(
            Delivery.incident_id == delivery.incident_id,
            Delivery.customer_id == delivery.customer_id,
            Delivery.round_id > delivery.round_id,
        )
        .limit(1)
    ).first()
    if newer is not None:
        return None  # a later round (an update, the resolution) reached them: this one is stale
    job = Job(
        delivery_id=delivery.id,
        round_id=delivery.round_id,
        incident_id=delivery.incident_id,
        channel=delivery.channel,
        address=delivery.address,
        attempts=delivery.attempts,
        contact_point_id=delivery.contact_point_id,
        customer_id=delivery.customer_id,
        customer_name="",
        language="",
        timezone="",
        channel_order=channel_order,
        failover_from_id=None,
        promised_at=delivery.promised_at,
        kind=delivery.kind,
    )
    target = next_channel(job, failover)
    kind = contact_kinds.get(target) if target else None
    if target is None or kind is None:
        return None
    made = create_follow(session, database, Follow(job, target, kind, "failover"), now)
    return target if made else None


def create_follow(session: Session, database: Database, follow: Follow, now: datetime) -> bool:
    """Insert the follow-on delivery if the customer can be reached on that channel and
    has none for the round there yet: the insert then does nothing (another worker's
    failover in the same round may have made it a moment ago, uncommitted: the insert
    waits for it, and does not fail the batch's outcomes on the unique key)."""
    job = follow.job
    point = (
        session.execute(
            select(ContactPoint.id, ContactPoint.address)
            .where(
                ContactPoint.customer_id == job.customer_id,
                ContactPoint.kind == follow.contact_kind,
                ContactPoint.opted_out.is_(False),
                ContactPoint.disabled.is_(False),
            )
            .order_by(ContactPoint.id)
            .limit(1)
        )
    ).first()
    if point is None:
        return False
    created = session.execute(
        database.insert_ignoring_duplicates(
            table_of(Delivery), "round_id", "customer_id", "channel"
        )
        .values(
            round_id=job.round_id,
            incident_id=job.incident_id,
            customer_id=job.customer_id,
            channel=follow.channel,
            contact_point_id=point[0],
            address=point[1],
            state="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            failover_from_id=job.delivery_id,
            promised_at=job.promised_at,
            kind=job.kind,
        )
        .returning(table_of(Delivery).c.id)
    )
    new_id = created.scalar_one_or_none()
    if new_id is None:
        return False  # the customer already gets this round on that channel
    session.execute(
        update(Delivery).where(Delivery.id == job.delivery_id).values(failover_to=follow.channel)
    )
    session.add_all(
        [
            DeliveryEvent(
                delivery_id=new_id,
                at=now,
                state="pending",
                detail=f"{follow.reason} from {job.channel} (delivery {job.delivery_id})",
            ),
        ]
    )
    return True


async def record_outcomes(
    database: Database,
    owner: str,
    outcomes: list[Outcome],
    now: datetime,
    *,
    failover: list[str],
    contact_kinds: dict[str, str],
) -> Recorded:
    """Write a batch's outcomes; returns the counts (for stats and logs)."""
    result = Recorded()
    sent: list[tuple[int, str | None, int]] = []
    retry: list[dict[str, object]] = []
    failed: list[dict[str, object]] = []
    rerouted: list[dict[str, object]] = []
    deferred: list[dict[str, object]] = []
    points: list[dict[str, object]] = []
    events: list[History] = []
    for outcome in outcomes:
        job = outcome.job
        if outcome.deferred_to is not None:
            # Not sent, nothing refused: as a stopping daemon's release, the attempt the
            # claim counted is given back (no history row: nothing happened to it).
            deferred.append(
                {
                    "b_id": job.delivery_id,
                    "b_next": outcome.deferred_to,
                    "b_owner": owner,
                    "b_attempts": job.attempts,
                }
            )
            result.deferred += 1
            continue
        if outcome.reroute_to is not None:
            rerouted.append(
                {
                    "b_id": job.delivery_id,
                    "b_to": outcome.reroute_to,
                    "b_owner": owner,
                    "b_attempts": job.attempts,
                }
            )
            events.append(_event(job, "rerouted", None, f"throttled; to {outcome.reroute_to}"))
            kind = contact_kinds.get(outcome.reroute_to)
            if kind is not None:
                result.follows.append(Follow(job, outcome.reroute_to, kind, "rerouted"))
            result.rerouted += 1
            continue
        if outcome.error is None:
            pmid = outcome.receipt.provider_message_id if outcome.receipt else None
            if pmid is not None and len(pmid) > PROVIDER_ID_LENGTH:
                pmid = pmid[:PROVIDER_ID_LENGTH]  # a push service's URL: kept as far as fits
            sent.append((job.delivery_id, pmid, job.attempts))
            events.append(_event(job, "sent", pmid, None))
            result.sent += 1
            continue
        error = outcome.error
        if outcome.retry_at is not None:
            retry.append(
                {
                    "b_id": job.delivery_id,
                    "b_next": outcome.retry_at,
                    "b_err": error.reason,
                    "b_owner": owner,
                    "b_attempts": job.attempts,
                }
            )
            events.append(_event(job, "retry", None, error.reason))
            result.retried += 1
            continue
        reason = error.reason
        if error.retryable:
            reason = f"gave up after {job.attempts} attempts: {reason}"
        failed.append(
            {"b_id": job.delivery_id, "b_err": reason, "b_owner": owner, "b_attempts": job.attempts}
        )
        events.append(_event(job, "failed", None, reason))
        result.failed += 1
        if error.contact_point is not None and job.contact_point_id is not None:
            points.append(
                {
                    "b_cp": job.contact_point_id,
                    "b_opted_out": error.contact_point is ContactPointState.OPTED_OUT,
                    "b_disabled": error.contact_point is ContactPointState.DISABLED,
                    "b_reason": error.reason,
                    "b_now": now,
                }
            )
        if job.failover_from_id is None:
            target = next_channel(job, failover)
            kind = contact_kinds.get(target) if target else None
            if target is not None and kind is not None:
                result.follows.append(Follow(job, target, kind, "failover"))
        log.warning(
            "delivery failed",
            extra={"delivery": job.delivery_id, "channel": job.channel, "reason": reason},
        )
    dialect = database.dialect
    sql = _record_sql(dialect)

    def sent_params(with_history: bool) -> dict[str, Any]:
        # The batch's ids and provider ids as one parameter (see broadcaster.store.bulk).
        done = rows_params(dialect, "sent", _SENT_COLUMNS, sent)
        done.update(b_owner=owner, b_now=now)
        if with_history:
            done.update(_history_params(dialect, events, now))
        return done

    if (
        sql.sent_and_history is not None
        and sent
        and not (retry or failed or rerouted or deferred or points or result.follows)
    ):
        # All sent (nearly every batch): one statement, atomic by itself, so no
        # transaction around it (on PostgreSQL one round trip instead of three).
        await database.execute_alone(sql.sent_and_history, sent_params(with_history=True))
        return result

    def write(session: Session) -> None:
        # Core on the session's connection: no ORM result layer for set-based writes.
        connection = session.connection()
        history = events
        if sent:
            # One set-based statement for the common case, not one per row.
            if sql.sent_and_history is not None:  # with the history rows: one round trip
                connection.execute(sql.sent_and_history, sent_params(with_history=True))
                history = []
            else:
                connection.execute(sql.sent, sent_params(with_history=False))
        if retry:
            connection.execute(sql.retry, retry)
        if deferred:
            connection.execute(sql.deferred, deferred)
        # A failover or reroute follows only a row this worker still held: one whose
        # lease was lost (a stall longer than the lease) is its new holder's to decide.
        follows = {follow.job.delivery_id for follow in result.follows}
        held: set[int] = set()
        for statement, rows in ((sql.failed, failed), (sql.rerouted, rerouted)):
            plain = [row for row in rows if row["b_id"] not in follows]
            if plain:
                connection.execute(statement, plain)
            for row in rows:
                if row["b_id"] in follows and connection.execute(statement, row).rowcount == 1:
                    held.add(row["b_id"])
        if points:
            connection.execute(sql.points, points)
        if history:
            write_history(connection, dialect, history, now)
        for follow in result.follows:
            if follow.job.delivery_id in held and create_follow(session, database, follow, now):
                result.failovers += 1

    await database.transact(write)
    return result


def _event(job: Job, state: str, pmid: str | None, detail: str | None) -> History:
    """A history row for an attempt's outcome; it names the attempt (a first attempt's
    claim writes no row of its own: see :func:`broadcaster.dispatch.claim.claim_batch`)."""
    said = f"attempt {job.attempts}"
    return (job.delivery_id, state, pmid, f"{said}: {detail}" if detail else said)


History = tuple[int, str, str | None, str | None]
"""A delivery history row to write: (delivery id, state, provider message id, detail)."""

_HISTORY_COLUMNS: list[tuple[str, TypeEngine[Any]]] = [
    ("delivery_id", BigInteger()),
    ("state", String()),
    ("pmid", String()),
    ("detail", String()),
]
_SENT_COLUMNS: list[tuple[str, TypeEngine[Any]]] = [
    ("id", BigInteger()),
    ("pmid", String()),
    ("attempts", Integer()),
]


def write_history(connection: Connection, dialect: str, rows: list[History], now: datetime) -> None:
    """``INSERT INTO delivery_events … SELECT`` the rows, all at ``now``: one statement and
    one parameter for a batch."""
    connection.execute(_history_insert(dialect), _history_params(dialect, rows, now))


def _history_params(dialect: str, rows: list[History], now: datetime) -> dict[str, Any]:
    return {**rows_params(dialect, "events", _HISTORY_COLUMNS, rows), "b_at": now}


@functools.cache
def _history_insert(dialect: str) -> Insert:
    source = rows_table(dialect, "events", _HISTORY_COLUMNS)
    return insert(table_of(DeliveryEvent)).from_select(
        ["delivery_id", "at", "state", "provider_message_id", "detail"],
        select(
            source.c.delivery_id,
            bindparam("b_at", type_=UTCDateTime()),
            source.c.state,
            source.c.pmid,
            source.c.detail,
        ),
    )


@dataclass(frozen=True)
class _RecordSql:
    """The statements that record outcomes, built once per dialect: built for each batch,
    they cost as much of the interpreter's time as executing them. The deliveries' writes
    take ``b_owner`` (only the lease holder's rows are written); each row's values come as
    parameters."""

    sent: Update
    sent_and_history: Insert | None
    """PostgreSQL: ``sent`` as a data-modifying ``WITH`` of the history insert, so that the
    common batch writes both in one statement (one round trip to the server, not two);
    it takes both statements' parameters. SQLite has no such ``WITH``."""
    retry: Update
    deferred: Update
    """A message of a paused channel not sent: pending again, its attempt given back."""
    failed: Update
    rerouted: Update
    points: Update


@functools.cache
def _record_sql(dialect: str) -> _RecordSql:
    d = table_of(Delivery)
    cp = table_of(ContactPoint)
    owner = bindparam("b_owner", type_=String())
    # Fenced by the attempt as well as the owner: every worker of a process shares the
    # owner, and one of them may have claimed again what another's lease lost.
    mine = and_(
        d.c.id == bindparam("b_id"),
        d.c.lease_owner == owner,
        d.c.attempts == bindparam("b_attempts", type_=Integer()),
        d.c.state == "sending",
    )
    released = {"lease_owner": None, "lease_expires_at": None}
    done = rows_table(dialect, "sent", _SENT_COLUMNS)
    sent = (
        update(d)
        .where(
            d.c.id == done.c.id,
            d.c.lease_owner == owner,
            d.c.attempts == done.c.attempts,
            joined_by_key(dialect, d.c.state == "sending"),
        )
        .values(
            state="sent",
            sent_at=bindparam("b_now", type_=UTCDateTime()),
            provider_message_id=done.c.pmid,
            last_error=None,
            **released,
        )
    )
    both = None
    if dialect == "postgresql":
        both = _history_insert(dialect).add_cte(sent.cte("sent_update"))
    return _RecordSql(
        sent=sent,
        sent_and_history=both,
        retry=update(d)
        .where(mine)
        .values(
            state="pending",
            next_attempt_at=bindparam("b_next"),
            last_error=bindparam("b_err"),
            **released,
        ),
        # Fenced further by the time it is deferred to, always ahead of the row's: the
        # write gives the attempt back, so a claim of the row since (by this owner) has
        # the same attempt count again, and a repeat of this write (a commit whose answer
        # was lost, sent again) must not match that claim.
        deferred=update(d)
        .where(mine, d.c.next_attempt_at < bindparam("b_next"))
        .values(
            state="pending",
            next_attempt_at=bindparam("b_next"),
            attempts=d.c.attempts - 1,
            **released,
        ),
        failed=update(d)
        .where(mine)
        .values(state="failed", last_error=bindparam("b_err"), **released),
        rerouted=update(d)
        .where(mine)
        .values(state="rerouted", failover_to=bindparam("b_to"), **released),
        points=update(cp)
        .where(cp.c.id == bindparam("b_cp"))
        .values(
            opted_out=or_(cp.c.opted_out, bindparam("b_opted_out")),
            disabled=or_(cp.c.disabled, bindparam("b_disabled")),
            disabled_reason=bindparam("b_reason"),
            updated_at=bindparam("b_now", type_=UTCDateTime()),
        ),
    )
