"""Who an incident has not reached: the customers none of whose messages of the incident went
out, listed (keyset-paginated by customer id) and counted by reason, for staff to pick up
the phone (doctrine 6) and as a health figure.

Read from the incident's deliveries, the store's only record of whom a round was written
for. A customer of the incident is

- **reached** once any delivery of theirs for the incident, in any round, on any channel, is
  ``sent`` or ``delivered`` (handed over to its provider and not reported back as lost);
- **still being tried** ("not yet") while not reached and a delivery of theirs is
  ``pending`` (queued, held for their quiet hours, or waiting for a retry) or ``sending``;
- **not reached** (final) when neither: every delivery of theirs failed for good
  (``failed``), was reported undelivered by the carrier (``undelivered``), was cancelled
  (the address opted out, disabled or removed), or was rerouted to one of these;
- **without an address** (``no_address``, final) when in the incident's audience but without
  any delivery of the incident: a customer with no usable address on any channel of a round
  (nor on a fallback channel), opted out or disabled everywhere, gets no delivery row for it
  (:mod:`broadcaster.outbox.materialise`). The audience is the incident's **as it is now**
  (:mod:`broadcaster.audience`, as the rounds read it), and counted only once a round of the
  incident has been written: a customer subscribed since its last round was written shows
  here until the next round writes their deliveries. A customer whose address failed for
  good in an earlier round (and was then disabled) has that failure instead.

Only the last two are final: staff can act on them.

Cost. The store has no index of deliveries by incident: a count reads the incident's
deliveries once (a scan of the whole deliveries table on PostgreSQL), groups only those not
sent by customer, and looks each such customer up once by the customer index for a delivery
that went out (0.2 to 1.5 s for 1,000,000 deliveries on either store). Those without an
address are counted apart (:func:`count_no_address`: the audience's subscriptions, each
looked up once by the customer index for any delivery of the incident; 0.8 s on SQLite, 1.7
s on PostgreSQL for 1,000,000 subscribers), by :func:`unreached_counts` only, not by
:func:`count_unreached` (``/metrics``). A page walks the customer index, and each of the
incident's scopes' subscriptions, from its cursor and stops at the page's end
(milliseconds, unless the customers not reached are few among many). Nothing here is on the
dispatch path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import and_, case, func, literal, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.audience.query import audience_count_query, incident_scopes
from broadcaster.incidents.service import IncidentNotFound
from broadcaster.store import (
    Customer,
    Database,
    Delivery,
    DeliveryEvent,
    Incident,
    Round,
    Subscription,
)
from broadcaster.store.models import table_of

REACHED_STATES = ("sent", "delivered")
"""A delivery in one of these reached its customer."""
IN_FLIGHT_STATES = ("pending", "sending")
"""A delivery in one of these may still reach its customer."""
Reason = Literal["trying", "failed", "undelivered", "cancelled", "other", "no_address"]
REASONS: tuple[Reason, ...] = ("failed", "undelivered", "cancelled", "other", "no_address")
"""Why a customer was not reached, by precedence: any delivery failed for good, else any
reported undelivered, else cancelled; ``other``: rerouted only (the per-customer throttle
moved the message to a channel where no row was made for them, which is rare), or a state
this version does not know; ``no_address``: in the incident's audience (as it is now) with
no delivery of the incident at all (no usable address on any channel when its rounds were
written)."""
_RANK = {"failed": 4, "undelivered": 3, "cancelled": 2}
_REASON_OF_RANK: dict[int, Reason] = {
    4: "failed",
    3: "undelivered",
    2: "cancelled",
    0: "no_address",
}
_NO_ADDRESS_RANK = 0
"""A page row's rank for a customer without any delivery (no row to rank)."""

Only = Literal["final", "trying"]
ONLY: tuple[Only, ...] = ("final", "trying")
"""A list's filter: only the customers not reached for good, or only those still tried."""
MAX_LIMIT = 1000
"""Customers a page holds at most."""
MAX_CURSOR_CHARS = 64
"""A customer id's length at most (``customers.id``): a longer cursor names none."""

_D = table_of(Delivery)
_S = _D.alias("reached")
_N = _D.alias("any_delivery")
_E = table_of(DeliveryEvent)
_C = table_of(Customer)


@dataclass(frozen=True)
class UnreachedCounts:
    """An incident's customers not reached, and those still being tried."""

    unreached: int = 0
    """Final: nothing of the incident went out to them, nothing is in flight."""
    still_trying: int = 0
    """Not reached yet, a delivery of theirs queued, sending or waiting for a retry."""
    by_reason: dict[str, int] = field(default_factory=dict)
    """The final ones by reason (:data:`REASONS`, all present, zero too). ``no_address``
    (counted in ``unreached`` too) only from :func:`unreached_counts`; zero from
    :func:`count_unreached`."""
    purged: bool = False
    """Its deliveries were (are being) purged under ``retention.messages``: nobody can be
    counted any more (the counts above are zero)."""


@dataclass(frozen=True)
class ChannelOutcome:
    """What became of a customer's latest delivery of the incident on one channel."""

    channel: str
    state: str
    delivery_id: int
    attempts: int
    last_error: str | None
    at: datetime
    """When its state was last recorded (its latest history entry; when written, if none)."""
    next_attempt_at: datetime | None
    """When it is tried next (``pending`` only)."""


@dataclass(frozen=True)
class UnreachedCustomer:
    customer_id: str
    name: str
    still_trying: bool
    """"Not yet" rather than "failed": a delivery of theirs is still queued or sending."""
    reason: Reason
    """``trying`` while still tried, else one of :data:`REASONS`."""
    channels: list[ChannelOutcome]
    """Per channel (by name), its latest delivery; empty for ``no_address`` (none)."""


@dataclass(frozen=True)
class UnreachedPage:
    customers: list[UnreachedCustomer]
    next_after: str | None
    """The cursor of the next page (its last customer id); None on the last page."""


def check_page(after: str | None, limit: int, only: str | None = None) -> None:
    """Refuse a page that cannot be read, naming the input: ``ValueError("limit: …")``."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit: {limit} is not between 1 and {MAX_LIMIT}")
    if after is not None:
        if not after or len(after) > MAX_CURSOR_CHARS:
            raise ValueError(f"after: a customer id is 1 to {MAX_CURSOR_CHARS} characters")
        if "\x00" in after:
            raise ValueError("after: contains a NUL character")
    only_of(only)


def only_of(value: str | None) -> Only | None:
    """A list's filter as given; ``ValueError("only: …")`` when it is none of :data:`ONLY`."""
    for known in ONLY:
        if value == known:
            return known
    if value is None:
        return None
    raise ValueError(f"only: {value!r} is not one of {', '.join(ONLY)}")


def _not_out(customer_id: Any, incident_id: Any) -> Any:
    """No delivery of this customer and incident reached them: one look-up by the customer
    index. Written as a scalar subquery (``(SELECT 1 … LIMIT 1) IS NULL``), not ``NOT
    EXISTS``: PostgreSQL turns the latter into an anti-join and, misjudging how many rows
    are left, hashed every delivery of the incident that went out (a count of 1,000,000
    deliveries took 1.3 s, against 0.5 s with the look-ups), and a page no longer stopped
    at its end (0.9 s against 5 ms)."""
    return (
        select(literal(1))
        .where(
            _S.c.customer_id == customer_id,
            _S.c.incident_id == incident_id,
            _S.c.state.in_(REACHED_STATES),
        )
        .limit(1)
        .scalar_subquery()
        .is_(None)
    )


def _no_row(customer_id: Any, incident_id: int) -> Any:
    """No delivery of this customer for this incident at all (in any state): one look-up by
    the customer index, written as :func:`_not_out` is, for the same reasons."""
    return (
        select(literal(1))
        .select_from(_N)
        .where(_N.c.customer_id == customer_id, _N.c.incident_id == incident_id)
        .limit(1)
        .scalar_subquery()
        .is_(None)
    )


async def _written(session: AsyncSession, incident_id: int) -> bool:
    """Whether a round of the incident has been written (materialised): before that, nobody
    of its audience has a delivery yet, and none of them is ``no_address``."""
    found = await session.execute(
        select(literal(1))
        .where(Round.incident_id == incident_id, Round.materialised_at.is_not(None))
        .limit(1)
    )
    return found.first() is not None


async def count_no_address(session: AsyncSession, incident_id: int) -> int:
    """How many customers of the incident's audience, as it is now, have no delivery of the
    incident at all (``no_address``); zero until a round of it has been written. The
    audience as :func:`broadcaster.audience.query.audience_size` counts it (``COUNT
    (DISTINCT …)``, for the same reason), each subscription looked up once by the customer
    index."""
    if not await _written(session, incident_id):
        return 0
    await _without_jit(session)
    result = await session.execute(
        audience_count_query(incident_id).where(_no_row(Subscription.customer_id, incident_id))
    )
    return int(result.scalar_one())


def _no_address_query(
    incident_id: int, scopes: Sequence[tuple[str, str]], after: str | None, limit: int
) -> Any:
    """The first ``limit`` customers without any delivery of the incident after ``after``,
    in id order, as (customer_id, trying, rank) rows: the audience's page read as
    :func:`broadcaster.audience.query.audience_page_query` reads it (each scope's first
    ``limit`` such subscribers from the (kind, value, customer) index, their union's first
    ``limit`` distinct ids), each subscriber looked up by the customer index."""
    branches = []
    for kind, value in scopes:
        branch = select(Subscription.customer_id).where(
            Subscription.kind == kind,
            Subscription.value == value,
            _no_row(Subscription.customer_id, incident_id),
        )
        if after is not None:
            branch = branch.where(Subscription.customer_id > after)
        first = branch.order_by(Subscription.customer_id).limit(limit).subquery()
        branches.append(select(first.c.customer_id))
    union = union_all(*branches).subquery()
    return (
        select(
            union.c.customer_id,
            literal(0).label("trying"),
            literal(_NO_ADDRESS_RANK).label("rank"),
        )
        .distinct()
        .order_by(union.c.customer_id)
        .limit(limit)
    )


async def _without_jit(session: AsyncSession) -> None:
    """On PostgreSQL, no JIT compilation for this transaction's statements: the look-ups'
    estimated cost (a subquery per row, priced as if the whole index were walked) passes
    the JIT thresholds, and compiling took 250 ms for a page read in 5 ms."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SET LOCAL jit = off"))


def _trying() -> Any:
    return func.max(case((_D.c.state.in_(IN_FLIGHT_STATES), 1), else_=0))


def _rank() -> Any:
    return func.max(case(*((_D.c.state == s, r) for s, r in _RANK.items()), else_=1))


def _of(incident_ids: Sequence[int]) -> Any:
    if len(incident_ids) == 1:
        return _D.c.incident_id == incident_ids[0]
    return _D.c.incident_id.in_(incident_ids)


def _tally(rows: Iterable[Sequence[Any]]) -> UnreachedCounts:
    """Counts from (trying, rank, customers) rows."""
    by_reason: dict[str, int] = dict.fromkeys(REASONS, 0)
    trying = 0
    for still, rank, count in rows:
        if still:
            trying += int(count)
        else:
            reason = _REASON_OF_RANK.get(int(rank), "other")
            by_reason[reason] += int(count)
    return UnreachedCounts(sum(by_reason.values()), trying, by_reason)


async def count_unreached(
    session: AsyncSession, incident_ids: Sequence[int]
) -> dict[int, UnreachedCounts]:
    """The counts of several incidents in one statement (``/metrics``: the open ones); an
    incident with nobody to count is absent. The incidents' deliveries not sent are grouped
    by customer; a customer with one that went out is dropped, each looked up once. Without
    ``no_address`` (zero here): reading every incident's audience at each count is left to
    :func:`unreached_counts`, for one incident."""
    if not incident_ids:
        return {}
    await _without_jit(session)
    candidates = (
        select(
            _D.c.incident_id,
            _D.c.customer_id,
            _trying().label("trying"),
            _rank().label("rank"),
        )
        .where(_of(incident_ids), _D.c.state.not_in(REACHED_STATES))
        .group_by(_D.c.incident_id, _D.c.customer_id)
        .subquery("candidates")
    )
    rows = await session.execute(
        select(candidates.c.incident_id, candidates.c.trying, candidates.c.rank, func.count())
        .where(_not_out(candidates.c.customer_id, candidates.c.incident_id))
        .group_by(candidates.c.incident_id, candidates.c.trying, candidates.c.rank)
    )
    grouped: dict[int, list[Sequence[Any]]] = {}
    for incident_id, trying, rank, count in rows:
        grouped.setdefault(int(incident_id), []).append((trying, rank, count))
    return {incident_id: _tally(found) for incident_id, found in grouped.items()}


async def _incident(session: AsyncSession, incident_id: int) -> Incident:
    incident = await session.get(Incident, incident_id)
    if incident is None:
        raise IncidentNotFound(incident_id)
    return incident


async def unreached_counts(database: Database, incident_id: int) -> UnreachedCounts:
    """One incident's counts, ``no_address`` included (its audience as it is now: see the
    module's notes); :class:`IncidentNotFound` for an unknown id."""
    async with database.reading() as session:
        incident = await _incident(session, incident_id)
        if incident.delivery_counts is not None:
            return UnreachedCounts(by_reason=dict.fromkeys(REASONS, 0), purged=True)
        found = await count_unreached(session, [incident_id])
        no_address = await count_no_address(session, incident_id)
    counts = found.get(incident_id) or UnreachedCounts(by_reason=dict.fromkeys(REASONS, 0))
    if not no_address:
        return counts
    return UnreachedCounts(
        counts.unreached + no_address,
        counts.still_trying,
        {**counts.by_reason, "no_address": no_address},
    )


def _page_query(
    incident_id: int,
    after: str | None,
    limit: int,
    only: Only | None,
    scopes: Sequence[tuple[str, str]] = (),
) -> Any:
    """The page's customers (``limit`` + 1: the extra one says there is more), in id order,
    as (customer_id, trying, rank) rows: a walk of the customer index from ``after`` that
    stops at the page's end, merged with (unless ``only`` is ``trying``) the customers of
    ``scopes`` without any delivery of the incident (:func:`_no_address_query`), after the
    same cursor. The two are disjoint (a customer has a delivery of the incident or not)."""
    with_rows = _with_rows_query(incident_id, after, limit, only)
    if not scopes or only == "trying":
        return with_rows
    both = union_all(
        select(with_rows.subquery()),
        select(_no_address_query(incident_id, scopes, after, limit + 1).subquery()),
    ).subquery("both")
    return select(both).order_by(both.c.customer_id).limit(limit + 1)


def _with_rows_query(incident_id: int, after: str | None, limit: int, only: Only | None) -> Any:
    """The page's customers with deliveries of the incident (``limit`` + 1), in id order."""
    trying = _trying()
    query = (
        select(_D.c.customer_id, trying.label("trying"), _rank().label("rank"))
        .where(
            _D.c.incident_id == incident_id,
            _D.c.state.not_in(REACHED_STATES),
            _not_out(_D.c.customer_id, _D.c.incident_id),
        )
        .group_by(_D.c.customer_id)
        .order_by(_D.c.customer_id)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(_D.c.customer_id > after)
    if only == "final":
        query = query.having(trying == 0)
    elif only == "trying":
        query = query.having(trying == 1)
    return query


async def unreached_page(
    database: Database,
    incident_id: int,
    *,
    after: str | None = None,
    limit: int = 50,
    only: Only | None = None,
) -> UnreachedPage:
    """The customers not reached (and, unless ``only``, those still tried) after the customer
    id ``after``, at most ``limit``, each with their latest delivery per channel; those of
    the incident's audience as it is now without any delivery of it (``no_address``, no
    channel) among them in id order, once a round of it was written (not with ``only``
    ``trying``). :class:`IncidentNotFound` for an unknown id, ``ValueError`` naming a bad input. An
    incident whose deliveries were purged has an empty page."""
    check_page(after, limit, only)
    async with database.reading() as session:
        incident = await _incident(session, incident_id)
        if incident.delivery_counts is not None:
            return UnreachedPage([], None)
        await _without_jit(session)
        scopes = await incident_scopes(session, incident_id)
        if only == "trying" or not await _written(session, incident_id):
            scopes = []
        page = _page_query(incident_id, after, limit, only, scopes).cte("page")
        mine = table_of(Delivery).alias("mine")
        recorded = select(func.max(_E.c.at)).where(_E.c.delivery_id == mine.c.id).scalar_subquery()
        rows = (
            await session.execute(
                select(
                    page.c.customer_id,
                    page.c.trying,
                    page.c.rank,
                    _C.c.name,
                    mine.c.id,
                    mine.c.channel,
                    mine.c.state,
                    mine.c.attempts,
                    mine.c.last_error,
                    func.coalesce(recorded, mine.c.created_at),
                    mine.c.next_attempt_at,
                )
                .select_from(
                    page.join(_C, _C.c.id == page.c.customer_id).outerjoin(
                        mine,
                        and_(
                            mine.c.customer_id == page.c.customer_id,
                            mine.c.incident_id == incident_id,
                        ),
                    )
                )
                .order_by(page.c.customer_id, mine.c.channel, mine.c.id)
            )
        ).all()
    customers = _customers(rows)
    more = len(customers) > limit
    shown = customers[:limit]
    return UnreachedPage(shown, shown[-1].customer_id if more else None)


def _customers(rows: Sequence[Sequence[Any]]) -> list[UnreachedCustomer]:
    """Each customer of the rows (in their order) with the latest delivery per channel (the
    rows come by channel, oldest first); one without any (``no_address``) has one row, its
    delivery's columns null, and no channel."""
    out: list[UnreachedCustomer] = []
    latest: dict[str, ChannelOutcome] = {}
    for row in rows:
        customer_id, trying, rank, name, delivery_id, channel, state = row[:7]
        attempts, last_error, at, next_attempt_at = row[7:]
        if not out or out[-1].customer_id != customer_id:
            latest = {}
            out.append(
                UnreachedCustomer(
                    customer_id,
                    name,
                    bool(trying),
                    "trying" if trying else _REASON_OF_RANK.get(int(rank), "other"),
                    [],
                )
            )
        if delivery_id is None:
            continue
        latest[channel] = ChannelOutcome(
            channel,
            state,
            int(delivery_id),
            int(attempts),
            last_error,
            at,
            next_attempt_at if state == "pending" else None,
        )
        out[-1].channels[:] = sorted(latest.values(), key=lambda outcome: outcome.channel)
    return out


def as_dict(counts: UnreachedCounts, page: UnreachedPage) -> dict[str, Any]:
    """The counts and the page as plain data (times as ISO 8601 strings): ``--json``."""

    def plain(value: Any) -> Any:
        return value.isoformat() if isinstance(value, datetime) else value

    return {
        **asdict(counts),
        "customers": [
            {
                **{k: v for k, v in asdict(c).items() if k != "channels"},
                "channels": [{k: plain(v) for k, v in asdict(o).items()} for o in c.channels],
            }
            for c in page.customers
        ],
        "next_after": page.next_after,
    }


def listed(counts: UnreachedCounts, only: Only | None) -> int:
    """How many customers a list with this filter holds, in all its pages."""
    if only == "final":
        return counts.unreached
    if only == "trying":
        return counts.still_trying
    return counts.unreached + counts.still_trying


async def unreached_report(
    database: Database,
    incident_id: int,
    *,
    after: str | None = None,
    limit: int = 50,
    only: Only | None = None,
    customers: bool = True,
) -> tuple[UnreachedCounts, UnreachedPage]:
    """The counts and a page, as staff read them (the CLI, the API, the console). The page
    is not read when the counts say it would be empty (walking the customer index to find
    nobody is a page's worst case), nor without ``customers`` (a viewer's: the counts
    only, customer data being for operators)."""
    check_page(after, limit, only)
    counts = await unreached_counts(database, incident_id)
    if not customers or not listed(counts, only):
        return counts, UnreachedPage([], None)
    return counts, await unreached_page(database, incident_id, after=after, limit=limit, only=only)
