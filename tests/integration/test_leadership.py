"""Leadership on a real PostgreSQL: one connection per daemon, in autocommit, and the lock
passes on when the leader's session ends; a leader whose session ended stops saying it
leads, and stops acting as leader, within seconds, even in the middle of a round."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import make_url, text

from broadcaster import engine as engine_module
from broadcaster.clock import RealClock
from broadcaster.config.settings import Settings
from broadcaster.daemon import Daemon
from broadcaster.incidents import service
from broadcaster.outbox.materialise import materialise_round
from broadcaster.schedule import leader as leader_module
from broadcaster.schedule.leader import LOCK_KEY, Leadership, count_daemons
from broadcaster.schedule.rounds import ClaimedRound
from broadcaster.store import Database
from broadcaster.store.db import KEEPALIVE
from broadcaster.store.migrate import upgrade_async
from channels.memory import MemoryChannel
from tests.conftest import asyncpg_dsn
from tests.reliability.common import add_customers, delivery_states

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


async def _terminate_holder(url: str) -> int:
    """End the session holding the lock (an administrator, a failover proxy, a network
    that dropped it); returns its pid."""
    holder = await _lock_holder(url)
    assert holder is not None
    admin = await asyncpg.connect(asyncpg_dsn(url))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", holder)
    finally:
        await admin.close()
    return holder


async def _until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> float:
    """Seconds until ``check()`` holds; fails after ``timeout``."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while not check():
        assert loop.time() - began < timeout, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)
    return loop.time() - began


async def test_the_watch_clears_leading_when_the_session_ends_between_passes(
    postgres_url: str,
) -> None:
    """Nobody calls ensure() (the round loop is writing a long round): the watch alone
    notices that the lock went with the session, within seconds."""
    database = Database(postgres_url)
    leader = Leadership(database, "a")
    stop = asyncio.Event()
    watch = asyncio.create_task(leader.watch(stop, every=0.1))
    try:
        assert await leader.ensure()
        await _terminate_holder(postgres_url)
        assert await _until(lambda: not leader.leading, "the leader noticed") < 5
        assert not watch.done()
        # It becomes leader again at the next pass, on a new session, the lock being free.
        assert await leader.ensure()
    finally:
        stop.set()
        await asyncio.wait_for(watch, 10)
        await leader.release()
        await database.dispose()


async def test_a_session_that_no_longer_holds_the_lock_does_not_lead(postgres_url: str) -> None:
    """The check asks the server whether this session holds the lock, not only whether it
    answers."""
    database = Database(postgres_url)
    leader = Leadership(database, "a")
    try:
        assert await leader.ensure()
        assert await leader.check()
        assert leader._conn is not None
        await leader._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
        assert not await leader.check()
        assert not leader.leading
        assert leader._conn is not None  # the session is fine: kept, for the next try
        assert await leader.ensure()
        assert await _lock_holder(postgres_url) is not None
    finally:
        await leader.release()
        await database.dispose()


DEPOSED_CUSTOMERS = 30


async def test_a_deposed_leader_stops_leading_mid_round_and_hands_the_round_over(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two daemons; the leader's session is ended while it writes a round. Within seconds,
    and before that round is done, it says it does not lead (/healthz, /metrics) while the
    other does; it claims no further round, gives back the one it was writing after the
    batch in hand, and the new leader writes both incidents' rounds: every customer hears
    each once."""
    await upgrade_async(postgres_url)
    database = Database(postgres_url)
    clock = RealClock()
    await add_customers(database, clock.now(), DEPOSED_CUSTOMERS, ["email"])
    settings = Settings.model_validate(
        {
            "database": {"url": postgres_url},
            "schedule": {
                "sweep_interval": "100ms",
                "audience_batch": 5,
                "cadence": {"major": "1h"},
            },
            "delivery": {"channels": ["mail"], "workers": 1, "poll_interval": "50ms"},
            "channels": {"mail": {"type": "console"}},
            "http": {"enabled": True, "host": "127.0.0.1", "port": 0, "public_metrics": True},
        }
    )
    first_mail, second_mail = MemoryChannel(name="mail"), MemoryChannel(name="mail")
    first = Daemon(settings, clock=clock, channels={"mail": first_mail})
    second = Daemon(settings, clock=clock, channels={"mail": second_mail})
    writing, go_on = asyncio.Event(), asyncio.Event()
    written: list[tuple[str, int, int | None]] = []
    materialise = materialise_round

    async def held(
        database: Database, clock: RealClock, claimed: ClaimedRound, *args: Any, **kwargs: Any
    ) -> int | None:
        if claimed.owner == first.leadership.owner and not go_on.is_set():
            writing.set()  # a large round, still being written
            await go_on.wait()
        result = await materialise(database, clock, claimed, *args, **kwargs)
        written.append((claimed.owner, claimed.incident_id, result))
        return result

    monkeypatch.setattr(engine_module, "materialise_round", held)
    stop = asyncio.Event()
    runs = [asyncio.create_task(first.run(stop))]
    try:
        await asyncio.wait_for(first.ready.wait(), 20)
        await _until(lambda: first.leadership.leading, "the first daemon leads")
        runs.append(asyncio.create_task(second.run(stop)))
        await asyncio.wait_for(second.ready.wait(), 20)
        incidents = []
        for title in ("one", "two"):
            declared = await service.declare(
                database,
                clock,
                service.Declaration(
                    title=title, severity="major", message="m", components=["payments"]
                ),
            )
            incidents.append(declared.id)
            await asyncio.wait_for(writing.wait(), 20)
        await _terminate_holder(postgres_url)
        await _until(lambda: second.leadership.leading, "the second daemon leads")
        await _until(lambda: not first.leadership.leading, "the first stops leading", 5)
        # ... while still in the middle of its round.
        assert not [w for w in written if w[0] == first.leadership.owner]
        async with httpx.AsyncClient() as http:
            for daemon, leads in ((first, False), (second, True)):
                base = f"http://127.0.0.1:{daemon.http_port}"
                assert (await http.get(f"{base}/healthz")).json()["leader"] is leads
                gauge = [
                    line
                    for line in (await http.get(f"{base}/metrics")).text.splitlines()
                    if line.startswith("broadcaster_leader ")
                ]
                assert gauge == [f"broadcaster_leader {float(leads)}"]
        go_on.set()
        await _until(
            lambda: len(first_mail.sent) + len(second_mail.sent) >= 2 * DEPOSED_CUSTOMERS,
            "every message",
            30,
        )
        await asyncio.sleep(0.5)  # nothing more goes out
    finally:
        go_on.set()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*runs), 30)
    try:
        # The deposed leader wrote nothing of its round and claimed no other.
        assert [(o, i, r) for o, i, r in written if o == first.leadership.owner] == [
            (first.leadership.owner, incidents[0], None)
        ]
        assert sorted((i, r) for o, i, r in written if o == second.leadership.owner) == [
            (incidents[0], DEPOSED_CUSTOMERS),
            (incidents[1], DEPOSED_CUSTOMERS),
        ]
        sent = [*first_mail.sent, *second_mail.sent]
        sends = Counter((m.message.thread, m.target.customer_id) for m in sent)
        assert len(sends) == 2 * DEPOSED_CUSTOMERS and set(sends.values()) == {1}
        assert len({m.message.idempotency_key for m in sent}) == len(sent)
        assert await delivery_states(database) == {"sent": 2 * DEPOSED_CUSTOMERS}
    finally:
        await database.dispose()
