"""Night round: writing a round with the shipped example rules, by day and in quiet hours.

The shipped rules (``rules/examples/default.yaml``, named by ``config.yaml``) hold every
non-critical message of a customer in their quiet hours (22:00-07:00) until the window
ends. Holding used to cost one statement per customer, and a major incident declared at
night took many times longer to write than the same incident by day. This scenario
declares a major incident for ``customers`` customers on a fresh store at 11:00 UTC and,
on another fresh store, at 01:38 UTC (every customer in quiet hours), and times the round's
writing (:meth:`~broadcaster.engine.Engine.process_due_rounds`: audience, rules, delivery
rows, holds). No target: the figures and their ratio, for docs/performance.md.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.report import Row
from bench.store import add_customers, store_url
from broadcaster.clock import FakeClock
from broadcaster.config.loader import load_settings
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import Database, Delivery
from channels.memory import MemoryChannel

REPO = Path(__file__).resolve().parents[1]
COMPONENT = "network"
DAY = datetime(2026, 1, 6, 11, 0, tzinfo=UTC)
NIGHT = datetime(2026, 1, 6, 1, 38, tzinfo=UTC)


async def write_round(url: str, customers: int, at: datetime) -> dict[str, float]:
    """Seconds to write the first round of a major incident declared at ``at``, and how
    many of its deliveries wait for later (held)."""
    base = load_settings(REPO / "config.yaml", environ={})
    settings = base.model_copy(update={"database": base.database.model_copy(update={"url": url})})
    database = Database(url)
    try:
        await add_customers(database, customers, components=[COMPONENT], kinds=["email"])
        clock = FakeClock(at)
        channels = {
            name: MemoryChannel(name=name, contact=spec.contact)
            for name, spec in settings.channels.items()
            if hasattr(spec, "contact")
        }
        engine = await Engine.create(settings, database, clock, channels, owner="bench-night")
        await service.declare(
            database,
            clock,
            service.Declaration("Network outage", "major", "Down.", components=[COMPONENT]),
        )
        started = time.perf_counter()
        await engine.process_due_rounds()
        seconds = time.perf_counter() - started
        async with database.session() as session:
            written, held = (
                await session.execute(
                    select(func.count(), func.count().filter(Delivery.next_attempt_at > at))
                )
            ).one()
    finally:
        await database.dispose()
    return {"seconds": seconds, "deliveries": float(written), "held": float(held)}


async def run(workdir: Path, *, backends: list[str], customers: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    rows: list[Row] = []
    for backend in backends:
        found: dict[str, dict[str, float]] = {}
        for label, at in (("day", DAY), ("night", NIGHT)):
            async with store_url(backend, workdir) as url:
                found[label] = await write_round(url, customers, at)
        runs.append({"backend": backend, "customers": customers, **found})
        day, night = found["day"], found["night"]
        rows.append(
            Row(
                f"major round of {customers:,} by day, {backend}",
                day["seconds"],
                "s",
                note=f"{day['deliveries']:.0f} deliveries, {day['held']:.0f} held",
            )
        )
        rows.append(
            Row(
                f"major round of {customers:,} at night, {backend}",
                night["seconds"],
                "s",
                note=f"{night['deliveries']:.0f} deliveries, {night['held']:.0f} held for "
                f"quiet hours; {night['seconds'] / day['seconds']:.2f}x the day's time",
            )
        )
    return {"runs": runs, "rows": [r.as_dict() for r in rows]}
