"""An update can change the incident's severity: the cadence, the escalation ladder, the
forced follow-ups and the resolution requirements follow the new one. The example rules, on
a fake clock, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from broadcaster import operations
from broadcaster.access.credentials import Principal
from broadcaster.clock import FakeClock
from broadcaster.engine import Engine
from broadcaster.followups import service as followups
from broadcaster.incidents import service
from broadcaster.intake.apply import apply_event
from broadcaster.intake.events import IncidentEvent
from broadcaster.store import AuditEntry, Database, Incident, Round
from tests.integration.test_rules_followups import START, channels, run_until, seed, settings


async def test_a_minor_incident_raised_to_critical_follows_the_critical_rules(
    database: Database,
) -> None:
    clock = FakeClock(START)
    await seed(database)
    engine = await Engine.create(settings(), database, clock, channels())
    incident = await service.declare(
        database, clock, service.Declaration("Slow", "minor", "Trains slow.", components=["rail"])
    )
    await run_until(engine, clock, START + timedelta(minutes=5))
    async with database.session() as session:
        before = await session.get(Incident, incident.id)
        assert before is not None and before.plan is not None
        assert before.plan["policy"] == "default"
    assert await followups.list_followups(database) == []

    clock.set(START + timedelta(minutes=10))
    await service.post_update(
        database,
        clock,
        incident.id,
        service.UpdateRequest("Trains stopped.", severity="critical"),
    )
    await run_until(engine, clock, START + timedelta(minutes=12))
    async with database.session() as session:
        after = await session.get(Incident, incident.id)
        assert after is not None
        assert (after.severity, after.plan and after.plan["policy"]) == ("critical", "critical")
        next_due = (
            await session.execute(
                select(Round.due_at)
                .where(Round.incident_id == incident.id, Round.state == "pending")
                .order_by(Round.number.desc())
            )
        ).scalar()
    # The critical ladder's 15 minutes from the update, not the default's 30.
    assert next_due == START + timedelta(minutes=25)
    # vip-critical-call: the VIP's account manager must call.
    [task] = await followups.list_followups(database, state="open")
    assert (task.customer_id, task.rule) == ("V1", "vip-critical-call")
    # critical-resolution: cause, remedy and prevention are now required.
    with pytest.raises(service.ResolutionRefused, match="require cause, prevention, remedy"):
        await service.resolve(
            database, clock, incident.id, service.UpdateRequest("Fixed."), engine.escalation
        )


async def test_a_severity_change_is_checked_and_audited(database: Database) -> None:
    clock = FakeClock(START)
    await seed(database)
    incident = await service.declare(
        database, clock, service.Declaration("Slow", "minor", "Slow.", components=["rail"])
    )
    with pytest.raises(ValueError, match="severity must be one of"):
        await service.post_update(
            database, clock, incident.id, service.UpdateRequest("x", severity="apocalyptic")
        )
    actor = operations.Actor(database, clock, Principal("account", "ann", "operator"), "cli")
    await operations.post_update(
        actor, incident.id, service.UpdateRequest("Worse.", severity="major")
    )
    async with database.session() as session:
        stored = await session.get(Incident, incident.id)
        detail = (
            await session.execute(
                select(AuditEntry.detail).where(AuditEntry.action == "incident.update")
            )
        ).scalar_one()
    assert stored is not None and stored.severity == "major"
    assert detail == {"severity": "major"}


async def test_a_feed_raising_the_severity_takes_the_plan_again(database: Database) -> None:
    clock = FakeClock(START)
    await seed(database)
    engine = await Engine.create(settings(), database, clock, channels())

    def item(version: str, severity: str) -> IncidentEvent:
        return IncidentEvent(
            source="status",
            external_id="inc-1",
            version=version,
            title="Trains slow",
            severity=severity,
            status="investigating",
            message=f"Trains {severity}.",
            components=("rail",),
        )

    first = await apply_event(
        database, clock, item("v1", "minor"), hold=timedelta(0), reopen_within=timedelta(hours=1)
    )
    await run_until(engine, clock, START + timedelta(minutes=5))
    clock.set(START + timedelta(minutes=10))
    raised = await apply_event(
        database, clock, item("v2", "critical"), hold=timedelta(0), reopen_within=timedelta(hours=1)
    )
    assert (first.kind, raised.kind) == ("created", "updated")
    await run_until(engine, clock, START + timedelta(minutes=12))
    async with database.session() as session:
        incident = await session.get(Incident, first.incident_id)
    assert incident is not None and incident.severity == "critical"
    assert incident.plan is not None and incident.plan["policy"] == "critical"
