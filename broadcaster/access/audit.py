"""The append-only audit log: every operator and admin action, who, what, when, where from.

Nothing in the project updates or deletes these rows; the store's retention is the
operator's decision (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from broadcaster.access.credentials import Principal
from broadcaster.clock import Clock
from broadcaster.store import AuditEntry, Database


def entry(
    principal: Principal,
    action: str,
    target: str,
    source: str,
    now: datetime,
    *,
    outcome: str = "ok",
    detail: Mapping[str, object] | None = None,
) -> AuditEntry:
    return AuditEntry(
        at=now,
        actor=principal.actor[:120],
        role=principal.role,
        action=action,
        target=target[:200],
        source=source[:100],
        outcome=outcome,
        detail=dict(detail) if detail else None,
    )


async def record_with(
    connection: AsyncConnection,
    principal: Principal,
    action: str,
    target: str,
    source: str,
    now: datetime,
    *,
    detail: Mapping[str, object] | None = None,
) -> None:
    """Write an entry through a Core connection, inside the caller's transaction."""
    row = entry(principal, action, target, source, now, detail=detail)
    await connection.execute(
        insert(AuditEntry).values(
            at=row.at,
            actor=row.actor,
            role=row.role,
            action=row.action,
            target=row.target,
            source=row.source,
            outcome=row.outcome,
            detail=row.detail,
        )
    )


async def record(
    database: Database,
    clock: Clock,
    principal: Principal,
    action: str,
    target: str = "",
    source: str = "",
    *,
    outcome: str = "ok",
    detail: Mapping[str, object] | None = None,
) -> None:
    async with database.session() as session, session.begin():
        session.add(
            entry(principal, action, target, source, clock.now(), outcome=outcome, detail=detail)
        )


async def recent(
    session: AsyncSession,
    *,
    limit: int = 100,
    before_id: int | None = None,
    actor: str | None = None,
    action: str | None = None,
) -> list[AuditEntry]:
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if action:
        query = query.where(AuditEntry.action == action)
    return list((await session.execute(query)).scalars())


def as_dict(row: AuditEntry) -> dict[str, object]:
    return {
        "id": row.id,
        "at": row.at.isoformat(),
        "actor": row.actor,
        "role": row.role,
        "action": row.action,
        "target": row.target,
        "source": row.source,
        "outcome": row.outcome,
        "detail": row.detail or {},
    }
