"""Schema migrations: locate the Alembic scripts and run them for a database URL."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def migrations_dir() -> Path:
    """The migration scripts: next to the package when installed, at the repo root in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("the migrations folder is missing from this installation")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (blocking; run it outside an event loop or in a thread)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("unused")).get_current_head()


def _read_revision(sync: Connection) -> str | None:
    return MigrationContext.configure(sync).get_current_revision()


async def current_revision(url: str) -> str | None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_read_revision)
    finally:
        await engine.dispose()


async def schema_behind(engine: AsyncEngine) -> str | None:
    """What is wrong with the store's schema for this version, for a command that reads the
    store but must not upgrade it; None when it is at the head."""
    async with engine.connect() as connection:
        current = await connection.run_sync(_read_revision)
    head = head_revision()
    if current == head:
        return None
    found = f"at revision {current}" if current else "empty (no schema)"
    return f"the store is {found}, not {head}: run 'broadcaster db upgrade' first"


async def upgrade_async(url: str) -> None:
    """Run :func:`upgrade` from async code (Alembic's env.py starts its own loop)."""
    await asyncio.to_thread(upgrade, url)
