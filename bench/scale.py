"""Scale: one incident with a very large audience (1,000,000 customers in the full run).

Three phases, each in a process of its own so that its peak memory is its own:

1. ``populate``: the customers, one email contact point and one subscription each, are
   written with SQLAlchemy Core executemany (not the validating importer, which does about
   6,000 customers/s: too slow to build a million-customer store in a benchmark), and the
   planner statistics of the customer tables refreshed, as the importer does; with
   ``BENCH_ANALYZE=1`` all of PostgreSQL's tables are then ANALYZEd, as autovacuum would be
   some time after such a load;
2. ``materialise``: an incident is declared for all of them; the audience is counted
   (``audience_size``: one COUNT(DISTINCT) over the subscriptions join) and its first page
   read (audience resolution), then the round is claimed and materialised into one delivery
   row per customer, in keyset batches (``schedule.audience_batch``: the default 5,000, and
   1,000 to show what the batch size buys); the number of rows ``materialise_round``
   says it inserted is recorded beside the number counted in the table;
3. ``unreached`` (with the default batch only): who the incident has not reached is
   counted (:func:`broadcaster.unreached.count_unreached`, as ``/metrics`` does in the
   background: it reads every delivery of the incident) while a writer commits a small
   transaction every 10 ms through the process's sessions, as the daemon's claims and
   sends do: once by :meth:`~broadcaster.store.Database.reading` (on SQLite a read-only
   connection of its own) and, the baseline, once by a session as any other (on SQLite
   the process's one connection and its write lock); the count's seconds and the writer's
   longest wait during it, for each;
4. ``purge`` (with the default batch only): the round is made what it is once sent (every
   delivery ``sent`` with one line of history, the incident closed 400 days ago; on
   PostgreSQL the tables then vacuumed, as autovacuum would have by then), then retention
   purges it (:func:`broadcaster.incidents.retention.purge`, the default
   ``retention.batch``), timed: no target, a figure for operators (docs/scaling.md). Its
   peak RSS is the phase's process's, setup included (the setup's statements run in the
   server);
5. the figures: seconds and peak RSS of the materialising process (its own ``VmHWM``, in
   MB as the issue's 400 MB limit is: ``ru_maxrss`` would be the bench process's size
   when that is larger, as Linux keeps it across fork and exec).

The 5-minute target (the first round of a 1M incident handed to local sinks, several
daemons on PostgreSQL) is the ``firstround`` scenario's (:mod:`bench.firstround`).

``python -m bench.scale --phase populate|materialise|unreached|purge --url URL --customers N``
runs one
phase and prints its figures as one JSON line (what :func:`run` does in a child process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import String, func, insert, literal, select, text, update

from bench.customers_bench import own_peak_rss_mib
from bench.report import Row
from bench.store import add_customers, store_url
from broadcaster.access.credentials import Principal
from broadcaster.audience.query import audience_batch, audience_size
from broadcaster.clock import RealClock
from broadcaster.config.settings import RetentionSettings, ScheduleSettings
from broadcaster.incidents import retention, service
from broadcaster.outbox.materialise import ChannelRoute, materialise_round
from broadcaster.schedule.rounds import claim_due_round
from broadcaster.store import Database, Delivery, DeliveryEvent, Incident
from broadcaster.store.types import UTCDateTime
from broadcaster.unreached import count_unreached

COMPONENT = "network"
MEMORY_LIMIT_MB = 400.0
"""The issue's limit, 400 MB: decimal megabytes (400e6 bytes, about 381 MiB)."""
MIB = 1024 * 1024
TIME_LIMIT_S = 60.0
ANALYZE_ENV = "BENCH_ANALYZE"
DEFAULT_BATCH = ScheduleSettings().audience_batch


async def populate(url: str, customers: int) -> dict[str, float]:
    database = Database(url)
    try:
        started = time.perf_counter()
        rows = await add_customers(
            database, customers, components=[COMPONENT], kinds=["email"], batch=10_000
        )
        seconds = time.perf_counter() - started
        if database.dialect == "postgresql" and os.environ.get(ANALYZE_ENV):
            # What autovacuum does some time after a bulk load. Off by default, so that the
            # figures compare with earlier runs. With these statistics the old audience
            # count (COUNT over SELECT DISTINCT) was planned as a parallel hash aggregate
            # that at times ran for minutes; it is now a COUNT(DISTINCT), which PostgreSQL
            # computes by sorting (broadcaster/audience/query.py).
            async with database.engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text("ANALYZE"))
    finally:
        await database.dispose()
    return {
        "populate_seconds": seconds,
        "rows": float(rows),
        "rows_per_second": rows / seconds,
        "peak_rss_mib": own_peak_rss_mib(),
    }


async def materialise(url: str, batch: int = DEFAULT_BATCH) -> dict[str, float]:
    database = Database(url)
    clock = RealClock()
    settings = ScheduleSettings(audience_batch=batch)
    try:
        incident = await service.declare(
            database,
            clock,
            service.Declaration("Network outage", "critical", "Down.", components=[COMPONENT]),
        )
        started = time.perf_counter()
        async with database.session() as session:
            size = await audience_size(session, incident.id)
            page = await audience_batch(
                session, incident.id, after=None, limit=settings.audience_batch
            )
        resolve_seconds = time.perf_counter() - started
        claimed = await claim_due_round(database, clock, settings, "bench-scale")
        if claimed is None:
            raise RuntimeError("no round was due")
        started = time.perf_counter()
        inserted = await materialise_round(
            database, clock, claimed, [ChannelRoute("email", "email")], settings
        )
        materialise_seconds = time.perf_counter() - started
        async with database.session() as session:
            rows = (await session.execute(select(func.count()).select_from(Delivery))).scalar_one()
    finally:
        await database.dispose()
    return {
        "audience": float(size),
        "first_page": float(len(page)),
        "resolve_seconds": resolve_seconds,
        "materialise_seconds": materialise_seconds,
        "deliveries": float(rows),
        "inserted_reported": float(inserted or 0),
        "deliveries_per_second": rows / materialise_seconds,
        "audience_batch": float(settings.audience_batch),
        "peak_rss_mib": own_peak_rss_mib(),
    }


WRITE_EVERY = 0.01
"""Seconds between the writer's transactions in the ``unreached`` phase."""


async def _write_every(database: Database, waits: list[float], counting: asyncio.Event) -> None:
    """Commit a small transaction every :data:`WRITE_EVERY`, as the daemon's claims and
    sends do, until cancelled; the time each took while ``counting`` is set, in ``waits``."""
    while True:
        started = time.perf_counter()
        async with database.begin() as connection:
            await connection.execute(text("INSERT INTO bench_writes VALUES (:at)"), {"at": started})
        if counting.is_set():
            waits.append(time.perf_counter() - started)
        await asyncio.sleep(WRITE_EVERY)


async def unreached(url: str) -> dict[str, float]:
    """The count of who was not reached, by :meth:`Database.reading` and by a session, each
    beside a writer that commits every :data:`WRITE_EVERY`: the count's seconds and the
    writer's longest wait while it ran."""
    database = Database(url)
    figures: dict[str, float] = {}
    try:
        async with database.begin() as connection:
            await connection.execute(text("CREATE TABLE bench_writes (at REAL)"))
        async with database.session() as session:
            incident_id = (await session.execute(select(Incident.id))).scalar_one()
        for how, opened in (("reading", database.reading), ("session", database.session)):
            waits: list[float] = []
            counting = asyncio.Event()
            writer = asyncio.create_task(_write_every(database, waits, counting))
            await asyncio.sleep(0.2)
            counting.set()
            started = time.perf_counter()
            async with opened() as session:
                counts = await count_unreached(session, [incident_id])
            seconds = time.perf_counter() - started
            # The write that waited for the count (there is always one to wait for).
            for _ in range(500):
                if waits:
                    break
                await asyncio.sleep(WRITE_EVERY)
            await asyncio.sleep(2 * WRITE_EVERY)
            counting.clear()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            found = counts[incident_id]
            figures[f"unreached_{how}_seconds"] = seconds
            figures[f"unreached_{how}_counted"] = float(found.unreached + found.still_trying)
            figures[f"unreached_{how}_writer_longest_wait_seconds"] = max(waits, default=0.0)
            figures[f"unreached_{how}_writes"] = float(len(waits))
    finally:
        await database.dispose()
    return figures


async def purge(url: str) -> dict[str, float]:
    """Close the incident 400 days ago with every delivery sent and its line of history
    written (not measured), then purge it under retention (measured)."""
    database = Database(url)
    now = datetime.now(UTC)
    try:
        async with database.engine.begin() as connection:
            await connection.execute(update(Delivery).values(state="sent", sent_at=now))
            await connection.execute(
                insert(DeliveryEvent).from_select(
                    ["delivery_id", "at", "state"],
                    select(Delivery.id, literal(now, UTCDateTime()), literal("sent", String())),
                )
            )
            await connection.execute(
                update(Incident).values(
                    status="closed",
                    created_at=now - timedelta(days=401),
                    closed_at=now - timedelta(days=400),
                )
            )
        if database.dialect == "postgresql":
            # Setting every delivery sent left a dead version of each row and its index
            # entries: VACUUM them first, as autovacuum would have in the 400 days, rather
            # than let it run during the measured purge.
            async with database.engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text("VACUUM (ANALYZE) deliveries, delivery_events"))
        started = time.perf_counter()
        purged = await retention.purge(
            database,
            now,
            timedelta(days=1),
            timedelta(days=30),
            by=Principal("cli", "bench", "admin"),
            batch=RetentionSettings().batch,
        )
        seconds = time.perf_counter() - started
        async with database.session() as session:
            left = (await session.execute(select(func.count()).select_from(Delivery))).scalar_one()
    finally:
        await database.dispose()
    return {
        "purge_seconds": seconds,
        "purged_deliveries": float(purged.deliveries),
        "purged_events": float(purged.events),
        "deliveries_left": float(left),
        "purge_peak_rss_mib": own_peak_rss_mib(),
    }


async def _phase(
    phase: str, url: str, customers: int, batch: int = DEFAULT_BATCH
) -> dict[str, float]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.scale",
        "--phase",
        phase,
        "--url",
        url,
        "--customers",
        str(customers),
        "--audience-batch",
        str(batch),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"scale phase {phase} failed with exit code {process.returncode}")
    figures: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    return figures


async def run(
    workdir: Path, *, backends: list[str], customers: int, batches: list[int]
) -> dict[str, Any]:
    """``batches``: the ``schedule.audience_batch`` values to measure (the default first)."""
    runs = []
    rows: list[Row] = []
    for backend, batch in [(b, n) for b in backends for n in batches]:
        async with store_url(backend, workdir) as url:
            populated = await _phase("populate", url, customers)
            measured = await _phase("materialise", url, customers, batch)
            counted = await _phase("unreached", url, customers) if batch == DEFAULT_BATCH else {}
            purged = await _phase("purge", url, customers) if batch == DEFAULT_BATCH else {}
        peak_mb = measured["peak_rss_mib"] * MIB / 1e6
        runs.append(
            {
                "backend": backend,
                "customers": customers,
                **populated,
                **measured,
                **counted,
                **purged,
                "peak_rss_mb": round(peak_mb, 1),
            }
        )
        label = f"{customers:,} customers, {backend}" + (
            "" if batch == DEFAULT_BATCH else f", audience_batch {batch:,}"
        )
        # Fewer deliveries than customers: the time is not the whole round's, so not met.
        complete = measured["deliveries"] >= customers
        written = f"{measured['deliveries']:,.0f} of {customers:,} deliveries written"
        notes_here = [] if measured["deliveries"] == customers else [written]
        if measured["inserted_reported"] != measured["deliveries"]:
            notes_here.append(f"{measured['inserted_reported']:,.0f} reported as inserted")
        if batch != DEFAULT_BATCH:
            notes_here.append("for comparison: no target (not the default batch)")
        note = "; ".join(notes_here)
        # The targets are the default's: another batch size is measured beside it.
        time_limit = TIME_LIMIT_S if batch == DEFAULT_BATCH else None
        rows += [
            Row(f"scale populate (Core executemany) {label}", populated["populate_seconds"], "s"),
            Row(f"scale audience resolution {label}", measured["resolve_seconds"], "s"),
            Row(
                f"scale materialisation {label}",
                measured["materialise_seconds"],
                "s",
                limit=time_limit,
                note=note,
                complete=complete,
            ),
            Row(
                f"scale resolution + materialisation {label}",
                measured["resolve_seconds"] + measured["materialise_seconds"],
                "s",
                limit=time_limit,
                note=note,
                complete=complete,
            ),
            Row(
                f"scale peak RSS (VmHWM) materialising {label}",
                peak_mb,
                "MB",
                limit=MEMORY_LIMIT_MB if batch == DEFAULT_BATCH else None,
                note=f"{measured['peak_rss_mib']:,.1f} MiB",
            ),
        ]
        if counted:
            for how, said in (
                ("reading", "by Database.reading (SQLite: a read-only connection of its own)"),
                ("session", "baseline: by a session (SQLite: the process's one connection)"),
            ):
                everyone = counted[f"unreached_{how}_counted"] == measured["deliveries"]
                wait = counted[f"unreached_{how}_writer_longest_wait_seconds"]
                rows += [
                    Row(
                        f"scale who was not reached, counted {label}, {how}",
                        counted[f"unreached_{how}_seconds"],
                        "s",
                        note=f"{said}; {counted[f'unreached_{how}_counted']:,.0f} counted",
                        complete=everyone,
                    ),
                    Row(
                        f"scale writer's longest wait during that count, {label}, {how}",
                        wait * 1000,
                        "ms",
                        note=f"{counted[f'unreached_{how}_writes']:,.0f} writes while it ran; "
                        "no target",
                    ),
                ]
        if purged:
            whole = purged["deliveries_left"] == 0
            rows.append(
                Row(
                    f"scale purge (retention) of the round, {label}",
                    purged["purge_seconds"],
                    "s",
                    note=(
                        f"{purged['purged_deliveries']:,.0f} deliveries and "
                        f"{purged['purged_events']:,.0f} history lines, "
                        f"{purged['purged_deliveries'] / purged['purge_seconds']:,.0f} "
                        f"deliveries/s; peak RSS {purged['purge_peak_rss_mib']:,.1f} MiB; "
                        "no target" + ("" if whole else f"; {purged['deliveries_left']:,.0f} left")
                    ),
                    complete=whole,
                )
            )
    notes = [
        "customers were bulk-inserted with SQLAlchemy Core executemany, not through the "
        "validating importer (about 6,000 customers/s)"
    ]
    if os.environ.get(ANALYZE_ENV):
        notes.append("PostgreSQL's tables were ANALYZEd after the load")
    return {"runs": runs, "rows": [r.as_dict() for r in rows], "notes": notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--phase", choices=["populate", "materialise", "unreached", "purge"], required=True
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--customers", type=int, required=True)
    parser.add_argument("--audience-batch", type=int, default=DEFAULT_BATCH)
    args = parser.parse_args()
    if args.phase == "populate":
        print(json.dumps(asyncio.run(populate(args.url, args.customers))))
    elif args.phase == "purge":
        print(json.dumps(asyncio.run(purge(args.url))))
    elif args.phase == "unreached":
        print(json.dumps(asyncio.run(unreached(args.url))))
    else:
        print(json.dumps(asyncio.run(materialise(args.url, args.audience_batch))))


if __name__ == "__main__":
    main()
