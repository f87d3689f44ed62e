"""Leadership: one daemon schedules rounds; the others only dispatch.

On PostgreSQL the leader is whoever holds a session-level advisory lock on a connection it
keeps open. When the leader dies its connection closes, PostgreSQL releases the lock, and
the next daemon to try takes over (the others try at every safety sweep). Claims are
fenced and use SKIP LOCKED anyway, so a brief overlap could not send a round twice; the
lock keeps the scheduling work in one place. With SQLite there is one daemon: it leads.

A leader whose host dies or drops off the network closes nothing: its session, and the
lock, would stay on the server until TCP gives up on it (over two hours with the usual
keepalive settings), and no round would be scheduled meanwhile. So the leadership session
asks the server for short keepalives and a user timeout
(:data:`broadcaster.store.db.KEEPALIVE`: a silent peer is dropped within about
:data:`~broadcaster.store.db.SERVER_NOTICES` seconds; the daemon's other sessions have them
too), and the leader gives up leading when
its check does not answer within :data:`ANSWER_WITHIN` seconds.

The daemon asks :meth:`Leadership.ensure` between passes of its round loop, and a pass can
last as long as a large round takes to write; meanwhile :meth:`Leadership.watch` checks
every :data:`CHECK_EVERY` seconds that this session still holds the lock, and clears
:attr:`Leadership.leading` the moment it does not (the session ended: an administrator, a
failover proxy, a network that dropped it). ``/healthz``, ``broadcaster_leader`` and the
leader-only work (the round loop between batches and rounds, the follow-up sweep, the
purge) read that flag, so a deposed leader stops saying it leads, and stops acting as
one, within seconds of another daemon taking the lock. A round it was writing is fenced
by the round's own lease in the store (every batch commits only while the round's fencing
token is still this daemon's), so its last batch cannot be written twice either.

Through a connection pooler the server session is the pooler's, not the daemon's. In
transaction mode another daemon whose try reached the server session holding the lock would
be granted it too (two leaders), and the lock would outlive its daemon until the pooler
closed that session; in session mode the keepalives above would watch the pooler, and a
leader whose host died would keep the lock until the pooler noticed, on its own keepalives.
So the leadership connection goes to ``database.direct_url``, straight to the server
(:attr:`Database.direct_engine`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import TextClause, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from broadcaster.store import Database
from broadcaster.store.db import KEEPALIVE

log = logging.getLogger("broadcaster.leader")

LOCK_KEY = 0x62726F61  # "broa": the advisory lock every broadcaster daemon contends for

ANSWER_WITHIN = 5.0
"""Seconds the leadership connection has to answer a check before it is given up."""

CHECK_EVERY = 1.0
"""Seconds between two checks, while leading, that the lock is still this session's."""

DAEMON_APPLICATION = "broadcaster daemon "
"""The ``application_name`` of every daemon's leadership session, followed by its owner."""

_HELD = text(
    # A bigint key's lock shows as (classid, objid) = its high and low 32 bits, objsubid 1.
    "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND classid = :high AND objid = :low AND objsubid = 1)"
)
_DAEMONS = text(
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND application_name LIKE :name"
)


async def count_daemons(database: Database) -> int:
    """How many daemons share this store: on PostgreSQL, the leadership sessions open on it
    (every daemon keeps one, leader or not); on SQLite, one. At least one: the caller's."""
    if database.dialect != "postgresql":
        return 1
    try:
        async with database.direct_engine.connect() as conn:
            found = await conn.execute(_DAEMONS, {"name": DAEMON_APPLICATION + "%"})
            return max(1, int(found.scalar_one()))
    except (DBAPIError, SQLAlchemyError, OSError) as exc:  # a round's check must not fail it
        log.warning("cannot count the daemons on the store; reckoning with one: %r", exc)
        return 1


_TRY_LOCK = text("SELECT pg_try_advisory_lock(:key)")


class Leadership:
    def __init__(self, database: Database, owner: str) -> None:
        self.database = database
        self.owner = owner
        self._conn: AsyncConnection | None = None
        self._asking = asyncio.Lock()
        """One statement at a time on the connection: the round loop's :meth:`ensure` and
        :meth:`watch` share it."""
        self.leading = database.dialect != "postgresql"

    async def ensure(self) -> bool:
        """True while this daemon leads; tries to become leader when it does not.

        Every daemon keeps one connection for this, in autocommit: the leader holds the
        lock on it and checks it is alive; the others ask for the lock on it at each
        sweep. No transaction stays open on it (an idle-in-transaction session is what
        ``idle_in_transaction_session_timeout`` ends, and what monitoring flags), and a
        follower does not connect and disconnect at every sweep."""
        if self.database.dialect != "postgresql":
            return True
        if self.leading and await self.check():
            return True
        got = await self._ask(_TRY_LOCK, {"key": LOCK_KEY})
        if not got:
            self.leading = False
            return False
        self.leading = True
        log.info("became the leader: scheduling rounds", extra={"owner": self.owner})
        return True

    async def check(self) -> bool:
        """Whether this daemon still leads: on PostgreSQL, whether its session still holds
        the lock (asked within :data:`ANSWER_WITHIN` seconds). When it does not,
        :attr:`leading` is cleared at once (and a session that did not answer is dropped);
        :meth:`ensure` asks for the lock again at the next pass."""
        if self.database.dialect != "postgresql" or not self.leading:
            return self.leading
        held = await self._ask(_HELD, {"high": LOCK_KEY >> 32, "low": LOCK_KEY & 0xFFFFFFFF})
        if held:
            return True
        self.leading = False
        log.warning(
            "no longer the leader: the leadership session %s",
            "ended" if held is None else "no longer holds the lock",
            extra={"owner": self.owner},
        )
        return False

    async def watch(self, stop: asyncio.Event, every: float = CHECK_EVERY) -> None:
        """Until ``stop``: while leading, :meth:`check` every ``every`` seconds, so that a
        leader whose session (and lock) went clears :attr:`leading` within seconds, even
        in the middle of a round, rather than at its round loop's next pass."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if not stop.is_set() and self.leading:
                try:
                    await self.check()
                except Exception:  # the watch must outlive any surprise; ensure() goes on
                    log.exception("could not check the leadership lock; checking again")

    async def _ask(self, query: TextClause, params: dict[str, int] | None = None) -> bool | None:
        """Whether ``query``'s one value is true, asked on the leadership connection
        (opened when there is none); None when the server could not be reached: the
        connection is then dropped, and with it the lock, if it held it."""
        async with self._asking:
            return await self._ask_now(query, params)

    async def _ask_now(self, query: TextClause, params: dict[str, int] | None) -> bool | None:
        try:
            async with asyncio.timeout(ANSWER_WITHIN):
                if self._conn is None:
                    self._conn = await self._connect()
                result = await self._conn.execute(query, params or {})
                return bool(result.scalar_one())
        except (DBAPIError, SQLAlchemyError, OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                log.warning(
                    "the leadership connection did not answer within %.0f s; dropping it",
                    ANSWER_WITHIN,
                    extra={"owner": self.owner},
                )
            await self._drop()
            return None

    async def _connect(self) -> AsyncConnection:
        """A connection straight to the server, set to autocommit, with the keepalives of
        :data:`KEEPALIVE` (it never goes back to a pool: :meth:`_drop` closes it for good)."""
        conn = await self.database.direct_engine.connect()
        try:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            # Named, so that the leader can count the daemons sharing the work (each keeps
            # one such connection, leader or not): see :func:`count_daemons`.
            await conn.execute(
                text("SELECT set_config('application_name', :name, false)"),
                {"name": (DAEMON_APPLICATION + self.owner)[:63]},
            )
            for name, value in KEEPALIVE.items():
                # From pg_settings: a server without one of them (tcp_user_timeout came in
                # PostgreSQL 12) sets the others.
                await conn.execute(
                    text(
                        "SELECT set_config(name, :value, false) FROM pg_settings WHERE name = :name"
                    ),
                    {"name": name, "value": value},
                )
        except BaseException:
            await conn.invalidate()
            await conn.close()
            raise
        return conn

    async def _drop(self) -> None:
        """Close the leadership connection for good, not back into the pool: a session
        that may hold the lock must end with it."""
        conn, self._conn = self._conn, None
        self.leading = False
        if conn is not None:
            with contextlib.suppress(DBAPIError, SQLAlchemyError, OSError):
                await conn.invalidate()
            with contextlib.suppress(DBAPIError, SQLAlchemyError, OSError):
                await conn.close()

    async def release(self) -> None:
        """Give leadership up (clean shutdown): another daemon takes over at once."""
        async with self._asking:
            if self._conn is not None:
                with contextlib.suppress(DBAPIError, SQLAlchemyError, OSError):
                    await self._conn.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY}
                    )
            await self._drop()
