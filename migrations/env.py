"""Alembic environment: async engine, batch mode (SQLite), the models' naming convention."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from broadcaster.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL given to the migrations")
    return str(url)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _no_sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    """SQLite: foreign keys off while migrating. A batch migration rebuilds a table (copy,
    drop, rename); with them on, dropping a table deletes its rows first, and ON DELETE
    CASCADE would take every row that refers to them (the daemon's own connections turn
    them on: broadcaster/store/db.py)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=OFF")
    cursor.close()


async def run_migrations_online() -> None:
    engine = create_async_engine(_url())
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _no_sqlite_foreign_keys)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
