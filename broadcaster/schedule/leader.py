"""Leadership: one daemon schedules rounds; the others only dispatch.

On PostgreSQL the leader is whoever holds a session-level advisory lock on a connection it
keeps open. When the leader dies its connection closes, PostgreSQL releases the lock, and
the next daemon to try takes over (the others try at every safety sweep). Claims are
fenced and use SKIP LOCKED anyway, so a brief overlap could not send a round twice; the
lock keeps the scheduling work in one place. With SQLite there is one daemon: it leads.
"""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from broadcaster.store import Database

log = logging.getLogger("broadcaster.leader")

LOCK_KEY = 0x62726F61  # "broa": the advisory lock every broadcaster daemon contends for


class Leadership:
    def __init__(self, database: Database, owner: str) -> None:
        self.database = database
        self.owner = owner
        self._conn: AsyncConnection | None = None
        self.leading = database.dialect != "postgresql"

    async def ensure(self) -> bool:
        """True while this daemon leads; tries to become leader when it does not."""
        if self.database.dialect != "postgresql":
            return True
        if self._conn is not None:
            try:
                await self._conn.execute(text("SELECT 1"))
                return True
            except (DBAPIError, SQLAlchemyError, OSError):
                log.warning("lost the leader connection", extra={"owner": self.owner})
                await self._drop()
        try:
            conn = await self.database.engine.connect()
        except (DBAPIError, SQLAlchemyError, OSError):
            return False
        try:
            got = (
                await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY})
            ).scalar_one()
            await conn.commit()
        except (DBAPIError, SQLAlchemyError, OSError):
            await conn.close()
            return False
        if not got:
            await conn.close()
            self.leading = False
            return False
        self._conn = conn
        self.leading = True
        log.info("became the leader: scheduling rounds", extra={"owner": self.owner})
        return True

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self.leading = False
        if conn is not None:
            with contextlib.suppress(DBAPIError, SQLAlchemyError, OSError):
                await conn.close()

    async def release(self) -> None:
        """Give leadership up (clean shutdown): another daemon takes over at once."""
        if self._conn is not None:
            try:
                await self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
                await self._conn.commit()
            except (DBAPIError, SQLAlchemyError, OSError):
                pass
        await self._drop()
