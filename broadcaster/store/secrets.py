"""Secrets the daemon makes for itself and keeps in the store, so every process agrees."""

from __future__ import annotations

import secrets

from sqlalchemy import select

from broadcaster.clock import Clock
from broadcaster.store.db import Database
from broadcaster.store.models import AppSecret, table_of


async def get_or_create_secret(database: Database, name: str, clock: Clock) -> str:
    """The secret called ``name``; created (random, 256 bits) on first use. Race-safe:
    two processes creating it at once both end up with the one that was stored."""
    async with database.session() as session, session.begin():
        found = (
            await session.execute(select(AppSecret.value).where(AppSecret.name == name))
        ).scalar_one_or_none()
        if found is not None:
            return found
        insert = database.insert_ignoring_duplicates(table_of(AppSecret), "name")
        await session.execute(
            insert,
            {"name": name, "value": secrets.token_urlsafe(32), "created_at": clock.now()},
        )
        stored: str = (
            await session.execute(select(AppSecret.value).where(AppSecret.name == name))
        ).scalar_one()
        return stored
