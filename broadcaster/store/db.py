"""Engine and sessions: one :class:`Database` per process, SQLite tuned for a daemon + CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert

T = TypeVar("T")

Also = Callable[[AsyncSession, object], None]
"""Called with the session and the result inside an operation's transaction, just before
it commits: what must be written with it or not at all (the audit entry)."""


class Database:
    """Owns the async engine; ``session()`` opens a unit of work, ``engine`` runs Core."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
            if database and database != ":memory:":
                # One connection per process. Every transaction holds the write lock
                # (BEGIN IMMEDIATE), so several connections bought no concurrency; their
                # transactions waited in SQLite's busy handler, which sleeps and retries
                # instead of queueing, and under load a claim waited seconds while others
                # went first. The pool queues them in order; the busy timeout is left to
                # other processes (the CLI, dispatch processes).
                kwargs.update(pool_size=1, max_overflow=0, pool_timeout=30)
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin_immediate)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self.sessions()

    async def transact(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` with a (synchronous-style) session in one transaction, committed
        when it returns and rolled back when it raises, and return what it returned: for
        transactions of several statements written as one plain function."""
        async with self.session() as session, session.begin():
            return await session.run_sync(work)

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

    async def dispose(self) -> None:
        await self.engine.dispose()


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


def _sqlite_begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")
