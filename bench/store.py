"""Fresh stores for the benchmarks, and customers written straight into them.

A store is a new SQLite file or a new PostgreSQL database (created on the server named by
``$BENCH_POSTGRES_URL``, default the local ``postgres`` superuser, and dropped afterwards),
migrated to the head revision.

Customers are written with SQLAlchemy Core ``executemany`` in batches: hundreds of
thousands of rows per second, where the validating importer (``customers import``) does
about 6,000 customers per second. That is what lets the scale scenario build a
1,000,000-customer store in a minute or two; it skips validation, so every figure measured
on such a store says so.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from sqlalchemy import insert

from broadcaster.customers.importer import CUSTOMER_TABLES
from broadcaster.store import ContactPoint, Customer, Database, Subscription
from broadcaster.store.migrate import upgrade_async
from broadcaster.store.models import table_of

POSTGRES_ENV = "BENCH_POSTGRES_URL"
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("sqlite", "postgresql")
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

_LANGUAGES = ("en", "nl", "en-GB", "nl", "en")  # the languages with templates
_TIMEZONES = ("Europe/Amsterdam", "UTC", "Europe/Berlin", "Europe/Paris", "Europe/London")


def postgres_admin_url() -> str:
    return os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES


async def postgres_available() -> bool:
    url = postgres_admin_url().replace("postgresql+asyncpg://", "postgresql://")
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@asynccontextmanager
async def store_url(backend: str, workdir: Path) -> AsyncIterator[str]:
    """The URL of a fresh, migrated store; removed on exit."""
    if backend == "sqlite":
        path = workdir / f"bench-{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite+aiosqlite:///{path}"
        await upgrade_async(url)
        try:
            yield url
        finally:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{path}{suffix}")
        return
    if backend != "postgresql":
        raise ValueError(f"unknown backend {backend!r}")
    admin_url = postgres_admin_url()
    admin = admin_url.replace("postgresql+asyncpg://", "postgresql://")
    name = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin, timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    head, _, _ = admin_url.rpartition("/")
    url = f"{head}/{name}"
    try:
        await upgrade_async(url)
        yield url
    finally:
        conn = await asyncpg.connect(admin, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@asynccontextmanager
async def fresh_store(backend: str, workdir: Path) -> AsyncIterator[Database]:
    async with store_url(backend, workdir) as url:
        database = Database(url)
        try:
            yield database
        finally:
            await database.dispose()


def customer_id(prefix: str, index: int) -> str:
    return f"{prefix}{index:08d}"


async def add_customers(
    database: Database,
    count: int,
    *,
    components: Sequence[str],
    prefix: str = "c",
    start: int = 0,
    hook_url: str = "http://127.0.0.1/hook",
    kinds: Sequence[str] = ("email", "sms", "webhook"),
    batch: int = 5000,
) -> int:
    """``count`` customers subscribed to every one of ``components``, each with one contact
    point of each of ``kinds``; Core executemany per batch, then the planner statistics
    refreshed as the importer does. Returns the rows written."""
    rows_written = 0
    for first in range(start, start + count, batch):
        last = min(first + batch, start + count)
        customers = []
        points = []
        subscriptions = []
        for i in range(first, last):
            cid = customer_id(prefix, i)
            customers.append(
                {
                    "id": cid,
                    "name": f"Customer {i}",
                    "language": _LANGUAGES[i % len(_LANGUAGES)],
                    "timezone": _TIMEZONES[i % len(_TIMEZONES)],
                    "created_at": NOW,
                    "updated_at": NOW,
                }
            )
            for kind in kinds:
                address = {
                    "email": f"{cid}@example.com",
                    "sms": f"+3161{i:07d}",
                    "webhook": hook_url,
                }[kind]
                points.append(
                    {
                        "customer_id": cid,
                        "kind": kind,
                        "address": address,
                        "opted_out": False,
                        "disabled": False,
                        "updated_at": NOW,
                    }
                )
            for component in components:
                subscriptions.append({"customer_id": cid, "kind": "component", "value": component})
        async with database.engine.begin() as conn:
            await conn.execute(insert(table_of(Customer)), customers)
            await conn.execute(insert(table_of(ContactPoint)), points)
            await conn.execute(insert(table_of(Subscription)), subscriptions)
        rows_written += len(customers) + len(points) + len(subscriptions)
    for table in CUSTOMER_TABLES:  # as `customers import` does after writing
        await database.refresh_statistics(table)
    return rows_written
