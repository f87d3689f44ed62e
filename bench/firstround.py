"""First round: one incident for N customers (1,000,000 in the full run), handed to the local
sinks by several daemon processes sharing one PostgreSQL (issue #8: under 5 minutes).

1. A fresh PostgreSQL database gets N customers, each with one webhook contact point (the
   push channel) and one subscription to the component, bulk-written with Core executemany
   (:func:`bench.store.add_customers`, not the validating importer);
2. D daemon processes start: each is ``python -m bench.firstround --daemon``, which runs the
   :class:`~broadcaster.daemon.Daemon` that ``broadcaster run`` runs (same class, SIGTERM
   handling, logging set up as the CLI does), with :func:`bench.pipeline.bench_settings`:
   the production defaults, except the store URL, the push channel, no HTTP server, a fixed
   link secret, and ``schedule.sweep_interval`` set to its production default (250 ms;
   ``bench_settings`` would otherwise use 1 s). Each daemon's webhook channel posts to its
   own path on the one push sink (``/hook/d0``, ``/hook/d1``, ...: the channel's ``url``
   setting, configuration only), so the sink tells which daemon handed over each message;
3. one incident is declared for all N (:func:`broadcaster.incidents.service.declare`, as
   the CLI and the API do), and the clock runs from the declaration through the round's
   claim (``Round.started_at``), the end of materialisation (``Round.materialised_at``), the
   first request at the sink, the sink's N-th request, to N deliveries recorded as sent in
   the store;
4. exactly-once is checked three ways: requests at the sink, distinct ``Idempotency-Key``
   values at the sink (``delivery-<id>``) and deliveries in state ``sent``.

The sinks run in a process of their own (:mod:`bench.sinks`), so on a machine with few
cores the daemons, PostgreSQL and the sink share them: the figure is for everything on one
host. The load average before and after is in the notes.

``python -m bench.firstround --daemon --url URL --hook-url URL`` is one daemon process: it
prints ``{"ready": ...}`` once started, and on SIGTERM stops cleanly and prints its
dispatcher counters and peak RSS as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

from sqlalchemy import func, select

from bench.customers_bench import own_peak_rss_mib
from bench.pipeline import (
    COMPONENT,
    CONTACT_KIND,
    WEBHOOK_SECRET,
    bench_settings,
    start_daemon,
)
from bench.procfs import cpu_seconds, postmaster_pid, server_cpu_seconds
from bench.report import Row
from bench.sinks import Sinks
from bench.store import add_customers, store_url
from broadcaster import eventloop
from broadcaster.clock import RealClock
from broadcaster.config.settings import ScheduleSettings, Settings
from broadcaster.daemon import Daemon
from broadcaster.eventloop import DEFAULT_EVENT_LOOP, EventLoopChoice, loop_name
from broadcaster.incidents import service
from broadcaster.logs import configure_logging
from broadcaster.store import Database, Delivery, Round
from channels import http_transport

TARGET_SECONDS = 300.0
CHANNEL = "push"
MESSAGE = (
    "Trains on line 1 are not running between Central and Harbour because of a signal "
    "failure. Replacement buses run every 10 minutes from the station forecourt."
)
SWEEP_MS = int(ScheduleSettings().sweep_interval / timedelta(milliseconds=1))
LEADER_LOG = "became the leader"


def daemon_settings(url: str, hook_url: str) -> Settings:
    """One daemon's settings: production defaults but the store, the push channel (posting
    to ``hook_url``), no HTTP server, the benchmark link secret; the sweep at its default."""
    spec = {"type": "webhook", "url": hook_url, "secret": WEBHOOK_SECRET}
    return bench_settings(url, {CHANNEL: spec}, [CHANNEL], sweep=f"{SWEEP_MS}ms")


# --- one daemon process -------------------------------------------------------------------


async def _serve_daemon(settings: Settings) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemon = Daemon(settings)
    task = await start_daemon(daemon, stop)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    await task
    engine = daemon._engine
    stats = vars(engine.dispatcher.stats) if engine is not None else {}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "stats": stats,
        "peak_rss_mib": own_peak_rss_mib(),
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "event_loop": loop_name(),
        "cpus": sorted(os.sched_getaffinity(0)),
    }


def daemon_main(url: str, hook_url: str, event_loop: EventLoopChoice = DEFAULT_EVENT_LOOP) -> None:
    settings = daemon_settings(url, hook_url).model_copy(update={"event_loop": event_loop})
    configure_logging(settings.log.level, settings.log.format)  # as ``broadcaster run``
    report = eventloop.run(_serve_daemon(settings), settings.event_loop)  # as ``broadcaster run``
    print(json.dumps(report, default=str), flush=True)


# --- the scenario -------------------------------------------------------------------------


class DaemonProcess:
    """One ``python -m bench.firstround --daemon`` child; its log (stderr) goes to a file."""

    def __init__(
        self,
        index: int,
        url: str,
        hook_url: str,
        log_path: Path,
        event_loop: EventLoopChoice = DEFAULT_EVENT_LOOP,
        cpu: int | None = None,
    ) -> None:
        self.index = index
        self.event_loop = event_loop
        self.cpu = cpu
        self.url = url
        self.hook_url = hook_url
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.final: dict[str, Any] = {}

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.firstround",
                "--daemon",
                "--url",
                self.url,
                "--hook-url",
                self.hook_url,
                "--event-loop",
                self.event_loop,
                *(["--cpu", str(self.cpu)] if self.cpu is not None else []),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )

    async def ready(self, within: float) -> None:
        assert self.process is not None and self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), within)
        if not line:
            raise RuntimeError(f"daemon {self.index} did not start: {self.log_tail()}")
        json.loads(line)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, within: float = 60.0) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        assert process.stdout is not None
        try:
            out = await asyncio.wait_for(process.stdout.read(), within)
            await asyncio.wait_for(process.wait(), within)
        except TimeoutError:
            process.kill()
            await process.wait()
            return
        lines = out.decode().strip().splitlines()
        if lines:
            with contextlib.suppress(json.JSONDecodeError):
                self.final = json.loads(lines[-1])

    def times_led(self) -> int:
        """How often this daemon has logged that it became the leader, so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace").count(LEADER_LOG)

    def log_tail(self, lines: int = 5) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return " | ".join(text.strip().splitlines()[-lines:])


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _at(unix: float | None) -> datetime | None:
    return None if unix is None else datetime.fromtimestamp(unix, UTC)


def _since(moment: datetime | None, origin: datetime) -> float | None:
    return None if moment is None else round((moment - origin).total_seconds(), 3)


async def _sent_count(database: Database) -> int:
    async with database.session() as session:
        count = await session.execute(
            select(func.count()).select_from(Delivery).where(Delivery.state == "sent")
        )
        return int(count.scalar_one())


async def firstround_run(
    sinks: Sinks,
    url: str,
    customers: int,
    daemons: int,
    workdir: Path,
    event_loop: EventLoopChoice = DEFAULT_EVENT_LOOP,
    cpus: list[int] | None = None,
) -> dict[str, Any]:
    """Populate ``url``, start ``daemons`` daemons, declare, wait for every delivery; with
    ``cpus``, daemon i runs on CPU ``cpus[i % len(cpus)]`` alone."""
    database = Database(url)
    procs: list[DaemonProcess] = []
    try:
        started = time.perf_counter()
        await add_customers(
            database,
            customers,
            components=[COMPONENT],
            kinds=[CONTACT_KIND[CHANNEL]],
            hook_url=sinks.hook_url,
            batch=10_000,
        )
        populate_seconds = time.perf_counter() - started
        await sinks.reset()
        postmaster = await postmaster_pid(database)
        server_cpu_before = server_cpu_seconds(postmaster)
        procs = [
            DaemonProcess(
                i,
                url,
                f"{sinks.hook_url}/d{i}",
                workdir / f"daemon{i}.log",
                event_loop,
                cpus[i % len(cpus)] if cpus else None,
            )
            for i in range(daemons)
        ]
        started = time.perf_counter()
        for proc in procs:
            await proc.start()
        await asyncio.gather(*(proc.ready(60) for proc in procs))
        startup_seconds = time.perf_counter() - started
        clock = RealClock()
        declared = clock.now()
        await service.declare(
            database,
            clock,
            service.Declaration("Line 1: no trains", "major", MESSAGE, components=[COMPONENT]),
        )
        deadline = time.monotonic() + 120 + customers / 500
        progress: list[list[float]] = []
        step = max(0.05, min(2.0, customers / 200_000))
        received = 0
        died = False
        while time.monotonic() < deadline:
            hook = await sinks.hook_stats()
            received = sum(hook["paths"].values())
            progress.append([round((datetime.now(UTC) - declared).total_seconds(), 2), received])
            if hook["distinct_keys"] >= customers:  # a duplicate must not end the wait early
                break
            if not all(proc.alive for proc in procs):
                died = True
                break
            await asyncio.sleep(step)
        sent = await _sent_count(database)
        while sent < customers and time.monotonic() < deadline and not died:
            await asyncio.sleep(min(step, 0.5))
            sent = await _sent_count(database)
        hook = await sinks.hook_stats()
        async with database.session() as session:
            round_row = (
                await session.execute(
                    select(Round.started_at, Round.materialised_at, Round.audience_size).where(
                        Round.number == 1
                    )
                )
            ).one()
            first_sent, last_sent, attempts, deliveries, per_customer = (
                await session.execute(
                    select(
                        func.min(Delivery.sent_at),
                        func.max(Delivery.sent_at),
                        func.sum(Delivery.attempts),
                        func.count(),
                        func.count(func.distinct(Delivery.customer_id)),
                    )
                )
            ).one()
            states = dict(
                (
                    await session.execute(
                        select(Delivery.state, func.count()).group_by(Delivery.state)
                    )
                ).all()
            )
        # Before the daemons stop: a daemon that stops releases the lock, and another then
        # becomes the leader on its way out.
        led = [proc.times_led() for proc in procs]
        exited = [not proc.alive for proc in procs]  # before they are stopped below
        sink_cpu = cpu_seconds(sinks.pid)
        server_cpu_after = server_cpu_seconds(postmaster)
    finally:
        await asyncio.gather(*(proc.stop() for proc in procs))
        await database.dispose()
    round_started, materialised, audience = round_row
    requests = sum(hook["paths"].values())
    per_daemon = []
    for proc in procs:
        stats = proc.final.get("stats", {})
        per_daemon.append(
            {
                "daemon": proc.index,
                "leader": led[proc.index] > 0,
                "became_leader_times": led[proc.index],
                "handed_to_sink": int(hook["paths"].get(f"/hook/d{proc.index}", 0)),
                "sent_by_dispatcher": stats.get("sent"),
                "retried": stats.get("retried"),
                "failed": stats.get("failed"),
                "reclaimed": stats.get("reclaimed"),
                "peak_rss_mib": proc.final.get("peak_rss_mib"),
                "cpu_seconds": proc.final.get("cpu_seconds"),
                "event_loop": proc.final.get("event_loop"),
                "cpus": proc.final.get("cpus"),
                "exit_code": proc.process.returncode if proc.process else None,
                "exited_during_round": exited[proc.index],
            }
        )
    first_at, last_at = _at(hook["first_at"]), _at(hook["last_at"])
    all_at_sink = last_at if hook["distinct_keys"] >= customers else None
    return {
        "backend": "postgresql",
        "channel": CHANNEL,
        "customers": customers,
        "daemons": daemons,
        "populate_seconds": round(populate_seconds, 1),
        "daemon_startup_seconds": round(startup_seconds, 2),
        "audience_size": audience,
        "deliveries": deliveries,
        "deliveries_distinct_customers": per_customer,
        "states": states,
        "sent": int(states.get("sent", 0)),
        "attempts": int(attempts or 0),
        "sink_requests": requests,
        "sink_distinct_keys": int(hook["distinct_keys"]),
        "sink_duplicates": requests - int(hook["distinct_keys"]),
        "seconds_from_declaration": {
            "round_started": _since(round_started, declared),
            "materialised": _since(materialised, declared),
            "first_at_sink": _since(first_at, declared),
            "first_recorded_sent": _since(first_sent, declared),
            "all_at_sink": _since(all_at_sink, declared),
            "last_at_sink": _since(last_at, declared),
            "all_recorded_sent": _since(last_sent, declared) if sent >= customers else None,
        },
        "materialise_seconds": (
            _since(materialised, round_started) if round_started is not None else None
        ),
        "after_materialised_seconds": (
            _since(all_at_sink, materialised) if materialised is not None else None
        ),
        "daemon_died": died,
        "sink_cpu_seconds": sink_cpu,
        "postgresql_cpu_seconds": (
            None
            if server_cpu_before is None or server_cpu_after is None
            else round(server_cpu_after - server_cpu_before, 2)
        ),
        "per_daemon": per_daemon,
        "progress": progress,
    }


async def run(
    workdir: Path,
    *,
    backends: list[str],
    customers: int,
    daemons: int,
    event_loop: EventLoopChoice = DEFAULT_EVENT_LOOP,
    pin_daemons: bool = False,
) -> dict[str, Any]:
    label = f"{customers:,} customers, {daemons} daemons, PostgreSQL"
    cpus = sorted(os.sched_getaffinity(0)) if pin_daemons else None
    if cpus:
        label += ", one CPU each"
    if "postgresql" not in backends:
        return {
            "runs": [],
            "store": "postgresql",
            "skipped": "PostgreSQL is not reachable (or not selected): several daemons need it",
            "rows": [
                Row(
                    f"first round {label}: declaration → all handed to the sink",
                    None,
                    "s",
                    limit=TARGET_SECONDS,
                    note="skipped: no PostgreSQL",
                    skipped=True,
                ).as_dict()
            ],
            "notes": ["skipped: this scenario runs on PostgreSQL only"],
        }
    load_before = _loadavg()
    with Sinks() as sinks:
        async with store_url("postgresql", workdir) as url:
            result = await firstround_run(sinks, url, customers, daemons, workdir, event_loop, cpus)
    load_after = _loadavg()
    result["daemon_cpus"] = [cpus[i % len(cpus)] for i in range(daemons)] if cpus else "unpinned"
    result["load_average_before"] = load_before
    result["load_average_after"] = load_after
    return {
        "runs": [result],
        "store": "postgresql",
        "rows": [r.as_dict() for r in _rows(result, label)],
        "notes": _notes(result, load_before, load_after),
    }


def _rows(result: dict[str, Any], label: str) -> list[Row]:
    n = result["customers"]
    at = result["seconds_from_declaration"]
    exact = (
        result["sink_requests"] == n
        and result["sink_distinct_keys"] == n
        and result["sent"] == n
        and result["deliveries"] == n
    )
    exactly = (
        "exactly once"
        if exact
        else (
            f"NOT exactly once: {result['sink_requests']:,} requests, "
            f"{result['sink_distinct_keys']:,} distinct keys, {result['sent']:,} sent"
        )
    )
    all_at = at["all_at_sink"]
    note = exactly if all_at is not None else f"only {result['sink_requests']:,} arrived"
    if _died(result):
        note = f"{_exits(result)}; {note}"
    rows = [
        Row(
            f"first round {label}: declaration → all handed to the sink",
            all_at,
            "s",
            limit=TARGET_SECONDS,
            note=note,
        ),
        Row("  declaration → round claimed (started_at)", at["round_started"], "s"),
        Row(
            f"  round claimed → materialised ({n:,} deliveries)", result["materialise_seconds"], "s"
        ),
        Row("  declaration → first message at the sink", at["first_at_sink"], "s"),
        Row("  materialised → last message at the sink", result["after_materialised_seconds"], "s"),
        Row("  declaration → all recorded as sent in the store", at["all_recorded_sent"], "s"),
        Row(
            "  handed to the sink, whole round",
            n / all_at if all_at else None,
            "msg/s",
        ),
        Row(
            "  duplicates at the sink (requests − distinct keys)",
            result["sink_duplicates"],
            "msg",
            limit=1,
        ),
        Row("  deliveries missing at the sink", n - result["sink_distinct_keys"], "msg", limit=1),
    ]
    for daemon in result["per_daemon"]:
        share = 100.0 * daemon["handed_to_sink"] / n if n else 0.0
        role = "leader" if daemon["leader"] else "follower"
        note = (
            f"{daemon['handed_to_sink']:,} at the sink, "
            f"{_count(daemon['sent_by_dispatcher'])} recorded by its dispatcher"
        )
        if daemon.get("exited_during_round"):
            note = f"exited during the round (exit code {daemon['exit_code']}); {note}"
        rows.append(
            Row(f"  daemon {daemon['daemon']} ({role}): share handed over", share, "%", note=note)
        )
        rows.append(
            Row(f"  daemon {daemon['daemon']} ({role}): peak RSS", daemon["peak_rss_mib"], "MiB")
        )
        rows.append(
            Row(
                f"  daemon {daemon['daemon']} ({role}): CPU, start to stop",
                daemon["cpu_seconds"],
                "s",
            )
        )
    rows.append(Row("  sink process: CPU, start to end of round", result["sink_cpu_seconds"], "s"))
    rows.append(
        Row(
            "  PostgreSQL server: CPU, daemons' start to end of round",
            result["postgresql_cpu_seconds"],
            "s",
            note="" if result["postgresql_cpu_seconds"] is not None else "not readable here",
        )
    )
    rows.append(
        Row(
            f"  populate (Core executemany, not part of the round) {n:,} customers",
            result["populate_seconds"],
            "s",
        )
    )
    return rows


def _count(value: int | None) -> str:
    """A dispatcher's counter, or ``n/a`` when its daemon reported none (it died)."""
    return "n/a" if value is None else f"{value:,}"


def _died(result: dict[str, Any]) -> bool:
    return bool(result["daemon_died"]) or any(
        d.get("exited_during_round") for d in result["per_daemon"]
    )


def _exits(result: dict[str, Any]) -> str:
    """Which daemons exited during the round, with their exit codes."""
    gone = [
        f"daemon {d['daemon']} (exit code {d['exit_code']})"
        for d in result["per_daemon"]
        if d.get("exited_during_round")
    ]
    return "daemon exited during the round: " + (", ".join(gone) or "see the exit codes")


def _notes(result: dict[str, Any], before: list[float], after: list[float]) -> list[str]:
    notes = [
        f"load average (1, 5, 15 min) before: {before}, after: {after}; cpus: {os.cpu_count()}",
        "daemons, PostgreSQL and the sink process share this machine's cores",
        "daemon settings: production defaults except database.url, the push (webhook) "
        "channel pointed at the local sink (one path per daemon, to count the share), "
        "http.enabled false, messages.link_secret fixed, schedule.sweep_interval 250 ms "
        "(its default; bench_settings alone would set 1 s)",
        "customers were bulk-inserted with SQLAlchemy Core executemany, not the importer",
    ]
    if _died(result):
        notes.append(f"{_exits(result)}; its dispatcher counters are n/a")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--daemon", action="store_true", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--hook-url", required=True)
    parser.add_argument(
        "--event-loop", choices=get_args(EventLoopChoice), default=DEFAULT_EVENT_LOOP
    )
    parser.add_argument("--cpu", type=int, help="run on this CPU alone (every thread)")
    args = parser.parse_args()
    if args.cpu is not None:  # first, so that every thread the daemon starts inherits it
        os.sched_setaffinity(0, {args.cpu})
    # pyreqwest's threads: see channels.http_transport
    http_transport.run_main(lambda: daemon_main(args.url, args.hook_url, args.event_loop))


if __name__ == "__main__":
    main()
