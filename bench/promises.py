"""Promises: a 24-hour incident on an accelerated clock, with operator updates and crashes.

N customers are affected by one critical incident. The engine (the daemon's own, driven
in-process as the demo does) runs on a :class:`SkippingClock`: time runs as fast as the
wall clock while the engine works (so rounds, sends and restarts take the time they
really take) and jumps over the idle spans to the next thing that can happen: a due
round, an expired lease, an operator update, a crash. Operator updates come at random
times (each pulls the pending round forward). Three times the daemon crashes, two kinds
in turn:

- **mid-round**: it has claimed the due round, materialised two batches of it and claimed a
  batch of deliveries, and dies without releasing anything; a new engine (new lease owner)
  starts on the same store after a random down time of 5 to 40 s and takes the work over
  when the dead one's leases expire;
- **before a round**: it dies idle, up to its down time before a round falls due, so that
  the round comes due while no daemon runs and is claimed late, when the new one starts.

After 24 hours the incident is resolved.

Two views of "promise kept": the store's (the round that keeps a promise reached its
audience, all but 1 % of its messages sent, by its due time plus ``schedule.promise_grace``:
what ``incident show`` and ``/metrics`` count, :mod:`broadcaster.schedule.promises`), and the
customers' (the last message of that round was sent by then).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.pipeline import LINK_SECRET
from bench.report import Row
from bench.store import add_customers, store_url
from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.outbox.materialise import materialise_round
from broadcaster.schedule.rounds import claim_due_round, next_wakeup
from broadcaster.store import Database, Delivery, Promise, Round
from channels.base import Message, Receipt, Target

COMPONENT = "line-9"
START = datetime(2026, 1, 6, 5, 0, tzinfo=UTC)
UPDATES = 8
STATUSES = ("investigating", "identified", "monitoring", "identified")


class CountingChannel:
    """Accepts everything; counts (a 24-hour run would not fit a list of messages)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.contact = "email"
        self.count = 0

    async def send(self, target: Target, message: Message) -> Receipt:
        self.count += 1
        return Receipt(provider_message_id=f"count-{self.count}")

    async def aclose(self) -> None:
        return None


class SkippingClock(FakeClock):
    """A fake clock that also runs: between two jumps it moves with the wall clock, so that
    what the engine does takes the time it really takes, and :meth:`set` skips the idle span
    up to the next thing that can happen."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self._mark = time.monotonic()

    def now(self) -> datetime:
        return super().now() + timedelta(seconds=time.monotonic() - self._mark)

    def _rebase(self) -> datetime:
        current = self.now()
        self._mark = time.monotonic()
        return super().set(current)

    def advance(self, delta: timedelta | float) -> datetime:
        self._rebase()
        return super().advance(delta)

    def set(self, when: datetime) -> datetime:
        """Jump to ``when``; a time the clock has already run past leaves it where it is."""
        current = self._rebase()
        return super().set(max(when, current))


def settings_for(url: str) -> Settings:
    return Settings.model_validate(
        {
            "database": {"url": url},
            "delivery": {"channels": ["mail"], "batch_size": 500},
            "channels": {"mail": {"type": "console"}},
            "http": {"enabled": False},
            "messages": {"link_secret": LINK_SECRET},
        }
    )


async def _crash(engine: Engine, database: Database, clock: FakeClock) -> bool:
    """The engine dies mid-round: the due round claimed, two batches written, one batch of
    deliveries claimed, nothing released. False when no round was due to crash in."""
    claimed = await claim_due_round(
        database, clock, engine.settings.schedule, engine.owner, engine.escalation
    )
    if claimed is None:
        return False
    batches = 0

    def after_two() -> bool:
        nonlocal batches
        batches += 1
        return batches > 2

    await materialise_round(
        database, clock, claimed, engine.routes, engine.settings.schedule, after_two
    )
    await engine.dispatcher.claim(engine.settings.delivery.batch_size)
    return True


async def _crash_and_restart(
    crashes: list[dict[str, str]],
    database: Database,
    clock: SkippingClock,
    rng: random.Random,
    engine: Engine,
) -> dict[str, str]:
    """Crash the running engine (mid-round or just before a round, in turn) and let its
    down time pass; the caller starts the new engine. What happened, for the record."""
    down = timedelta(seconds=rng.uniform(5, 40))
    due = await next_wakeup(database)
    if len(crashes) % 2 == 0:
        # In the middle of the next round, whenever that is.
        if due is not None:
            clock.set(due)
        crashed_at = clock.now()
        kind = "mid-round" if await _crash(engine, database, clock) else "idle"
    else:
        # Idle, shortly before the next round: it falls due while no daemon runs.
        if due is not None:
            clock.set(due - down * rng.uniform(0.2, 0.9))
        crashed_at = clock.now()
        kind = "before a round"
    clock.advance(down)
    return {
        "at": crashed_at.isoformat(),
        "kind": kind,
        "down_seconds": f"{down.total_seconds():.1f}",
        "round_due": due.isoformat() if due is not None else "",
    }


async def _delivery_lease(database: Database) -> datetime | None:
    async with database.session() as session:
        found = (
            await session.execute(
                select(func.min(Delivery.lease_expires_at)).where(Delivery.state == "sending")
            )
        ).scalar_one_or_none()
    if isinstance(found, str):
        found = datetime.fromisoformat(found)
    if found is not None and found.tzinfo is None:
        found = found.replace(tzinfo=UTC)
    return found


async def simulate(
    backend: str, workdir: Path, customers: int, hours: int, restarts: int, seed: int = 24
) -> dict[str, Any]:
    rng = random.Random(seed)
    clock = SkippingClock(START)
    end = START + timedelta(hours=hours)
    span = (end - START).total_seconds()
    events: list[tuple[datetime, str]] = [
        (START + timedelta(seconds=rng.uniform(600, span - 600)), "update") for _ in range(UPDATES)
    ]
    events += [
        (START + timedelta(seconds=rng.uniform(3600, span - 3600)), "crash")
        for _ in range(restarts)
    ]
    events.sort()
    async with store_url(backend, workdir) as url:
        database = Database(url)
        channel = CountingChannel("mail")
        settings = settings_for(url)
        engines = 1
        crashes: list[dict[str, str]] = []
        try:
            await add_customers(database, customers, components=[COMPONENT], kinds=["email"])
            engine = await Engine.create(settings, database, clock, {"mail": channel})
            incident = await service.declare(
                database,
                clock,
                service.Declaration(
                    "Signalling failure", "critical", "No trains.", components=[COMPONENT]
                ),
            )
            pending = list(events)
            updates = 0
            while True:
                await engine.process_due_rounds()
                await engine.dispatch_all()
                wake = [await next_wakeup(database), await _delivery_lease(database)]
                if pending:
                    wake.append(pending[0][0])
                times = [t for t in wake if t is not None]
                upcoming = min(times) if times else end
                if upcoming >= end and not pending:
                    break
                clock.set(max(upcoming, clock.now()))
                while pending and pending[0][0] <= clock.now():
                    _, kind = pending.pop(0)
                    if kind == "update":
                        updates += 1
                        await service.post_update(
                            database,
                            clock,
                            incident.id,
                            service.UpdateRequest(
                                f"Update {updates}: engineers are on site.",
                                status=STATUSES[updates % len(STATUSES)],
                            ),
                        )
                        continue
                    crashes.append(await _crash_and_restart(crashes, database, clock, rng, engine))
                    engine = await Engine.create(settings, database, clock, {"mail": channel})
                    engines += 1
            clock.set(max(end, clock.now()))
            await service.resolve(
                database, clock, incident.id, service.UpdateRequest("Trains run again.")
            )
            while True:
                await engine.process_due_rounds()
                await engine.dispatch_all()
                later = [await next_wakeup(database), await _delivery_lease(database)]
                upcoming_or_none = min((t for t in later if t is not None), default=None)
                if upcoming_or_none is None:
                    break
                clock.set(max(upcoming_or_none, clock.now()))
            # The scheduler's next pass (the daemon's within its sweep interval) settles
            # the promise the resolution kept, now that its messages are out.
            await engine.process_due_rounds()
            figures = await _promise_figures(database, settings.schedule.promise_grace)
        finally:
            await database.dispose()
    return {
        "backend": backend,
        "customers": customers,
        "hours": hours,
        "operator_updates": UPDATES,
        "crashes": crashes,
        "engines": engines,
        "messages_handed_to_channel": channel.count,
        **figures,
    }


async def _promise_figures(database: Database, grace: timedelta) -> dict[str, Any]:
    async with database.session() as session:
        promises: Sequence[Any] = (
            await session.execute(
                select(
                    Promise.due_at,
                    Promise.state,
                    Promise.lateness_seconds,
                    Promise.kept_by_round_id,
                )
            )
        ).all()
        last_sent = dict(
            (
                await session.execute(
                    select(Delivery.round_id, func.max(Delivery.sent_at)).group_by(
                        Delivery.round_id
                    )
                )
            ).all()
        )
        states = dict(
            (
                await session.execute(select(Delivery.state, func.count()).group_by(Delivery.state))
            ).all()
        )
        rounds = (
            await session.execute(
                select(func.count()).select_from(Round).where(Round.state == "dispatched")
            )
        ).scalar_one()
    kept = sum(1 for p in promises if p.state == "kept")
    worst_store = max((p.lateness_seconds or 0.0 for p in promises), default=0.0)
    customer_late: list[float] = []
    for p in promises:
        sent = last_sent.get(p.kept_by_round_id)
        if sent is None:
            continue
        if isinstance(sent, str):
            sent = datetime.fromisoformat(sent)
        if sent.tzinfo is None:
            sent = sent.replace(tzinfo=UTC)
        due = p.due_at if p.due_at.tzinfo else p.due_at.replace(tzinfo=UTC)
        customer_late.append((sent - due).total_seconds())
    kept_by_customers = sum(1 for late in customer_late if late <= grace.total_seconds())
    return {
        "promises": len(promises),
        "promises_kept": kept,
        "promises_open": sum(1 for p in promises if p.state == "open"),
        "kept_share": kept / len(promises) if promises else None,
        "worst_lateness_seconds": worst_store,
        "customer_view_kept": kept_by_customers,
        "customer_view_share": kept_by_customers / len(customer_late) if customer_late else None,
        "customer_view_worst_seconds": max(customer_late, default=0.0),
        "rounds_dispatched": rounds,
        "delivery_states": states,
        "grace_seconds": grace.total_seconds(),
    }


async def run(
    workdir: Path, *, backends: list[str], customers: int, hours: int, restarts: int
) -> dict[str, Any]:
    runs = []
    rows: list[Row] = []
    for backend in backends:
        found = await simulate(backend, workdir, customers, hours, restarts)
        runs.append(found)
        label = f"{customers:,} customers, {hours} h, {len(found['crashes'])} crashes, {backend}"
        share = found["kept_share"]
        rows.append(
            Row(
                f"promises kept (store) {label}",
                None if share is None else 100 * share,
                "%",
                at_least=100.0,
                note=f"{found['promises_kept']}/{found['promises']}; worst lateness "
                f"{found['worst_lateness_seconds']:.0f} s",
            )
        )
        view = found["customer_view_share"]
        rows.append(
            Row(
                f"promises kept (last message sent) {label}",
                None if view is None else 100 * view,
                "%",
                at_least=100.0,
                note=f"worst: last message {found['customer_view_worst_seconds']:.0f} s after "
                f"the promised time (grace {found['grace_seconds']:.0f} s)",
            )
        )
    return {"runs": runs, "rows": [r.as_dict() for r in rows]}
