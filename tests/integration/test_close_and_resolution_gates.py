"""Closing waits for the resolution round (which may still force follow-ups), no follow-up is
created for a closed incident, and the rules' resolution requirements are not met by blanks.
The example rules, on a fake clock, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from broadcaster.clock import FakeClock
from broadcaster.engine import Engine
from broadcaster.followups import service as followups
from broadcaster.incidents import service
from broadcaster.incidents.lifecycle import TransitionError
from broadcaster.store import Customer, Database, Followup, Incident, Round, StaffNotice
from rules import FollowupRequirement, StaffRef
from tests.integration.test_rules_followups import START, channels, run_until, seed, settings


async def test_close_waits_for_the_resolution_round_and_its_forced_follow_ups(
    database: Database,
) -> None:
    clock = FakeClock(START)
    await seed(database)
    sinks = channels()
    engine = await Engine.create(settings(), database, clock, sinks)
    incident = await service.declare(
        database,
        clock,
        service.Declaration("Payments slow", "major", "Payments are slow.", components=["rail"]),
    )
    await run_until(engine, clock, START + timedelta(hours=4))  # age 4 h: no follow-up yet
    assert await followups.list_followups(database) == []

    # Resolved at 4 h 05: the resolution round reaches B1 when the incident is over 4 h old,
    # so the rules require a call by B1's account manager. Closing at once is refused.
    clock.set(START + timedelta(hours=4, minutes=5))
    await service.resolve(
        database, clock, incident.id, service.UpdateRequest("Fixed."), engine.escalation
    )
    with pytest.raises(service.CloseRefused, match="cannot be closed yet") as refused:
        await service.close(database, clock, incident.id, "op")
    assert "(the resolution, not started)" in str(refused.value)
    assert f"incident show {incident.id}" in str(refused.value)
    async with database.session() as session:
        stored = await session.get(Incident, incident.id)
    assert stored is not None and stored.status == "resolved"

    # The daemon sends the round: the follow-up exists, and now closing names it.
    await run_until(engine, clock, clock.now())
    [task] = await followups.list_followups(database, state="open")
    assert (task.customer_id, task.owner, task.rule) == ("B1", "bram", "business-long-incident")
    with pytest.raises(TransitionError, match="1 forced follow-up"):
        await service.close(database, clock, incident.id, "op")
    await followups.done(database, clock, task.id, "bram", "reached", "Apologised.")
    closed = await service.close(database, clock, incident.id, "op")
    assert closed.status == "closed"


async def test_no_follow_up_is_created_for_a_closed_incident(database: Database) -> None:
    clock = FakeClock(START)
    await seed(database)
    engine = await Engine.create(settings(), database, clock, channels())
    incident = await service.declare(
        database, clock, service.Declaration("Short", "minor", "Short.", components=["rail"])
    )
    await service.resolve(
        database, clock, incident.id, service.UpdateRequest("Fixed."), engine.escalation
    )
    await run_until(engine, clock, clock.now())
    await service.close(database, clock, incident.id, "op")

    late = FollowupRequirement(
        kind="call", owner=StaffRef.parse("account_manager"), deadline=timedelta(hours=1), rule="r"
    )
    async with database.session() as session, session.begin():
        customer = await session.get(Customer, "B1")
        assert customer is not None
        notices = await followups.create_for_customer(
            session, incident.id, customer, [late], clock.now(), engine.directory
        )
    assert notices == []
    async with database.session() as session:
        assert (await session.execute(select(Followup))).scalars().all() == []
        assert (await session.execute(select(StaffNotice.kind))).scalars().all() == []


async def test_blank_remedy_and_prevention_do_not_meet_the_rules(database: Database) -> None:
    clock = FakeClock(START)
    await seed(database)
    engine = await Engine.create(settings(), database, clock, channels())
    incident = await service.declare(
        database, clock, service.Declaration("Down", "critical", "Down.", components=["rail"])
    )
    blank = service.UpdateRequest(
        "Fixed.", cause_kind="known", cause="Expired cert", remedy=" ", prevention="   "
    )
    with pytest.raises(service.ResolutionRefused, match=r"require prevention, remedy before"):
        await service.resolve(database, clock, incident.id, blank, engine.escalation)
    async with database.session() as session:
        stored = await session.get(Incident, incident.id)
    assert stored is not None and stored.status == "investigating"

    given = dataclasses.replace(blank, remedy=" Renewed. ", prevention="Alerts.")
    update = await service.resolve(database, clock, incident.id, given, engine.escalation)
    assert (update.remedy, update.prevention) == ("Renewed.", "Alerts.")


async def test_rules_on_a_resolved_status_apply_to_the_resolution(
    database: Database, tmp_path: Path
) -> None:
    """The resolution's decision was taken on the incident as it stood, still open: a rule
    on ``incident.status: resolved`` (its compensation, what it requires) never applied."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        """
policies:
  default:
    steps:
      - {after: 0m, every: 30m, channels: [email]}
rules:
  - name: resolved-credit
    match:
      incident: {status: resolved}
    require_for_resolution: [prevention]
    compensation: {kind: credit, amount: 5.00, currency: EUR}
    continue: true
  - name: catch-all
    policy: default
""",
        encoding="utf-8",
    )
    clock = FakeClock(START)
    await seed(database)
    engine = await Engine.create(settings(rules), database, clock, channels())
    incident = await service.declare(
        database, clock, service.Declaration("Down", "minor", "Down.", components=["rail"])
    )
    with pytest.raises(service.ResolutionRefused, match=r"\(resolved-credit\) require prevention"):
        await service.resolve(
            database, clock, incident.id, service.UpdateRequest("Fixed."), engine.escalation
        )
    update = await service.resolve(
        database,
        clock,
        incident.id,
        service.UpdateRequest("Fixed.", prevention="A second supplier."),
        engine.escalation,
    )
    assert update.compensation is None  # the operator's words only; the rules' as data
    assert update.compensation_offers == [
        {"kind": "credit", "amount": "5.00", "currency": "EUR", "rule": "resolved-credit"}
    ]


async def test_a_resolution_from_a_host_whose_clock_is_behind_still_resolves(
    database: Database,
) -> None:
    """Decided as resolved "now", the incident's facts had a resolution before its start
    when the resolving host's clock was a second behind the declaring one's: refused with a
    ValueError. And the first round, not yet started, must still carry the resolution."""
    clock = FakeClock(START)
    await seed(database)
    engine = await Engine.create(settings(), database, clock, channels())
    incident = await service.declare(
        database, clock, service.Declaration("Down", "minor", "Down.", components=["rail"])
    )
    behind = FakeClock(START - timedelta(seconds=1))
    await service.resolve(
        database, behind, incident.id, service.UpdateRequest("Fixed."), engine.escalation
    )
    async with database.session() as session:
        rounds = (await session.execute(select(Round.kind, Round.state))).all()
    assert rounds == [("resolution", "pending")]
