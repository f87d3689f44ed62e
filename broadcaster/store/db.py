"""Engine and sessions: one :class:`Database` per process, SQLite tuned for a daemon + CLI."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import aiosqlite
from sqlalchemy import Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool
from sqlalchemy.sql import Executable
from sqlalchemy.sql.dml import Insert

T = TypeVar("T")

Pooler = Literal["none", "session", "transaction"]
"""What a PostgreSQL URL reaches: the server, or a pooler in that pooling mode."""


SQLITE_WAIT = 30.0
SQLITE_PING_WAIT = 5.0
"""Seconds a SQLite transaction waits for its turn (in this process, as in SQLite's busy
timeout for the others) before it fails."""

Also = Callable[[AsyncSession, object], None]
"""Called with the session and the result inside an operation's transaction, just before
it commits: what must be written with it or not at all (the audit entry)."""


class StoreConfig(Protocol):
    """The ``database`` section of the configuration, as :meth:`Database.configured` reads it."""

    url: str
    echo: bool
    pooler: Pooler
    direct_url: str | None


KEEPALIVE = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",
}
"""Server-side settings of a daemon's sessions on PostgreSQL: the server probes an idle client
after 5 s, every 2 s, and drops it after 3 unanswered probes (or 10 s of unacknowledged
data; PostgreSQL 12 or later)."""

SERVER_NOTICES = 11
"""About how many seconds the server takes to drop a silent daemon's session: 5 + 3 × 2."""


class Database:
    """Owns the async engine; ``session()`` opens a unit of work, ``engine`` runs Core."""

    @classmethod
    def configured(cls, config: StoreConfig) -> Database:
        """The store of the configuration's ``database`` section."""
        return cls(config.url, echo=config.echo, pooler=config.pooler, direct_url=config.direct_url)

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        pooler: Pooler = "none",
        direct_url: str | None = None,
    ) -> None:
        self.url = url
        self.direct_url = direct_url or url
        """Straight to the server, past any pooler: for the leader's advisory lock."""
        self.pooler = pooler
        self._direct_engine: AsyncEngine | None = None
        self._reader: async_sessionmaker[AsyncSession] | None = None
        self._reader_engine: AsyncEngine | None = None
        self._queue_sessions = False
        self._sqlite_file: str | None = None
        self._sqlite_reader_uri = ""
        self._gates: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        if pooler == "transaction":
            # A pooler in transaction mode gives each transaction (and each statement run
            # alone) whichever server session is free: a statement prepared on one is
            # unknown, or another client's, on the next. So nothing is kept: with
            # asyncpg's statement cache off, SQLAlchemy's statements are prepared unnamed
            # (the server replaces the unnamed statement at the next Parse: nothing piles
            # up in the pooler's server sessions), and asyncpg sends each one's Parse
            # again with every execution, in the same message group as its Bind, Execute
            # and Sync, so that it reaches one server session even in autocommit (asyncpg
            # 0.29 and later, for PgBouncer). SQLAlchemy's own cache of prepared
            # statements is off too: nothing outlives its statement.
            kwargs["connect_args"] = {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
        if self.dialect == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": SQLITE_WAIT}
            if database and database != ":memory:":
                # One connection per process, taken in turn (see _gate). Every transaction
                # holds the write lock (BEGIN IMMEDIATE), so more connections bought no
                # concurrency: their transactions waited in SQLite's busy handler, which
                # sleeps and retries instead of queueing, and under load a claim waited
                # seconds while later ones went first. The busy timeout is left to other
                # processes (the CLI, dispatch processes).
                kwargs.update(pool_size=1, max_overflow=0, pool_timeout=SQLITE_WAIT)
                self._queue_sessions = True
                self._sqlite_file = database
                self._sqlite_reader_uri = f"{Path(database).resolve().as_uri()}?mode=ro"
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.dialect != "sqlite":
            _ping_when_idle(self.engine)
        if self.dialect == "postgresql" and pooler == "none":
            # A daemon whose host dies, or drops off the network, in a transaction leaves
            # its session "idle in transaction" on the server, holding its locks (a round
            # being written, the rows it inserted) until TCP gives up: over two hours with
            # the usual keepalive settings, and the round is skipped by every other
            # daemon's SKIP LOCKED claim meanwhile. With KEEPALIVE the server drops such a
            # session within about 11 s. Set by a query when a connection is made, not as
            # startup parameters, which a pooler the configuration does not declare would
            # refuse. (Through a declared pooler the server's sessions are the pooler's:
            # docs/scaling.md gives its own settings.)
            event.listen(self.engine.sync_engine, "connect", _ask_for_keepalives)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin_immediate)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A unit of work (``async with database.session() as session``). On a SQLite file
        the sessions of this process take turns in the order they asked: see ``_gate``."""
        async with self._turn(), self.sessions() as session:
            yield session

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncSession]:
        """A unit of work that only reads: a long count (``/metrics``' background counts,
        who was not reached) over millions of deliveries.

        On a SQLite file it reads by a read-only connection of its own, outside this
        process's turn (``_gate``) and without the write lock every other transaction takes
        (BEGIN IMMEDIATE): in WAL mode a reader waits for no writer nor a writer for it, so
        the count no longer holds the daemon's sends and claims up for its length (1.5 s
        at 1,000,000 deliveries). Its statements see one snapshot, from its first read on.
        A write through it fails ("attempt to write a readonly database"). Elsewhere (a
        server's MVCC readers wait for nobody either) it is :meth:`session`."""
        if self._sqlite_file is None:
            async with self.session() as session:
                yield session
            return
        if self._reader is None:
            uri = self._sqlite_reader_uri

            async def connect() -> Any:
                return await aiosqlite.connect(uri, uri=True, timeout=SQLITE_WAIT)

            engine = create_async_engine(
                "sqlite+aiosqlite://",
                async_creator=connect,
                poolclass=AsyncAdaptedQueuePool,
                pool_size=2,
                max_overflow=0,
                pool_timeout=SQLITE_WAIT,
            )
            event.listen(engine.sync_engine, "connect", _sqlite_reader)
            event.listen(engine.sync_engine, "begin", _sqlite_begin_deferred)
            self._reader_engine = engine
            self._reader = async_sessionmaker(engine, expire_on_commit=False)
        async with self._reader() as session:
            yield session

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in one transaction, for Core statements (``async with
        database.begin() as connection``): committed when the block ends, rolled back when
        it raises. On a SQLite file it takes its turn with this process's sessions, as one
        of them (see ``_gate``): taken from the engine's pool directly, it overtook the
        sessions queued for their turn and left them waiting on the pool instead."""
        async with self._turn(), self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """This process's turn at a SQLite file (nothing to wait for on other stores)."""
        if not self._queue_sessions:
            yield
            return
        gate = self._gate()
        try:
            async with asyncio.timeout(SQLITE_WAIT):
                await gate.acquire()
        except TimeoutError:
            raise TimeoutError(
                f"the SQLite store was busy in this process for {SQLITE_WAIT:.0f} s "
                "(another transaction held it)"
            ) from None
        try:
            yield
        finally:
            gate.release()

    async def ping(self) -> None:
        """Return when the store answers a query; raise when it cannot.

        On a SQLite file, by a read-only connection of its own: the process's one connection
        may be held by a long transaction (a round of many customers being written), and a
        store that is busy is not down. (In WAL mode a reader does not wait for a writer.)
        """
        if self._sqlite_file is not None:
            await asyncio.to_thread(_sqlite_ping, self._sqlite_file)
            return
        async with self.session() as session:
            await session.execute(text("SELECT 1"))

    def _gate(self) -> asyncio.Lock:
        """The queue of this process's SQLite sessions on the running loop.

        A lock, not the pool's own queue: asyncio's lock hands itself to the longest
        waiter, while a connection returned to the pool goes to whoever asks next, so a
        session started in the meantime overtook one that had been waiting, which then
        queued again at the back."""
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            self._gates = {loop: asyncio.Lock()}  # a loop of the past is done with
            gate = self._gates[loop]
        return gate

    async def transact(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` with a (synchronous-style) session in one transaction, committed
        when it returns and rolled back when it raises, and return what it returned: for
        transactions of several statements written as one plain function."""
        async with self.session() as session, session.begin():
            return await session.run_sync(work)

    async def execute_alone(self, statement: Executable, parameters: dict[str, Any]) -> None:
        """Run one statement as a transaction of its own. On PostgreSQL a single statement
        is atomic by itself, so it runs in autocommit: one round trip instead of three
        (BEGIN, the statement, COMMIT). Elsewhere, in a transaction as :meth:`transact`."""
        if self.dialect != "postgresql":
            async with self.session() as session, session.begin():
                await session.execute(statement, parameters)
            return
        async with self.engine.connect() as connection:
            alone = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await alone.execute(statement, parameters)

    async def clock_offset(self, now: Callable[[], datetime]) -> float | None:
        """Seconds the database server's clock is ahead of ``now`` (behind when negative),
        taken at the middle of one round trip; None on SQLite, whose clock is ours."""
        if self.dialect != "postgresql":
            return None
        async with self.engine.connect() as connection:
            before = now()
            server: datetime = (
                await connection.exec_driver_sql("SELECT clock_timestamp()")
            ).scalar_one()
            after = now()
        return (server - (before + (after - before) / 2)).total_seconds()

    async def refresh_statistics(self, table: str) -> None:
        """Refresh the planner's statistics of ``table`` (PostgreSQL ``ANALYZE``; nothing on
        SQLite, whose plans here do not depend on them).

        A large round makes ``deliveries`` grow by hundreds of thousands of rows within a
        minute, faster than autovacuum analyses it. With statistics that say the table is
        nearly empty, PostgreSQL planned each claim (200 due deliveries in index order) as
        read, join and sort every due delivery, and a 10,000 delivery round went out at half
        its rate. Materialisation calls this as a round grows."""
        if self.dialect == "postgresql":
            async with self.engine.connect() as connection:
                await connection.exec_driver_sql(f'ANALYZE "{table}"')
                await connection.commit()

    def insert_ignoring_duplicates(self, table: Table, *conflict_columns: str) -> Insert:
        """``INSERT … ON CONFLICT DO NOTHING`` for this dialect (the idempotent write)."""
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(
                index_elements=list(conflict_columns) or None
            )
        return sqlite.insert(table).on_conflict_do_nothing(
            index_elements=list(conflict_columns) or None
        )

    def upsert(self, table: Table, conflict_columns: list[str], update_columns: list[str]) -> Any:
        """``INSERT … ON CONFLICT (…) DO UPDATE SET`` the given columns from the new row."""
        statement: Any
        if self.dialect == "postgresql":
            statement = postgresql.insert(table)
        else:
            statement = sqlite.insert(table)
        return statement.on_conflict_do_update(
            index_elements=conflict_columns,
            set_={name: statement.excluded[name] for name in update_columns},
        )

    @property
    def skip_locked(self) -> bool:
        """Whether ``FOR UPDATE SKIP LOCKED`` means something here (PostgreSQL only)."""
        return self.dialect == "postgresql"

    @property
    def direct_engine(self) -> AsyncEngine:
        """An engine on :attr:`direct_url` for sessions that must be the server's own (the
        leader's advisory lock): the main engine when there is no pooler; else one made on
        first use, without a pool (such a session is opened once and kept)."""
        if self.direct_url == self.url:
            return self.engine
        if self._direct_engine is None:
            self._direct_engine = create_async_engine(self.direct_url, poolclass=NullPool)
        return self._direct_engine

    async def dispose(self) -> None:
        # The reader first: SQLite checkpoints the WAL into the database file when its last
        # connection closes, which a read-only one cannot do. The writer closing last
        # leaves one whole file behind a stopped daemon, as before there was a reader.
        if self._reader_engine is not None:
            await self._reader_engine.dispose()
            self._reader_engine = self._reader = None
        await self.engine.dispose()
        if self._direct_engine is not None:
            await self._direct_engine.dispose()


PING_AFTER_IDLE = 1.0
"""Seconds a pooled server connection may lie idle before it is checked (pinged) on its way
out of the pool; see :func:`_ping_when_idle`."""


_KEEPALIVE_SQL = (
    "SELECT set_config(k.name, k.setting, false) FROM (VALUES "  # noqa: S608 - constants
    + ", ".join(f"('{name}', '{value}')" for name, value in KEEPALIVE.items())
    + ") AS k(name, setting) JOIN pg_settings USING (name)"
)
"""One statement, by the simple query protocol: only the settings the server has
(``tcp_user_timeout`` came in PostgreSQL 12)."""


def _ask_for_keepalives(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.run_async(lambda connection: connection.execute(_KEEPALIVE_SQL))


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Check a pooled connection before use if it lay idle for ``PING_AFTER_IDLE`` or more.

    A connection can die in the pool: the server restarted, an administrator ended its
    session, a firewall dropped it. SQLAlchemy's ``pool_pre_ping`` checks every connection
    at every checkout, and on asyncpg a check is three round trips (BEGIN, an empty query,
    ROLLBACK): the dispatcher takes a connection for each claim and each batch of
    outcomes, several times a second, transactions of three or four round trips, which
    the checks made six or seven (pipeline-only push rounds went 11-16 % faster without
    them). A connection in steady use was used a moment ago, and is known to be alive; one
    that lay idle longer is checked as before. Should the check fail, the pool replaces
    the connection (a :class:`~sqlalchemy.exc.DisconnectionError` from a checkout
    listener) and the caller never sees it. A connection that dies in use fails that
    transaction, as it would have with ``pool_pre_ping``; so now does one that died within
    ``PING_AFTER_IDLE`` of its last use, as when the server restarts under load (the
    dispatcher and the round loop try again after a pause)."""
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    def checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["returned_at"] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get("returned_at")
        if returned is None or time.monotonic() - returned < PING_AFTER_IDLE:
            return  # new, or in use a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the connection is dead: the pool takes a new one
            raise DisconnectionError(f"a pooled connection failed its check: {exc}") from exc

    event.listen(pool, "checkin", checkin)
    event.listen(pool, "checkout", checkout)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own implicit BEGIN is deferred: a reader that later writes can then
    # fail at once with SQLITE_BUSY when the CLI and the daemon write together. We emit
    # BEGIN IMMEDIATE ourselves (see _sqlite_begin_immediate) so writers queue on the
    # busy timeout instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: each commit syncs the WAL. With NORMAL a commit is durable only at the next
    # checkpoint, so an OS crash, a power cut or a disk error that remounts the file system
    # read-only loses the last committed incidents, rounds and receipts (seen in
    # tests/reliability/test_sqlite_disk.py). One fsync per transaction; the daemon writes
    # in batches.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_reader(dbapi_connection: Any, _record: Any) -> None:
    """A read-only connection (:meth:`Database.reading`): transactions begun by
    :func:`_sqlite_begin_deferred`, so that its statements share one snapshot; the file's
    WAL mode is the file's own, set by the writers."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin_deferred(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


def _sqlite_ping(path: str) -> None:
    """Read the schema of the SQLite file at ``path`` by a connection of its own, read-only."""
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    # A reader waits for no writer in WAL mode; what it could wait for (a recovery) must not
    # keep a health check's thread long after the check gave up.
    connection = sqlite3.connect(uri, uri=True, timeout=SQLITE_PING_WAIT)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        connection.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")
