"""Leadership on a real PostgreSQL: one connection per daemon, in autocommit, and the lock
passes on when the leader's session ends."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest
from sqlalchemy import make_url, text

from broadcaster.schedule import leader as leader_module
from broadcaster.schedule.leader import LOCK_KEY, Leadership, count_daemons
from broadcaster.store import Database
from broadcaster.store.db import KEEPALIVE
from tests.conftest import asyncpg_dsn

pytestmark = pytest.mark.postgres


async def _sessions(url: str) -> list[asyncpg.Record]:
    """The other sessions on the test's database: their pid and state."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
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
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        pid: int | None = await conn.fetchval(
            # In this test's database: a daemon on another database of the same server
            # holds a lock of the same key (advisory locks are per database).
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
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
        # Each daemon's session is named: the leader counts them (capacity warnings).
        assert await count_daemons(first) == 2
        await follower.release()
        assert await count_daemons(first) == 1
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
        admin = await asyncpg.connect(asyncpg_dsn(postgres_url))
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


class _Proxy:
    """A TCP relay to PostgreSQL that can go silent (a host or network that died without
    closing anything): while ``silent`` it forwards nothing and closes nothing."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.silent = False
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                while self.silent:
                    await asyncio.sleep(0.05)
                sink.write(data)
                await sink.drain()

        both = asyncio.gather(
            pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True
        )
        task = asyncio.ensure_future(both)
        self.tasks.add(task)  # type: ignore[arg-type]
        await task

    async def close(self) -> None:
        """Close every relayed connection and the listener, within the test's loop."""
        for writer in self.writers:
            writer.close()
        for writer in self.writers:
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_leader_whose_connection_goes_silent_stops_leading(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader cut off without its connection closing gives up leading when its check
    does not answer, and its session asks the server for short keepalives, so that the
    server drops it (and the lock) instead of keeping it for hours."""
    monkeypatch.setattr(leader_module, "ANSWER_WITHIN", 0.5)
    parsed = make_url(postgres_url)
    proxy = _Proxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    relayed = parsed.set(host="127.0.0.1", port=await proxy.start())
    database = Database(relayed.render_as_string(hide_password=False))
    leader = Leadership(database, "a")
    try:
        assert await leader.ensure()
        assert leader._conn is not None
        settings = await leader._conn.execute(
            text("SELECT name, setting FROM pg_settings WHERE name = ANY(:names)"),
            {"names": list(KEEPALIVE)},
        )
        assert {name: value for name, value in settings.all()} == KEEPALIVE
        proxy.silent = True
        assert not await asyncio.wait_for(leader.ensure(), 10)
        assert not leader.leading
    finally:
        proxy.silent = False
        await leader.release()
        await database.dispose()
        await proxy.close()
