"""The store through a real PgBouncer in transaction pooling mode (``database.pooler``), and
leadership past it (``database.direct_url``)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from bench.__main__ import main
from bench.pgbouncer import SERVER_SESSIONS, Bouncer
from bench.store import POSTGRES_ENV as BENCH_POSTGRES_ENV
from broadcaster.config.settings import DatabaseSettings
from broadcaster.schedule.leader import LOCK_KEY, Leadership
from broadcaster.store import Database
from broadcaster.store.db import PING_AFTER_IDLE
from broadcaster.store.migrate import upgrade_async
from tests.conftest import POSTGRES_ENV, asyncpg_dsn, postgres_admin_url, require_pgbouncer

pytestmark = pytest.mark.postgres

CLIENTS = 12
"""Concurrent clients of the store: four times the pooler's server sessions."""


async def _workload(database: Database) -> Counter[str]:
    """``CLIENTS`` tasks, each alternating transactions of two statements and statements
    run alone (``execute_alone``), 40 each; the errors they met, by kind. Half-way every
    client pauses past :data:`PING_AFTER_IDLE` (its connection is checked when taken
    again), and the statements run alone bind an array, whose type asyncpg looks up on
    first use: the dispatcher's records bind arrays (:mod:`broadcaster.store.bulk`)."""
    errors: Counter[str] = Counter()

    async def client(number: int) -> None:
        for step in range(40):
            if step == 20:
                await asyncio.sleep(PING_AFTER_IDLE + 0.2)
            try:
                if step % 2:
                    async with database.session() as session, session.begin():
                        await session.execute(text("SELECT :a + 1"), {"a": step})
                        await session.execute(
                            text("SELECT pg_sleep(0.001), :b"), {"b": str(number)}
                        )
                else:
                    await database.execute_alone(
                        text("SELECT cardinality(CAST(:a AS integer[]))"), {"a": [step, number]}
                    )
            except Exception as exc:  # counted: the test asserts on them
                errors[type(exc).__name__ + ": " + str(exc).splitlines()[0][:90]] += 1

    async with asyncio.timeout(120):  # a pool too small for session mode waits for ever
        await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    return errors


async def test_the_fixture_pools_by_transaction(pgbouncer: Bouncer) -> None:
    """What the other tests rely on: clients share the pooler's few server sessions, and a
    client's transactions do not all reach the same one (as in session mode they would)."""
    clients = [
        await asyncpg.connect(asyncpg_dsn(pgbouncer.url), statement_cache_size=0)
        for _ in range(CLIENTS)
    ]
    try:
        seen: list[set[int]] = [set() for _ in clients]
        for _ in range(5):
            pids = await asyncio.gather(
                *(c.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.01)") for c in clients)
            )
            for mine, pid in zip(seen, pids, strict=True):
                mine.add(pid)
        assert 1 <= len(set().union(*seen)) <= SERVER_SESSIONS
        assert any(len(mine) > 1 for mine in seen), "every client kept one server session"
    finally:
        for conn in clients:
            await conn.close()


@pytest.mark.parametrize("pgbouncer", ["transaction", "session"], indirect=True)
async def test_the_store_works_through_a_pooler_of_either_mode(pgbouncer: Bouncer) -> None:
    """In session mode the statements stay prepared, as straight to the server."""
    database = Database(pgbouncer.url, pooler=pgbouncer.mode, direct_url=pgbouncer.direct)
    try:
        assert await _workload(database) == Counter()
    finally:
        await database.dispose()


async def test_without_the_setting_the_pooler_breaks_prepared_statements(
    pgbouncer: Bouncer,
) -> None:
    """The control: the same work with ``pooler: none`` through the same pooler fails, as
    it would for an operator who put PgBouncer in front without saying so."""
    database = Database(pgbouncer.url)
    try:
        errors = await _workload(database)
    finally:
        await database.dispose()
    assert errors, "transaction pooling did not disturb the cached prepared statements"
    assert any("prepared statement" in kind for kind in errors), errors


@pytest.mark.parametrize("pgbouncer", ["transaction", "session"], indirect=True)
async def test_the_leader_holds_its_lock_past_the_pooler(pgbouncer: Bouncer) -> None:
    """The advisory lock is taken on ``direct_url``: stopping the pooler leaves the leader
    leading, and the lock's session is the leader's own, so it ends with it."""
    await upgrade_async(pgbouncer.direct)
    first = Database(pgbouncer.url, pooler=pgbouncer.mode, direct_url=pgbouncer.direct)
    second = Database(pgbouncer.url, pooler=pgbouncer.mode, direct_url=pgbouncer.direct)
    leader, other = Leadership(first, "one"), Leadership(second, "two")
    admin = await asyncpg.connect(asyncpg_dsn(pgbouncer.direct))
    holder = (  # in this test's database (advisory locks are per database)
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    try:
        assert await leader.ensure()
        assert not await other.ensure()
        before = await admin.fetchval(holder, LOCK_KEY)
        pgbouncer.stop()  # its server sessions end with it
        assert await admin.fetchval(holder, LOCK_KEY) == before
        assert await leader.ensure(), "the leader lost its lock with the pooler"
        assert not await other.ensure()
        await leader.release()
        assert await other.ensure()
    finally:
        await admin.close()
        await leader.release()
        await other.release()
        await first.dispose()
        await second.dispose()


def test_the_pooler_needs_a_direct_url() -> None:
    settings = DatabaseSettings(url="postgresql+asyncpg://app@pooler:6432/b", pooler="session")
    assert settings.direct == settings.url
    settings = DatabaseSettings(
        url="postgresql+asyncpg://app@pooler:6432/b",
        pooler="transaction",
        direct_url="postgresql+asyncpg://app@db:5432/b",
    )
    assert settings.direct == "postgresql+asyncpg://app@db:5432/b"
    database = Database.configured(settings)
    assert (database.url, database.direct_url, database.pooler) == (
        "postgresql+asyncpg://app@pooler:6432/b",
        "postgresql+asyncpg://app@db:5432/b",
        "transaction",
    )
    assert database.direct_engine is not database.engine


def test_the_fanout_benchmark_runs_through_pgbouncer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m bench fanout --pgbouncer``: the daemon's PostgreSQL round goes through a
    PgBouncer the benchmark starts, whose CPU is read beside the server's."""
    url = postgres_admin_url()
    if url is None:
        pytest.skip(f"the benchmark through PgBouncer needs PostgreSQL: set {POSTGRES_ENV}")
    require_pgbouncer()
    monkeypatch.setenv(BENCH_POSTGRES_ENV, url)
    argv = ["fanout", "--quick", "--size", "60", "--channel", "push", "--backend", "postgresql"]
    assert main([*argv, "--pipeline-only", "--pgbouncer", "--out", str(tmp_path)]) == 0

    result = json.loads((tmp_path / "fanout.json").read_text(encoding="utf-8"))
    (run,) = result["runs"]
    assert run["pgbouncer"] is True
    assert run["sent"] == 60 and run["received_by_sink"] == 60
    assert run["pgbouncer_cpu_per_delivery_us"] is not None
    (row,) = result["rows"]
    assert row["what"] == "fan-out push 60 postgresql via pgbouncer"
    assert "PgBouncer" in row["note"]
