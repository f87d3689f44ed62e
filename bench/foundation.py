"""Foundation benchmark: import N customers, then materialise one round for all of them.

``python -m bench.foundation [--customers N]`` (default 100,000). Each phase runs in its
own process so that its peak RSS is its own: the import streams the CSV, and the round is
materialised in keyset batches, so neither should grow with N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

from bench.customers_bench import bench_import, peak_rss_mib
from broadcaster.clock import FakeClock
from broadcaster.config.settings import ScheduleSettings
from broadcaster.incidents import service
from broadcaster.outbox.materialise import ChannelRoute, materialise_round
from broadcaster.schedule.rounds import claim_due_round
from broadcaster.store import Database, Delivery


async def _materialise(workdir: Path) -> dict[str, float]:
    database = Database(f"sqlite+aiosqlite:///{workdir / 'bench.db'}")
    clock = FakeClock()
    settings = ScheduleSettings()
    try:
        regions = [f"region-{n}" for n in range(5)]
        await service.declare(
            database,
            clock,
            service.Declaration("Everyone", "critical", "bench", regions=regions),
        )
        claimed = await claim_due_round(database, clock, settings, "bench")
        if claimed is None:
            raise RuntimeError("no round was due")
        started = time.perf_counter()
        inserted = await materialise_round(
            database, clock, claimed, [ChannelRoute("email", "email")], settings
        )
        seconds = time.perf_counter() - started
        async with database.session() as session:
            rows = (await session.execute(select(func.count()).select_from(Delivery))).scalar_one()
    finally:
        await database.dispose()
    return {
        "deliveries": float(rows),
        "inserted_reported": float(inserted or 0),
        "materialise_seconds": seconds,
        "deliveries_per_second": rows / seconds,
        "audience_batch": float(settings.audience_batch),
        "peak_rss_mib": peak_rss_mib(),
    }


def _phase(args: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.foundation", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--phase", choices=["import", "materialise"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "import":
        print(json.dumps(asyncio.run(bench_import(args.customers, args.workdir))))
        return
    if args.phase == "materialise":
        print(json.dumps(asyncio.run(_materialise(args.workdir))))
        return
    with tempfile.TemporaryDirectory(prefix="broadcaster-bench-") as tmp:
        common = ["--workdir", tmp, "--customers", str(args.customers)]
        imported = _phase(["--phase", "import", *common])
        rounded = _phase(["--phase", "materialise", *common])
    n = args.customers
    print(f"customers: {n:,} (SQLite, one process per phase)")
    print(
        f"import:      {imported['import_seconds']:8.2f} s  "
        f"{imported['import_rows_per_second']:9,.0f} customers/s  "
        f"peak RSS {imported['peak_rss_mib']:6.1f} MiB  "
        f"(re-import {imported['reimport_seconds']:.2f} s)"
    )
    print(
        f"materialise: {rounded['materialise_seconds']:8.2f} s  "
        f"{rounded['deliveries_per_second']:9,.0f} deliveries/s  "
        f"peak RSS {rounded['peak_rss_mib']:6.1f} MiB  "
        f"({rounded['deliveries']:,.0f} deliveries, batches of {rounded['audience_batch']:,.0f})"
    )


if __name__ == "__main__":
    main()
