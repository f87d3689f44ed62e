"""``python -m bench [SCENARIO ...] [--quick] [--out DIR]``: the benchmark suite (issue #8).

Scenarios: ``fanout``, ``latency``, ``scale``, ``promises``, ``firstround`` (PostgreSQL
only: the first round of one incident handed to the local sinks by ``--daemons`` daemon
processes), ``nightround`` (a round written with the shipped rules by day and in quiet
hours); none named runs them all. Each
prints a table and writes ``<out>/<scenario>.json`` (default ``bench/results``). ``--quick``
runs small sizes (the whole suite in a few minutes); without it, the issue's sizes.
PostgreSQL comes from ``$BENCH_POSTGRES_URL`` (default the local ``postgres`` superuser);
when it cannot be reached, only SQLite is measured and the JSON says so.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, get_args

from bench import fanout, firstround, latency, nightround, promises, scale
from bench.pgbouncer import NOT_FOUND as PGBOUNCER_NOT_FOUND
from bench.pgbouncer import binary as pgbouncer_binary
from bench.report import table, write
from bench.sinks import SINK_CPU_ENV
from bench.store import BACKENDS, postgres_available
from broadcaster import eventloop
from broadcaster.eventloop import DEFAULT_EVENT_LOOP, EventLoopChoice, loop_name
from channels import http_transport


def pin(spec: str) -> dict[str, int]:
    """Pin this process to the sender CPU of ``SENDER,SINK`` and have the sinks pin
    themselves to the other; threads started later (the HTTP client's, SQLite's) inherit
    it. Raises SystemExit with what is wrong in ``spec``."""
    try:
        sender, sink = (int(part) for part in spec.split(","))
    except ValueError:
        raise SystemExit(
            f"--pin {spec!r}: expected two CPU numbers, SENDER,SINK (e.g. 0,1)"
        ) from None
    allowed = os.sched_getaffinity(0)
    for cpu in (sender, sink):
        if cpu not in allowed:
            raise SystemExit(f"--pin {spec!r}: CPU {cpu} is not one of {sorted(allowed)}")
    if sender == sink:
        raise SystemExit(f"--pin {spec!r}: the sender and the sinks need a CPU each")
    os.sched_setaffinity(0, {sender})
    os.environ[SINK_CPU_ENV] = str(sink)
    return {"sender_cpu": sender, "sink_cpu": sink}


SCENARIOS = ("fanout", "latency", "scale", "promises", "firstround", "nightround")
RESULTS = Path(__file__).resolve().parent / "results"


def sizes(scenario: str, quick: bool) -> dict[str, Any]:
    """The parameters of a scenario: the issue's sizes, or small ones with ``--quick``."""
    if scenario == "fanout":
        return {
            "sizes": [1_000] if quick else [10_000, 100_000],
            "apprise_count": 500 if quick else 10_000,
        }
    if scenario == "latency":
        return {"incidents": 30 if quick else 200, "audience": 5}
    if scenario == "scale":
        # The default schedule.audience_batch first; 1,000 to show what the batch size buys.
        batches = [scale.DEFAULT_BATCH, 1_000]
        return {"customers": 20_000 if quick else 1_000_000, "batches": batches}
    if scenario == "promises":
        return {"customers": 300 if quick else 10_000, "hours": 24, "restarts": 3}
    if scenario == "firstround":
        return {"customers": 20_000 if quick else 1_000_000, "daemons": 2}
    if scenario == "nightround":
        return {"customers": 2_000 if quick else 20_000}
    raise ValueError(scenario)


async def run_scenario(
    scenario: str,
    workdir: Path,
    params: dict[str, Any],
    backends: list[str],
    event_loop: EventLoopChoice = DEFAULT_EVENT_LOOP,
) -> dict[str, Any]:
    runners: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
        "fanout": fanout.run,
        "latency": latency.run,
        "scale": scale.run,
        "promises": promises.run,
        "firstround": firstround.run,
        "nightround": nightround.run,
    }
    kwargs = dict(params)
    if scenario == "firstround":  # its daemons are processes of their own
        kwargs["event_loop"] = event_loop
    result = await runners[scenario](workdir, backends=backends, **kwargs)
    # The loop the daemon under test (fanout, latency) and the baselines ran on.
    result["event_loop"] = loop_name()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="small sizes: minutes, not hours")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    parser.add_argument(
        "--backend", action="append", choices=BACKENDS, help="only this store (repeatable)"
    )
    parser.add_argument(
        "--size",
        type=int,
        action="append",
        help="fanout: customers per round (repeatable); scale, promises, latency, "
        "firstround, nightround: the size",
    )
    parser.add_argument(
        "--daemons", type=int, help="firstround: daemon processes (default 2: one per core here)"
    )
    parser.add_argument(
        "--pin-daemons",
        action="store_true",
        help="firstround: each daemon process on a CPU of its own (daemon i on the i-th "
        "allowed CPU, round robin); the sink and PostgreSQL stay where the kernel puts them",
    )
    parser.add_argument(
        "--channel", action="append", choices=fanout.CHANNELS, help="fanout: only this channel"
    )
    parser.add_argument(
        "--processes",
        type=int,
        action="append",
        help="fanout: delivery.processes of the daemon (repeatable; default 1)",
    )
    parser.add_argument(
        "--pipeline-only",
        action="store_true",
        help="fanout: the project's rounds alone, without the baselines (rates and CPU per "
        "delivery, for alternating runs of two builds or two event loops)",
    )
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="fanout: the daemon's PostgreSQL store through a PgBouncer in transaction mode "
        "that the benchmark starts (database.pooler: transaction; Debian's pgbouncer package); "
        "SQLite rounds are unchanged",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="fanout: each figure the median of N rounds, the pipeline's and the baselines' "
        "in turn (default 1; the issue's reference figures are medians of 3)",
    )
    parser.add_argument(
        "--pin",
        metavar="SENDER,SINK",
        help="run the benchmark's process (the daemon under test and the baselines beside it) "
        "on CPU SENDER and the sinks on CPU SINK, as the issue's reference figures were "
        "measured (for example 0,1); other processes, PostgreSQL included, stay where the "
        "kernel puts them. Default: unpinned",
    )
    parser.add_argument(
        "--event-loop",
        choices=get_args(EventLoopChoice),
        default=DEFAULT_EVENT_LOOP,
        help="the event loop of the daemons under test and of the baselines beside them "
        f"(the daemon's event_loop setting; default {DEFAULT_EVENT_LOOP}, the setting's)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, not {args.repeat}")
    if args.pin and args.pin_daemons:
        parser.error("--pin and --pin-daemons: choose one (the first pins this process)")
    if args.pgbouncer and pgbouncer_binary() is None:
        parser.error(f"--pgbouncer: {PGBOUNCER_NOT_FOUND}")
    placement = pin(args.pin) if args.pin else None
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r} (choose from {', '.join(SCENARIOS)})")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    backends = list(args.backend or BACKENDS)
    skipped: list[str] = []
    if "postgresql" in backends and not asyncio.run(postgres_available()):
        backends.remove("postgresql")
        skipped.append("postgresql (not reachable)")
    for scenario in args.scenarios or SCENARIOS:
        params = sizes(scenario, args.quick)
        if args.size:
            key = {
                "fanout": "sizes",
                "latency": "incidents",
                "scale": "customers",
                "promises": "customers",
                "firstround": "customers",
                "nightround": "customers",
            }[scenario]
            params[key] = list(args.size) if scenario == "fanout" else args.size[0]
        if scenario == "firstround" and args.daemons:
            params["daemons"] = args.daemons
        if scenario == "firstround" and args.pin_daemons:
            params["pin_daemons"] = True
        if scenario == "fanout" and args.channel:
            params["channels"] = list(args.channel)
        if scenario == "fanout" and args.processes:
            params["processes"] = list(args.processes)
        if scenario == "fanout" and args.repeat != 1:
            params["repeat"] = args.repeat
        if scenario == "fanout" and args.pipeline_only:
            params["pipeline_only"] = True
        if scenario == "fanout" and args.pgbouncer:
            params["pgbouncer"] = True
        print(f"\n== {scenario} ({'quick' if args.quick else 'full'}: {params}) ==", flush=True)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="broadcaster-bench-") as tmp:
            result = eventloop.run(
                run_scenario(scenario, Path(tmp), params, backends, args.event_loop),
                args.event_loop,
            )
        result["params"] = params
        result["backends"] = backends
        result["skipped_backends"] = skipped
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        result["placement"] = placement or "unpinned: the kernel places every process"
        path = args.out / f"{scenario}.json"
        write(path, scenario, args.quick, result)
        print(table(result["rows"]))
        if skipped:
            print(f"skipped: {', '.join(skipped)}")
        for note in result.get("notes", []):
            print(f"note: {note}")
        print(f"({result['wall_seconds']:.0f} s; results in {path})", flush=True)
    return 0


if __name__ == "__main__":
    status = main()
    http_transport.exit_now(status)  # pyreqwest's threads: see channels.http_transport
    raise SystemExit(status)
