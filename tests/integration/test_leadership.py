"""Leadership on a real PostgreSQL: one connection per daemon, in autocommit, and the lock
passes on when the leader's session ends."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from broadcaster.schedule.leader import LOCK_KEY, Leadership
from broadcaster.store import Database

pytestmark = pytest.mark.postgres


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _sessions(url: str) -> list[asyncpg.Record]:
    """The other sessions on the test's database: their pid and state."""
    conn = await asyncpg.connect(_plain(url))
    try:
        return list(
            await conn.fetch(
                "SELECT pid, state FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await conn.close()


async def _lock_holder(url: str) -> int | None:
    conn = await asyncpg.connect(_plain(url))
    try:
        pid: int | None = await conn.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND granted",
            LOCK_KEY,
        )
        return pid
    finally:
        await conn.close()


async def _until_freed(url: str, holder: int, timeout: float = 10.0) -> None:
    """Return once session ``holder`` no longer holds the lock; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await _lock_holder(url) == holder:
        assert loop.time() < deadline, f"session {holder} still holds the lock"
        await asyncio.sleep(0.02)


async def test_every_daemon_keeps_one_idle_connection_and_no_open_transaction(
    postgres_url: str,
) -> None:
    first, second = Database(postgres_url), Database(postgres_url)
    leader, follower = Leadership(first, "a"), Leadership(second, "b")
    try:
        assert await leader.ensure()
        for _ in range(5):  # several sweeps
            assert not await follower.ensure()
            assert await leader.ensure()
        sessions = await _sessions(postgres_url)
        # The follower asked five times on one connection, not five; neither side left a
        # transaction open ("idle in transaction" would hold back vacuum and be cut off
        # by idle_in_transaction_session_timeout).
        assert len(sessions) == 2, sessions
        assert {row["state"] for row in sessions} == {"idle"}, sessions
        holder = await _lock_holder(postgres_url)
        assert holder in {row["pid"] for row in sessions}
    finally:
        await leader.release()
        await follower.release()
        await first.dispose()
        await second.dispose()


async def test_the_lock_passes_on_when_the_leaders_session_ends(postgres_url: str) -> None:
    first, second = Database(postgres_url), Database(postgres_url)
    leader, follower = Leadership(first, "a"), Leadership(second, "b")
    try:
        assert await leader.ensure()
        assert not await follower.ensure()
        holder = await _lock_holder(postgres_url)
        assert holder is not None
        admin = await asyncpg.connect(_plain(postgres_url))
        try:  # the leader's server session is killed, as when its host or network dies
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", holder)
        finally:
            await admin.close()
        # pg_terminate_backend only signals the session: it ends, and its lock is freed, a
        # moment later (longer on a loaded machine). Wait for that, then ask once.
        await _until_freed(postgres_url, holder)
        assert await follower.ensure(), "the follower did not take the free lock"
        assert follower.leading
        # The old leader finds out at its next sweep, and does not claim to lead.
        assert not await leader.ensure()
        assert not leader.leading
        # A clean release hands the lock over at once.
        await follower.release()
        assert await leader.ensure()
    finally:
        await leader.release()
        await follower.release()
        await first.dispose()
        await second.dispose()
