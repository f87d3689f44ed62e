"""Latency: declaration to the first delivery handed to a channel, over many incidents.

The daemon runs with its default settings (and once more with the earlier 1 s safety
sweep, to show where the time goes); incidents with small audiences (each its own component) are
declared one after another at irregular intervals through the service the CLI and API
call. A recording channel notes when the dispatcher hands it each incident's first
message. The clock starts just before ``declare`` is called.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from bench.pipeline import bench_settings, running_daemon
from bench.report import Row
from bench.store import add_customers, store_url
from broadcaster.clock import RealClock
from broadcaster.config.settings import ScheduleSettings
from broadcaster.incidents import service
from broadcaster.store import Database
from channels.base import Message, Receipt, Target

CHANNEL = "mail"


class FirstSendChannel:
    """Accepts everything at once; remembers when each incident's first message came."""

    def __init__(self, name: str = CHANNEL) -> None:
        self.name = name
        self.contact = "email"
        self.first: dict[int, float] = {}
        self.count = 0

    async def send(self, target: Target, message: Message) -> Receipt:
        self.count += 1
        incident = int(message.headers["X-Broadcaster-Round"].split("/")[0])
        self.first.setdefault(incident, time.perf_counter())
        return Receipt(provider_message_id=f"first-{self.count}")

    async def aclose(self) -> None:
        return None


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.4999)))
    return ordered[rank - 1]


async def measure(
    backend: str, workdir: Path, incidents: int, audience: int, sweep: str, seed: int = 8
) -> dict[str, Any]:
    rng = random.Random(seed)
    components = [f"line-{k}" for k in range(incidents)]
    async with store_url(backend, workdir) as url:
        database = Database(url)
        try:
            for k, component in enumerate(components):
                await add_customers(
                    database,
                    audience,
                    components=[component],
                    prefix=f"l{k:04d}-",
                    kinds=["email"],
                )
            channel = FirstSendChannel()
            settings = bench_settings(url, {CHANNEL: {"type": "console"}}, [CHANNEL], sweep=sweep)
            clock = RealClock()
            declared: dict[int, float] = {}
            async with running_daemon(settings, {CHANNEL: channel}):
                for component in components:
                    started = time.perf_counter()
                    incident = await service.declare(
                        database,
                        clock,
                        service.Declaration(
                            f"Disruption on {component}",
                            "major",
                            "Trains are delayed.",
                            components=[component],
                        ),
                    )
                    declared[incident.id] = started
                    await asyncio.sleep(rng.uniform(0.01, 0.09))
                deadline = time.monotonic() + 30
                while len(channel.first) < incidents and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        finally:
            await database.dispose()
    latencies = [channel.first[i] - t for i, t in declared.items() if i in channel.first]
    result: dict[str, Any] = {
        "backend": backend,
        "sweep_interval": sweep,
        "incidents": incidents,
        "audience": audience,
        "first_sends_seen": len(latencies),
        "messages": channel.count,
    }
    if latencies:
        result.update(
            p50=round(percentile(latencies, 0.50), 4),
            p99=round(percentile(latencies, 0.99), 4),
            max=round(max(latencies), 4),
            mean=round(sum(latencies) / len(latencies), 4),
        )
    return result


DEFAULT_SWEEP = f"{int(ScheduleSettings().sweep_interval.total_seconds() * 1000)}ms"


async def run(
    workdir: Path, *, backends: list[str], incidents: int, audience: int
) -> dict[str, Any]:
    runs = []
    rows: list[Row] = []
    for backend in backends:
        for sweep in (DEFAULT_SWEEP, "1s"):
            found = await measure(backend, workdir, incidents, audience, sweep)
            runs.append(found)
            missing = incidents - found["first_sends_seen"]
            note = f"{missing} incidents never sent within 30 s" if missing else ""
            label = f"{backend}, sweep {sweep}" + (" (default)" if sweep == DEFAULT_SWEEP else "")
            rows.append(Row(f"latency p50 {label}", found.get("p50"), "s", note=note))
            rows.append(Row(f"latency p99 {label}", found.get("p99"), "s", limit=1.0, note=note))
    return {"runs": runs, "rows": [r.as_dict() for r in rows]}
