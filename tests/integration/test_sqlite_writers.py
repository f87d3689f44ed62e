"""SQLite in one process: its transactions take turns in the order they asked.

Every SQLite transaction is ``BEGIN IMMEDIATE`` (the write lock). With a pool of several
connections, transactions of one process that wanted the lock at once waited in SQLite's
busy handler, which sleeps and retries (up to 100 ms a try) rather than queueing: under
load a dispatch claim waited 2–4 s while others went ahead of it. The engine now keeps one
connection per process for a SQLite file, so they queue for it in order; the busy timeout
is left to other processes (the CLI, dispatch processes).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from broadcaster.store import Database


async def test_waiting_transactions_are_served_in_the_order_they_came(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    try:
        async with database.engine.begin() as connection:
            await connection.execute(text("CREATE TABLE turns (who TEXT)"))
        holding = asyncio.Event()
        release = asyncio.Event()

        async def first() -> None:
            async with database.session() as session, session.begin():
                await session.execute(text("INSERT INTO turns VALUES ('first')"))
                holding.set()
                await release.wait()

        async def writer(name: str) -> None:
            async with database.session() as session, session.begin():
                await session.execute(text("INSERT INTO turns VALUES (:who)"), {"who": name})

        holder = asyncio.create_task(first())
        await holding.wait()
        names = [f"w{n}" for n in range(6)]
        waiting = []
        for name in names:
            waiting.append(asyncio.create_task(writer(name)))
            await asyncio.sleep(0.03)  # each asks for the lock after the one before
        release.set()
        await asyncio.gather(holder, *waiting)

        async with database.session() as session:
            turns = (await session.execute(text("SELECT who FROM turns ORDER BY rowid"))).all()
        assert [row[0] for row in turns] == ["first", *names]
    finally:
        await database.dispose()


async def test_a_waiting_transaction_is_not_overtaken_by_later_ones(tmp_path: Path) -> None:
    """Transactions keep arriving, one per turn of the loop, as 200 sends of a batch
    checking their throttle would: the one that was waiting still goes next. (The pool's
    own queue gave a returned connection to whoever asked first after, so the waiter went
    161st of 202 here.)"""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    try:
        async with database.engine.begin() as connection:
            await connection.execute(text("CREATE TABLE turns (who TEXT)"))
        holding = asyncio.Event()
        release = asyncio.Event()

        async def first() -> None:
            async with database.session() as session, session.begin():
                await session.execute(text("INSERT INTO turns VALUES ('first')"))
                holding.set()
                await release.wait()

        async def writer(name: str) -> None:
            async with database.session() as session, session.begin():
                await session.execute(text("INSERT INTO turns VALUES (:who)"), {"who": name})

        holder = asyncio.create_task(first())
        await holding.wait()
        waiter = asyncio.create_task(writer("waiter"))
        await asyncio.sleep(0.03)
        release.set()
        later = []
        for n in range(100):
            later.append(asyncio.create_task(writer(f"later{n}")))
            await asyncio.sleep(0)
        await asyncio.gather(holder, waiter, *later)

        async with database.session() as session:
            turns = (await session.execute(text("SELECT who FROM turns ORDER BY rowid"))).all()
        assert [row[0] for row in turns][:2] == ["first", "waiter"]
        assert len(turns) == 102
    finally:
        await database.dispose()
