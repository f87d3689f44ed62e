"""Benchmark of ``customers import``: rows per second and peak memory on a fresh SQLite store.

Run ``python bench/customers_bench.py [N]`` (default 100,000 customers). It reports the first
import (everything inserted), a re-import of the same file (the idempotent path: upserts and
diffs that find nothing to change), the store rows written per second (a generated customer is 7
rows: itself, 3 contact points on average and 3 subscriptions), the cost of validating one row
without the store (mostly email-validator and phonenumbers), and the process's peak RSS,
which should not grow with N because the importer streams.
"""

from __future__ import annotations

import asyncio
import csv
import resource
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

from sqlalchemy import func, select

from broadcaster.clock import FakeClock
from broadcaster.customers import CSV_COLUMNS, import_customers
from broadcaster.customers.rows import from_csv_record
from broadcaster.store import ContactPoint, Customer, Database, Subscription
from broadcaster.store.migrate import upgrade_async

_LANGUAGES = ("en", "nl", "en-GB", "de", "fr")
_TIMEZONES = ("UTC", "Europe/Amsterdam", "Europe/London", "America/New_York", "Asia/Tokyo")


def write_customers_csv(path: Path, n: int) -> None:
    """n realistic customers: email and phone each, FCM tokens for half, 2 components, 1 region,
    a preferred channel order for a third."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for i in range(n):
            writer.writerow(
                [
                    f"cust-{i:07d}",
                    f"Customer {i}",
                    _LANGUAGES[i % len(_LANGUAGES)],
                    _TIMEZONES[i % len(_TIMEZONES)],
                    f"customer.{i}@example.com",
                    f"+316{10_000_000 + i:08d}",
                    f"fcm:token-{i}-a;fcm:token-{i}-b" if i % 2 else "",
                    f"line-{i % 20};line-{(i + 7) % 20}",
                    f"region-{i % 5}",
                    "sms;email" if i % 3 == 0 else "",
                ]
            )


def validate_seconds_per_row(source: Path, limit: int = 20_000) -> float:
    """Validation alone (no store) over the first ``limit`` rows: the floor of the import."""
    with source.open(newline="", encoding="utf-8") as file:
        records = list(islice(csv.DictReader(file), limit))
    started = time.perf_counter()
    for record in records:
        from_csv_record(record)
    return (time.perf_counter() - started) / max(len(records), 1)


async def store_rows(database: Database) -> int:
    total = 0
    async with database.engine.connect() as connection:
        for model in (Customer, ContactPoint, Subscription):
            total += (
                await connection.execute(select(func.count()).select_from(model))
            ).scalar_one()
    return total


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def own_peak_rss_mib() -> float:
    """This process's own peak RSS: ``VmHWM``, which starts afresh at exec. Not
    ``ru_maxrss``: Linux keeps that across fork and exec, so a child started by a bigger
    parent reports the parent's size (every first-round daemon reported the bench process's
    142 MiB)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mib()  # not Linux: the best there is


async def bench_import(n: int, workdir: Path) -> dict[str, float]:
    """Generate n customers as CSV under ``workdir``, import them twice; return the figures."""
    source = workdir / "customers.csv"
    started = time.perf_counter()
    write_customers_csv(source, n)
    generate_seconds = time.perf_counter() - started
    url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    await upgrade_async(url)
    database = Database(url)
    try:
        started = time.perf_counter()
        first = await import_customers(database, source, clock=FakeClock())
        import_seconds = time.perf_counter() - started
        started = time.perf_counter()
        again = await import_customers(database, source, clock=FakeClock())
        reimport_seconds = time.perf_counter() - started
        written = await store_rows(database)
        peak = peak_rss_mib()  # before the validation probe below, which holds its rows
    finally:
        await database.dispose()
    assert first.imported == again.imported == n, (first, again)
    assert first.rejected == again.rejected == 0, first.errors[:3]
    return {
        "rows": float(n),
        "file_mib": source.stat().st_size / (1024 * 1024),
        "generate_seconds": generate_seconds,
        "import_seconds": import_seconds,
        "import_rows_per_second": n / import_seconds,
        "store_rows_written": float(written),
        "store_rows_per_second": written / import_seconds,
        "reimport_seconds": reimport_seconds,
        "reimport_rows_per_second": n / reimport_seconds,
        "validate_us_per_row": validate_seconds_per_row(source) * 1e6,
        "peak_rss_mib": peak,
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory(prefix="customers-bench-") as tmp:
        figures = asyncio.run(bench_import(n, Path(tmp)))
    for name, value in figures.items():
        print(f"{name:>26}: {value:,.2f}")


if __name__ == "__main__":
    main()
