"""``/metrics`` in Prometheus's text format, read from the store at scrape time.

The store is the truth, so every daemon on one database reports the same delivery,
round, promise and follow-up figures (scrape one, or aggregate with ``max``); the feed
and web counters, the channel pauses (those of the daemon's extra dispatch processes
included) and ``broadcaster_leader`` are this daemon's own (``sum``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from broadcaster.dispatch.pause import BOARD
from broadcaster.dispatch.reports import REPORTED
from broadcaster.followups.service import OPEN_STATES
from broadcaster.incidents.lifecycle import OPEN_STATUSES, SEVERITIES
from broadcaster.reports import promise_overdue, rounds_overdue
from broadcaster.store import Delivery, Followup, Incident, Promise, Round, StaffNotice
from broadcaster.unreached import count_unreached
from broadcaster.web.auth import require
from broadcaster.web.state import WebState, state_of

router = APIRouter(tags=["operations"])
log = logging.getLogger("broadcaster.web")

PROMISE_STATES = ("open", "kept", "late")
"""The states of a promise (``promises.state``)."""

LATENESS_BUCKETS = (0.0, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
"""Seconds after its "next update by" that a promised update reached its customers (0 when
before; kept promises are within the grace)."""


@dataclass
class Snapshot:
    deliveries: list[tuple[str, str, int]] = field(default_factory=list)
    rounds: list[tuple[str, str, int]] = field(default_factory=list)
    incidents_open: list[tuple[str, int]] = field(default_factory=list)
    promises: list[tuple[str, int]] = field(default_factory=list)
    lateness_buckets: list[int] = field(default_factory=list)
    lateness_count: int = 0
    lateness_sum: float = 0.0
    promises_overdue: int = 0
    rounds_overdue: int = 0
    followups_open: int = 0
    followups_overdue: int = 0
    staff_notices: list[tuple[str, str, int]] = field(default_factory=list)


WAITING = ("pending", "sending")
"""Delivery states counted at every scrape (the outbox: few rows, indexed)."""
SETTLED_EVERY = 300.0
"""Seconds between counts of the settled deliveries (sent, failed, …): every row a round
ever wrote, millions, kept unless ``retention.messages`` purges them. Counted at every
scrape on every daemon, they took 1.8 s a scrape at 2.5 million rows on SQLite. The counts
of ``/metrics`` read by :meth:`~broadcaster.store.Database.reading`: on SQLite a read-only
connection of their own, which holds up none of the daemon's sends and claims."""


@dataclass
class _Settled:
    """This process's last count of the settled deliveries, and the one being made."""

    counts: list[tuple[str, str, int]] | None = None
    read_at: datetime | None = None
    counting: asyncio.Task[None] | None = None


async def _count_settled(web: WebState, kept: _Settled) -> None:
    async with web.database.reading() as session:
        rows = await session.execute(
            select(Delivery.channel, Delivery.state, func.count())
            .where(Delivery.state.not_in(WAITING))
            .group_by(Delivery.channel, Delivery.state)
        )
        kept.counts = [(c, s, n) for c, s, n in rows]
    kept.read_at = web.clock.now()


async def _recount_settled(web: WebState, kept: _Settled) -> None:
    """:func:`_count_settled` in the background: a failure keeps the last count (and is
    tried again at the next scrape)."""
    try:
        await _count_settled(web, kept)
    except Exception:
        log.warning("could not count the settled deliveries for /metrics", exc_info=True)


async def _settled(web: WebState) -> list[tuple[str, str, int]]:
    """The settled deliveries by channel and state: counted at the first scrape, then again
    in the background every :data:`SETTLED_EVERY` seconds (a scrape gets the last count)."""
    kept = web.caches.get("settled_deliveries")
    if not isinstance(kept, _Settled):
        kept = web.caches["settled_deliveries"] = _Settled()
    if kept.counts is None:
        await _count_settled(web, kept)
    elif (
        kept.read_at is None or (web.clock.now() - kept.read_at).total_seconds() >= SETTLED_EVERY
    ) and (kept.counting is None or kept.counting.done()):
        kept.counting = asyncio.create_task(_recount_settled(web, kept))
    return kept.counts or []


async def stop_counting(web: WebState) -> None:
    """Cancel the background counts still running (the daemon stops: its store closes)."""
    for name in ("settled_deliveries", "customers_unreached"):
        kept = web.caches.get(name)
        counting = getattr(kept, "counting", None)
        if isinstance(counting, asyncio.Task) and not counting.done():
            counting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await counting


# --- Customers not reached ------------------------------------------------------------------

UNREACHED_EVERY = SETTLED_EVERY
"""Seconds between counts of the customers the open incidents have not reached. A count
reads every delivery of the open incidents (the store has no index of deliveries by
incident): 0.2 to 1.5 s for an incident of 1,000,000 deliveries on either store (on
SQLite by a read-only connection: see :data:`SETTLED_EVERY`). So a scrape reports the last
count, made in the background, as for the settled deliveries (:mod:`broadcaster.unreached`)."""


@dataclass
class _Unreached:
    """This process's last count of the customers not reached, by severity."""

    by_severity: dict[str, int] | None = None
    read_at: datetime | None = None
    counting: asyncio.Task[None] | None = None


async def _count_unreached(web: WebState, kept: _Unreached) -> None:
    """Count them, in the background: a failure keeps the last count (tried again later)."""
    try:
        async with web.database.reading() as session:
            severity_of = dict(
                (
                    await session.execute(
                        select(Incident.id, Incident.severity).where(
                            Incident.status.in_(OPEN_STATUSES)
                        )
                    )
                ).all()
            )
            counts = await count_unreached(session, list(severity_of))
        by_severity = dict.fromkeys(SEVERITIES, 0)
        for incident_id, found in counts.items():
            severity = severity_of[incident_id]
            by_severity[severity] = by_severity.get(severity, 0) + found.unreached
        kept.by_severity = by_severity
    except Exception:
        log.warning("could not count the customers not reached for /metrics", exc_info=True)
    kept.read_at = web.clock.now()


async def _unreached(web: WebState) -> dict[str, int] | None:
    """The customers not reached by severity: counted at the first scrape (as the settled
    deliveries are), then again in the background every :data:`UNREACHED_EVERY` seconds (a
    scrape gets the last count); None while no count has succeeded."""
    kept = web.caches.get("customers_unreached")
    if not isinstance(kept, _Unreached):
        kept = web.caches["customers_unreached"] = _Unreached()
    if kept.read_at is None:
        await _count_unreached(web, kept)
    elif (web.clock.now() - kept.read_at).total_seconds() >= UNREACHED_EVERY and (
        kept.counting is None or kept.counting.done()
    ):
        kept.counting = asyncio.create_task(_count_unreached(web, kept))
    return kept.by_severity


def customers_unreached(by_severity: dict[str, int] | None) -> Iterator[Metric]:
    """``broadcaster_customers_unreached{severity}``: customers of the open incidents none of
    whose messages went out, none in flight (every severity, zero too); nothing while no
    count has succeeded."""
    if by_severity is None:
        return
    gauge = GaugeMetricFamily(
        "broadcaster_customers_unreached",
        "Customers of the open incidents not reached: no message sent, none still queued or "
        "retried; without those with no delivery at all (no_address, no usable address) "
        f"(counted in the background at most every {UNREACHED_EVERY:g} s)",
        labels=["severity"],
    )
    for severity in dict.fromkeys((*SEVERITIES, *by_severity)):
        gauge.add_metric([severity], by_severity.get(severity, 0))
    yield gauge


class _Families(Collector):
    def __init__(self, families: Iterator[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self.families


async def take(web: WebState) -> Snapshot:
    snap = Snapshot()
    now = web.clock.now()
    lateness = func.coalesce(Promise.lateness_seconds, 0.0)
    settled = Promise.state.in_(("kept", "late"))
    counted = await _settled(web)
    async with web.database.reading() as session:
        snap.deliveries = counted + [
            (c, s, n)
            for c, s, n in await session.execute(
                select(Delivery.channel, Delivery.state, func.count())
                .where(Delivery.state.in_(WAITING))
                .group_by(Delivery.channel, Delivery.state)
            )
        ]
        snap.rounds = [
            (k, s, n)
            for k, s, n in await session.execute(
                select(Round.kind, Round.state, func.count()).group_by(Round.kind, Round.state)
            )
        ]
        snap.incidents_open = [
            (sev, n)
            for sev, n in await session.execute(
                select(Incident.severity, func.count())
                .where(Incident.status.in_(OPEN_STATUSES))
                .group_by(Incident.severity)
            )
        ]
        snap.promises = [
            (s, n)
            for s, n in await session.execute(
                select(Promise.state, func.count()).group_by(Promise.state)
            )
        ]
        row = (
            await session.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(lateness), 0.0),
                    *(
                        func.sum(case((lateness <= bound, 1), else_=0))
                        for bound in LATENESS_BUCKETS
                    ),
                ).where(settled)
            )
        ).one()
        snap.lateness_count = int(row[0] or 0)
        snap.lateness_sum = float(row[1] or 0.0)
        snap.lateness_buckets = [int(v or 0) for v in row[2:]]
        # Broken now, not yet settled: no round has reached the customers since (the
        # daemons down, the scheduler stuck, or a channel down: a promise is kept when
        # customers hear, not when its round starts). Settled later as late; an alert
        # should not wait for that. The same rule as an incident's report (the console and
        # the API) counts by.
        grace = web.settings.schedule.promise_grace
        snap.promises_overdue = int(
            (
                await session.execute(select(func.count()).where(promise_overdue(now, grace)))
            ).scalar_one()
        )
        snap.rounds_overdue = await rounds_overdue(session, now, grace)
        open_tasks = Followup.state.in_(OPEN_STATES)
        snap.followups_open = int(
            (await session.execute(select(func.count()).where(open_tasks))).scalar_one()
        )
        snap.followups_overdue = int(
            (
                await session.execute(
                    select(func.count()).where(open_tasks, Followup.deadline_at < now)
                )
            ).scalar_one()
        )
        snap.staff_notices = [
            (k, s, n)
            for k, s, n in await session.execute(
                select(StaffNotice.kind, StaffNotice.state, func.count()).group_by(
                    StaffNotice.kind, StaffNotice.state
                )
            )
        ]
    return snap


class _Collector(Collector):
    def __init__(self, web: WebState, snap: Snapshot) -> None:
        self.web = web
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        snap, web = self.snap, self.web
        deliveries = GaugeMetricFamily(
            "broadcaster_deliveries", "Deliveries in the store", labels=["channel", "state"]
        )
        for channel, state, count in snap.deliveries:
            deliveries.add_metric([channel, state], count)
        yield deliveries
        depth = GaugeMetricFamily(
            "broadcaster_outbox_depth", "Deliveries waiting to be sent (pending or sending)"
        )
        depth.add_metric([], sum(n for _, s, n in snap.deliveries if s in ("pending", "sending")))
        yield depth
        rounds = GaugeMetricFamily("broadcaster_rounds", "Rounds", labels=["kind", "state"])
        for kind, state, count in snap.rounds:
            rounds.add_metric([kind, state], count)
        yield rounds
        incidents = GaugeMetricFamily(
            "broadcaster_incidents_open", "Open incidents", labels=["severity"]
        )
        # Every severity and promise state, zero too: a series that vanishes at zero
        # cannot be alerted on (``== 0``) or graphed as a line that falls to it.
        open_by_severity = dict(snap.incidents_open)
        for severity in dict.fromkeys((*SEVERITIES, *open_by_severity)):
            incidents.add_metric([severity], open_by_severity.get(severity, 0))
        yield incidents
        promises = GaugeMetricFamily(
            "broadcaster_promises", "Promised updates by state", labels=["state"]
        )
        by_state = dict(snap.promises)
        for state in dict.fromkeys((*PROMISE_STATES, *by_state)):
            promises.add_metric([state], by_state.get(state, 0))
        yield promises
        overdue_promises = GaugeMetricFamily(
            "broadcaster_promises_overdue",
            "Open promised updates past their time and grace, no round having reached the "
            "customers since: being broken now",
        )
        overdue_promises.add_metric([], snap.promises_overdue)
        yield overdue_promises
        overdue_rounds = GaugeMetricFamily(
            "broadcaster_rounds_overdue",
            "Rounds due more than the promise grace ago and not yet written out (the leader "
            "gone or frozen, a round stuck): a first notice among them has no promise yet",
        )
        overdue_rounds.add_metric([], snap.rounds_overdue)
        yield overdue_rounds
        leader = GaugeMetricFamily(
            "broadcaster_leader", "1 on the daemon that holds the leadership (runs the rounds)"
        )
        leader.add_metric([], 1 if web.leading() else 0)
        yield leader
        cumulative = [
            (str(bound), count)
            for bound, count in zip(LATENESS_BUCKETS, snap.lateness_buckets, strict=True)
        ]
        cumulative.append(("+Inf", snap.lateness_count))
        yield HistogramMetricFamily(
            "broadcaster_promise_lateness_seconds",
            "How late promised updates reached their customers (0 when on time or early)",
            buckets=cumulative,
            sum_value=snap.lateness_sum,
        )
        followups = GaugeMetricFamily("broadcaster_followups_open", "Open forced follow-ups")
        followups.add_metric([], snap.followups_open)
        yield followups
        overdue = GaugeMetricFamily(
            "broadcaster_followups_overdue", "Open forced follow-ups past their deadline"
        )
        overdue.add_metric([], snap.followups_overdue)
        yield overdue
        notices = GaugeMetricFamily(
            "broadcaster_staff_notices",
            "Notices to staff (follow-ups, reminders, escalations, steps) by state",
            labels=["kind", "state"],
        )
        for kind, state, count in snap.staff_notices:
            notices.add_metric([kind, state], count)
        yield notices
        feed_polls = CounterMetricFamily(
            "broadcaster_feed_events", "Feed watcher events by kind", labels=["feed", "event"]
        )
        feed_errors = CounterMetricFamily(
            "broadcaster_feed_errors", "Failed polls of a feed", labels=["feed"]
        )
        last_success = GaugeMetricFamily(
            "broadcaster_feed_last_success_timestamp_seconds",
            "When each feed was last read successfully",
            labels=["feed"],
        )
        for watcher in web.feeds:
            for event, count in sorted(watcher.counters.items()):
                feed_polls.add_metric([watcher.name, event], count)
            feed_errors.add_metric([watcher.name], watcher.counters.get("failures", 0))
            if watcher.last_success is not None:
                last_success.add_metric([watcher.name], watcher.last_success.timestamp())
        yield feed_polls
        yield feed_errors
        yield last_success
        rules = GaugeMetricFamily(
            "broadcaster_rules_reload_failing", "1 while the last rules reload was rejected"
        )
        rules.add_metric([], 1 if web.rules is not None and web.rules.error else 0)
        yield rules
        scheduler = GaugeMetricFamily(
            "broadcaster_scheduler_running", "1 while this daemon's scheduler runs"
        )
        scheduler.add_metric([], 1 if web.scheduler_running else 0)
        yield scheduler
        yield from _pauses(named=not web.settings.http.public_metrics)
        events = CounterMetricFamily(
            "broadcaster_web_events", "Web endpoint events of this process", labels=["event"]
        )
        for name, count in sorted(web.counters.items()):
            events.add_metric([name], count)
        yield events


RECEIVERS = "receivers"
"""The ``scope`` of every receiver's pauses of a channel together, when ``/metrics`` is
served without a token (``http.public_metrics``): a webhook customer's host is the
customer's, not the public's."""


def _pauses(*, named: bool = True) -> Iterator[Metric]:
    """This daemon's channel pauses (:mod:`broadcaster.dispatch.pause`), its extra dispatch
    processes' included (as they last reported them): a provider said the sender was over
    its rate. ``scope`` is empty for a pause of the whole channel (so
    that its series are those from before scopes: Prometheus drops an empty label), else
    the receiver's origin (a push service, a webhook customer's host), or ``other`` beyond
    the scopes a channel names (:data:`~broadcaster.dispatch.pause.NAMED_SCOPES`). Not
    ``named``, the receivers of a channel are counted together under :data:`RECEIVERS`."""
    pauses = CounterMetricFamily(
        "broadcaster_channel_pauses",
        "Pauses of a channel (or of one receiver of it: scope) begun because its provider "
        "said the sender was over its rate",
        labels=["channel", "scope"],
    )
    deferred = CounterMetricFamily(
        "broadcaster_channel_pause_deferred",
        "Messages a channel's pause held back in the queue (not sent, attempt not counted)",
        labels=["channel", "scope"],
    )
    until = GaugeMetricFamily(
        "broadcaster_channel_paused_until_timestamp_seconds",
        "When a channel's latest pause ends or ended (paused while in the future)",
        labels=["channel", "scope"],
    )

    def shown(scope: str) -> str:
        return scope if named or not scope else RECEIVERS

    board = REPORTED.total(BOARD)
    begun: dict[tuple[str, str], int] = {}
    for (channel, scope), count in board.pauses.items():
        key = (channel, shown(scope))
        begun[key] = begun.get(key, 0) + count
    held: dict[tuple[str, str], int] = {}
    for (channel, scope), count in board.deferred.items():
        key = (channel, shown(scope))
        held[key] = held.get(key, 0) + count
    ends: dict[tuple[str, str], float] = {}
    for (channel, scope), at in board.until.items():
        key = (channel, shown(scope))
        ends[key] = max(ends.get(key, at.timestamp()), at.timestamp())
    for key, count in sorted(begun.items()):
        pauses.add_metric(list(key), count)
    for key, count in sorted(held.items()):
        deferred.add_metric(list(key), count)
    for key, end in sorted(ends.items()):
        until.add_metric(list(key), end)
    yield pauses
    yield deferred
    yield until


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(request: Request) -> Response:
    web = state_of(request)
    if not web.settings.http.public_metrics:
        await require("viewer")(request)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(web, await take(web)))
    registry.register(_Families(customers_unreached(await _unreached(web))))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
