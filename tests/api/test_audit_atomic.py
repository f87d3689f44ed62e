"""An action and its audit entry are written in one transaction: no action without its entry."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from broadcaster import operations
from broadcaster.access import audit
from broadcaster.access.credentials import Principal
from broadcaster.clock import FakeClock
from broadcaster.incidents import service
from broadcaster.store import AuditEntry, Database, Incident
from tests.api.support import START

DECL = service.Declaration("Outage", "major", "Down.", components=["api"], author="ann")


async def _count(database: Database, model: type[Incident] | type[AuditEntry]) -> int:
    async with database.session() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def test_an_action_whose_audit_entry_fails_is_not_stored(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    actor = operations.Actor(database, FakeClock(START), Principal("token", "ci", "operator"), "")

    def broken(*args: object, **kwargs: object) -> AuditEntry:
        raise RuntimeError("the audit log cannot be written")

    monkeypatch.setattr(audit, "entry", broken)
    with pytest.raises(RuntimeError):
        await operations.declare(actor, DECL)
    assert await _count(database, Incident) == 0

    monkeypatch.undo()
    incident = await operations.declare(actor, DECL)
    assert await _count(database, Incident) == 1
    async with database.session() as session:
        [entry] = (await session.execute(select(AuditEntry))).scalars()
    assert (entry.actor, entry.action, entry.target) == (
        "token:ci",
        "incident.declare",
        f"incident:{incident.id}",
    )
