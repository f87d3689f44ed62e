"""SQLite in one process: its transactions take turns in the order they asked.

Every SQLite transaction is ``BEGIN IMMEDIATE`` (the write lock). With a pool of several
connections, transactions of one process that wanted the lock at once waited in SQLite's
busy handler, which sleeps and retries (up to 100 ms a try) rather than queueing: under
load a dispatch claim waited 2–4 s while others went ahead of it. The engine now keeps one
connection per process for a SQLite file, and its sessions take turns for it through a
lock, so they queue in order; the busy timeout is left to other processes (the CLI,
dispatch processes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from broadcaster.store import Database


class Turns:
    """A store whose ``turns`` table records the order in which transactions wrote."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def hold(self) -> None:
        """Write ``first``, then keep the transaction open until ``release``."""
        async with self.database.session() as session, session.begin():
            await session.execute(text("INSERT INTO turns VALUES ('first')"))
            self.holding.set()
            await self.release.wait()

    async def write(self, name: str) -> None:
        async with self.database.session() as session, session.begin():
            await session.execute(text("INSERT INTO turns VALUES (:who)"), {"who": name})

    async def write_core(self, name: str) -> None:
        """A Core transaction (``Database.begin``), as the customer import writes."""
        async with self.database.begin() as connection:
            await connection.execute(text("INSERT INTO turns VALUES (:who)"), {"who": name})

    async def order(self) -> list[str]:
        async with self.database.session() as session:
            rows = (await session.execute(text("SELECT who FROM turns ORDER BY rowid"))).all()
        return [row[0] for row in rows]


@pytest.fixture
async def turns(tmp_path: Path) -> AsyncIterator[Turns]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    try:
        async with database.engine.begin() as connection:
            await connection.execute(text("CREATE TABLE turns (who TEXT)"))
        yield Turns(database)
    finally:
        await database.dispose()


async def test_waiting_transactions_are_served_in_the_order_they_came(turns: Turns) -> None:
    holder = asyncio.create_task(turns.hold())
    await turns.holding.wait()
    names = [f"w{n}" for n in range(6)]
    waiting = []
    for name in names:
        waiting.append(asyncio.create_task(turns.write(name)))
        await asyncio.sleep(0.03)  # each asks for the lock after the one before
    turns.release.set()
    await asyncio.gather(holder, *waiting)

    assert await turns.order() == ["first", *names]


async def test_a_waiting_transaction_is_not_overtaken_by_later_ones(turns: Turns) -> None:
    """Transactions keep arriving, one per turn of the loop, as 200 sends of a batch
    checking their throttle would: the one that was waiting still goes next. (The pool's
    own queue gave a returned connection to whoever asked first after, so the waiter went
    161st of 202 here.)"""
    holder = asyncio.create_task(turns.hold())
    await turns.holding.wait()
    waiter = asyncio.create_task(turns.write("waiter"))
    await asyncio.sleep(0.03)
    turns.release.set()
    later = []
    for n in range(100):
        later.append(asyncio.create_task(turns.write(f"later{n}")))
        await asyncio.sleep(0)
    await asyncio.gather(holder, waiter, *later)

    order = await turns.order()
    assert order[:2] == ["first", "waiter"] and len(order) == 102


async def test_a_core_transaction_takes_its_turn_with_the_sessions(turns: Turns) -> None:
    """The customer import writes its batches on a connection of its own (Core), not a
    session: it queues with the sessions, neither going before one that asked first (it
    went straight to the pool and took the connection the holder returned) nor overtaken
    by later ones."""
    holder = asyncio.create_task(turns.hold())
    await turns.holding.wait()
    waiter = asyncio.create_task(turns.write("waiter"))
    await asyncio.sleep(0.03)
    core = asyncio.create_task(turns.write_core("core"))
    await asyncio.sleep(0.03)
    turns.release.set()
    later = []
    for n in range(50):
        later.append(asyncio.create_task(turns.write(f"later{n}")))
        await asyncio.sleep(0)
    await asyncio.gather(holder, waiter, core, *later)

    order = await turns.order()
    assert order[:3] == ["first", "waiter", "core"] and len(order) == 53


async def test_a_reading_session_waits_for_no_writer_and_holds_none_up(turns: Turns) -> None:
    """A long count (``Database.reading``) reads by a read-only connection of its own, on one
    snapshot: it neither waits for the transaction holding this process's turn nor keeps
    the writers waiting while it is open; writing through it fails."""
    database = turns.database
    holder = asyncio.create_task(turns.hold())
    await turns.holding.wait()
    async with database.reading() as reader:
        # The turn is held (the writer's transaction is open): the reader goes on, and sees
        # what was committed before it, not the open transaction's row.
        found = await asyncio.wait_for(reader.execute(text("SELECT count(*) FROM turns")), 5)
        assert found.scalar_one() == 0
        turns.release.set()
        await asyncio.wait_for(holder, 5)
        # Its snapshot is held open: a writer commits meanwhile, without waiting for it.
        await asyncio.wait_for(turns.write("second"), 5)
        again = await reader.execute(text("SELECT count(*) FROM turns"))
        assert again.scalar_one() == 0  # one snapshot for the whole unit of work
        with pytest.raises(Exception, match="readonly database"):
            await reader.execute(text("INSERT INTO turns VALUES ('third')"))
    async with database.reading() as reader:
        assert (
            await reader.execute(text("SELECT who FROM turns ORDER BY who"))
        ).scalars().all() == [
            "first",
            "second",
        ]


async def test_a_store_read_by_a_reader_is_one_whole_file_once_disposed(tmp_path: Path) -> None:
    """SQLite moves the WAL into the database file when its last connection closes, which a
    read-only one cannot do: the reader closes first, so a stopped daemon leaves one whole
    file (what an operator copying it alone gets)."""
    path = tmp_path / "store.db"
    database = Database(f"sqlite+aiosqlite:///{path}")
    async with database.begin() as connection:
        await connection.execute(text("CREATE TABLE notes (body TEXT)"))
        await connection.execute(text("INSERT INTO notes VALUES (:body)"), {"body": "x" * 100_000})
    async with database.reading() as reader:
        assert (await reader.execute(text("SELECT count(*) FROM notes"))).scalar_one() == 1
    await database.dispose()
    wal = tmp_path / "store.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    assert path.stat().st_size > 100_000
