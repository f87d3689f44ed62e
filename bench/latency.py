"""Latency: declaration to the first delivery handed to a channel, over many incidents.

The daemon runs with its default settings (and once more with the earlier 1 s safety
sweep, to show where the time goes: for comparison, without the target); incidents with small
audiences (each its own component) are declared one after another at irregular intervals
through the service the CLI and API call. A recording channel notes when the dispatcher hands
it each incident's first message. The clock starts just before ``declare`` is called. An
incident not handed over within 30 s counts as infinitely late: its percentiles (and the
maximum) are then missing rather than computed over the incidents that did arrive.
"""

from __future__ import annotations

import asyncio
import math
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
WAIT_SECONDS = 30.0
"""How long the first sends are waited for after the last declaration."""


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
                deadline = time.monotonic() + WAIT_SECONDS
                while len(channel.first) < incidents and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        finally:
            await database.dispose()
    seen = [channel.first[i] - t for i, t in declared.items() if i in channel.first]
    return {
        "backend": backend,
        "sweep_interval": sweep,
        "incidents": incidents,
        "audience": audience,
        "messages": channel.count,
        **figures(seen, len(declared) - len(seen)),
    }


def figures(seen: list[float], unseen: int) -> dict[str, Any]:
    """The latency figures of the incidents ``seen`` handed over (seconds each) and of
    ``unseen`` never handed over, which count as infinitely late: with more than 1 % of
    them unseen, p99 is missing (None), not the p99 of those that arrived."""
    latencies = seen + [math.inf] * unseen
    result: dict[str, Any] = {"first_sends_seen": len(seen), "never_sent": unseen}
    if latencies:
        result.update(
            p50=_finite(percentile(latencies, 0.50)),
            p99=_finite(percentile(latencies, 0.99)),
            max=_finite(max(latencies)),
            mean_of_seen=round(sum(seen) / len(seen), 4) if seen else None,
        )
    return result


def _finite(seconds: float) -> float | None:
    """``seconds`` rounded, or None for an incident never handed over (JSON has no infinity)."""
    return None if math.isinf(seconds) else round(seconds, 4)


TARGET_SECONDS = 1.0
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
            missing = found["never_sent"]
            note = (
                f"{missing} of {incidents} incidents never sent within {WAIT_SECONDS:.0f} s "
                "(counted as infinitely late)"
                if missing
                else ""
            )
            default = sweep == DEFAULT_SWEEP
            label = f"{backend}, sweep {sweep}" + (" (default)" if default else "")
            # The target is the default settings'; the 1 s sweep is shown for comparison.
            aside = "" if default else "for comparison: no target"
            p99_note = "; ".join(part for part in (note, aside) if part)
            rows.append(Row(f"latency p50 {label}", found.get("p50"), "s", note=note))
            rows.append(
                Row(
                    f"latency p99 {label}",
                    found.get("p99"),
                    "s",
                    limit=TARGET_SECONDS if default else None,
                    note=p99_note,
                )
            )
    return {"runs": runs, "rows": [r.as_dict() for r in rows]}
