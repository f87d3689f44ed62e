"""Feed events applied to incidents: idempotent by (source, external id, version)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from broadcaster.clock import Clock, FakeClock
from broadcaster.escalation.facts import incident_facts
from broadcaster.incidents import service
from broadcaster.intake.apply import apply_event, plan_event
from broadcaster.intake.events import IncidentEvent
from broadcaster.store import Database, Incident, IncidentScope, IncidentUpdate, Round
from rules import load_rules
from rules.evaluate import RuleTrace, evaluate

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
HOLD = timedelta(seconds=30)
REOPEN = timedelta(hours=1)


def event(
    version: str,
    *,
    status: str = "investigating",
    updated: datetime | None = None,
    title: str = "Card payments failing",
    message: str = "Some card payments fail.",
    external_id: str = "inc-1",
    components: tuple[str, ...] = ("payments",),
) -> IncidentEvent:
    return IncidentEvent(
        source="status",
        external_id=external_id,
        version=version,
        title=title,
        severity="major",
        status=status,
        message=message,
        components=components,
        updated_at=updated,
    )


async def apply(db: Database, clock: FakeClock, ev: IncidentEvent) -> tuple[str, int | None]:
    result = await apply_event(db, clock, ev, hold=HOLD, reopen_within=REOPEN)
    assert result.kind != "error", result.reason
    return result.kind, result.incident_id


async def updates(db: Database, incident_id: int) -> list[IncidentUpdate]:
    async with db.session() as session:
        rows = await session.execute(
            select(IncidentUpdate)
            .where(IncidentUpdate.incident_id == incident_id)
            .order_by(IncidentUpdate.id)
        )
        return list(rows.scalars().all())


async def incident(db: Database, incident_id: int) -> Incident:
    async with db.session() as session:
        row = await session.get(Incident, incident_id)
        assert row is not None
        return row


async def test_new_item_declares_with_source_key_and_held_first_round(database: Database) -> None:
    clock = FakeClock(START)
    kind, incident_id = await apply(database, clock, event("v1", updated=START))
    assert kind == "created" and incident_id is not None
    row = await incident(database, incident_id)
    assert (row.source, row.external_id, row.title, row.severity) == (
        "status",
        "inc-1",
        "Card payments failing",
        "major",
    )
    async with database.session() as session:
        first = (
            await session.execute(select(Round).where(Round.incident_id == incident_id))
        ).scalar_one()
    assert first.number == 1 and first.due_at == START + HOLD
    [entry] = await updates(database, incident_id)
    assert entry.author.startswith("feed:status@v1 t=")


async def test_no_scope_falls_back_to_the_source_name(database: Database) -> None:
    clock = FakeClock(START)
    _, incident_id = await apply(database, clock, event("v1", components=()))
    assert incident_id is not None
    async with database.session() as session:
        scope = (
            await session.execute(
                select(IncidentScope.kind, IncidentScope.value).where(
                    IncidentScope.incident_id == incident_id
                )
            )
        ).all()
    assert [tuple(s) for s in scope] == [("component", "status")]


async def test_same_version_is_unchanged_and_an_edit_is_one_update(database: Database) -> None:
    clock = FakeClock(START)
    _, incident_id = await apply(database, clock, event("v1", updated=START))
    assert incident_id is not None
    assert (await apply(database, clock, event("v1", updated=START)))[0] == "unchanged"
    clock.advance(60)
    edited = event("v2", status="identified", updated=START + timedelta(minutes=1), title="")
    assert await apply(database, clock, edited) == ("updated", incident_id)
    assert (await apply(database, clock, edited))[0] == "unchanged"
    timeline = await updates(database, incident_id)
    assert [u.kind for u in timeline] == ["declared", "update"]
    assert timeline[1].status == "identified"
    row = await incident(database, incident_id)
    assert row.status == "identified" and row.title == "Card payments failing"


async def test_an_older_event_is_ignored(database: Database) -> None:
    clock = FakeClock(START)
    await apply(database, clock, event("v1", updated=START))
    await apply(database, clock, event("v3", updated=START + timedelta(minutes=5)))
    kind, _ = await apply(database, clock, event("v2", updated=START + timedelta(minutes=2)))
    assert kind == "ignored"


async def test_resolve_then_reopen_within_the_window(database: Database) -> None:
    clock = FakeClock(START)
    _, incident_id = await apply(database, clock, event("v1"))
    assert incident_id is not None
    clock.advance(600)
    resolved = event("v2", status="resolved", message="")
    assert await apply(database, clock, resolved) == ("resolved", incident_id)
    assert (await apply(database, clock, resolved))[0] == "unchanged"
    row = await incident(database, incident_id)
    assert row.status == "resolved"
    timeline = await updates(database, incident_id)
    assert timeline[-1].message == "Some card payments fail."  # empty text keeps ours
    clock.advance(REOPEN - timedelta(minutes=1))
    assert await apply(database, clock, event("v3")) == ("reopened", incident_id)
    assert (await incident(database, incident_id)).status == "investigating"


async def test_open_again_after_the_window_is_a_new_incident(database: Database) -> None:
    clock = FakeClock(START)
    _, first = await apply(database, clock, event("v1"))
    await apply(database, clock, event("v2", status="resolved"))
    clock.advance(REOPEN + timedelta(minutes=1))
    kind, second = await apply(database, clock, event("v3"))
    assert kind == "created" and second not in (None, first)
    assert second is not None
    assert (await incident(database, second)).external_id == "inc-1\t#2"
    # Later events go to the newest generation.
    assert await apply(database, clock, event("v4", status="identified")) == ("updated", second)
    assert (await incident(database, second)).status == "identified"


async def test_unknown_resolved_item_is_ignored_and_plan_writes_nothing(
    database: Database,
) -> None:
    clock = FakeClock(START)
    assert (await apply(database, clock, event("v1", status="resolved")))[0] == "ignored"
    planned = await plan_event(database, clock, event("v1"), reopen_within=REOPEN)
    assert planned.kind == "created"
    assert await service.list_incidents(database) == []


async def test_a_failing_event_is_an_error_result_and_others_still_apply(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(START)
    real_declare = service.declare

    async def declare(db: Database, c: Clock, decl: service.Declaration) -> Incident:
        if decl.title == "boom":
            raise ValueError("store said no")
        return await real_declare(db, c, decl)

    monkeypatch.setattr(service, "declare", declare)
    bad = event("v1", title="boom", external_id="x")
    ok = event("v1", external_id="y")
    results = [
        await apply_event(database, clock, e, hold=HOLD, reopen_within=REOPEN) for e in (bad, ok)
    ]
    assert (results[0].kind, results[0].reason) == ("error", "ValueError: store said no")
    assert results[1].kind == "created"


async def test_staff_updates_do_not_make_the_feed_reapply(database: Database) -> None:
    clock = FakeClock(START)
    _, incident_id = await apply(database, clock, event("v1"))
    assert incident_id is not None
    await service.post_update(
        database, clock, incident_id, service.UpdateRequest(message="We are on it.", author="ann")
    )
    assert (await apply(database, clock, event("v1")))[0] == "unchanged"


async def test_an_event_s_labels_reach_the_rules(database: Database) -> None:
    """``match: {incident: {labels: {test: "true"}}}`` (docs/rules.md) matched nothing: the
    labels were read and never kept."""
    clock = FakeClock(START)
    first = dataclasses.replace(event("1"), labels={"test": "true", "team": "web"})
    kind, incident_id = await apply(database, clock, first)
    assert kind == "created" and incident_id is not None
    async with database.session() as session:
        stored = await session.get(Incident, incident_id)
        assert stored is not None
        facts = await incident_facts(session, stored)
    assert dict(facts.labels) == {"test": "true", "team": "web"}
    silent = load_rules(SILENT, "rules.yaml", channels={"email"}, staff=set(), groups=set())
    trace: list[RuleTrace] = []
    evaluate(silent, facts, None, clock.now(), trace=trace)
    assert (trace[0].rule, trace[0].outcome) == ("test-incidents-are-silent", "matched")

    clock.advance(timedelta(minutes=5))
    later = dataclasses.replace(event("2", message="Still failing."), labels={"team": "web"})
    assert (await apply(database, clock, later))[0] == "updated"
    async with database.session() as session:
        stored = await session.get(Incident, incident_id)
        assert stored is not None
        assert dict((await incident_facts(session, stored)).labels) == {"team": "web"}


SILENT = """\
version: 1
policies:
  default:
    steps:
      - after: 0m
        every: 15m
        channels: [email]
rules:
  - name: test-incidents-are-silent
    match:
      incident:
        labels: {test: "true"}
  - name: everyone
    policy: default
"""


async def rounds_of(db: Database, incident_id: int) -> list[tuple[int, str, str]]:
    async with db.session() as session:
        rows = await session.execute(
            select(Round.number, Round.kind, Round.state)
            .where(Round.incident_id == incident_id)
            .order_by(Round.number)
        )
        return [(row[0], row[1], row[2]) for row in rows]


async def test_an_item_resolved_inside_its_hold_tells_nobody(database: Database) -> None:
    """The hold keeps a flapping alert from customers; resolved inside it, the held first
    round became the resolution: an apology for an incident they had never heard of."""
    clock = FakeClock(START)
    _, incident_id = await apply(database, clock, event("v1"))
    assert incident_id is not None
    clock.advance(10)  # inside the 30 s hold
    assert await apply(database, clock, event("v2", status="resolved")) == (
        "resolved",
        incident_id,
    )
    assert await rounds_of(database, incident_id) == [(1, "first", "cancelled")]
    closed = await service.close(database, clock, incident_id, "op")  # nothing left to send
    assert closed.status == "closed"


async def test_back_within_the_window_after_a_silent_resolution_is_a_first_notice(
    database: Database,
) -> None:
    clock = FakeClock(START)
    _, incident_id = await apply(database, clock, event("v1"))
    assert incident_id is not None
    clock.advance(10)
    await apply(database, clock, event("v2", status="resolved"))
    clock.advance(600)
    assert await apply(database, clock, event("v3")) == ("reopened", incident_id)
    assert await rounds_of(database, incident_id) == [
        (1, "first", "cancelled"),
        (2, "first", "pending"),
    ]


async def test_an_edit_inside_the_hold_keeps_the_first_notice(database: Database) -> None:
    """Edited inside its hold, the held first round went out as an "update" of an incident
    customers had not heard of, without the first notice's opening."""
    clock = FakeClock(START)
    _, incident_id = await apply(database, clock, event("v1"))
    assert incident_id is not None
    clock.advance(10)
    await apply(database, clock, event("v2", status="identified", message="A bad switch."))
    assert await rounds_of(database, incident_id) == [(1, "first", "pending")]
    async with database.session() as session:
        first = (await session.execute(select(Round).where(Round.number == 1))).scalar_one()
        latest = await session.get(IncidentUpdate, first.update_id)
    assert latest is not None and latest.message == "A bad switch."


async def test_resolved_after_its_hold_the_first_round_is_the_resolution(
    database: Database,
) -> None:
    """Past the hold (the daemon not yet at it), customers were affected that long: the
    resolution, with its apology, goes out."""
    clock = FakeClock(START)
    _, incident_id = await apply(database, clock, event("v1"))
    assert incident_id is not None
    clock.advance(HOLD + timedelta(seconds=5))
    await apply(database, clock, event("v2", status="resolved"))
    assert await rounds_of(database, incident_id) == [(1, "resolution", "pending")]


async def test_a_store_error_is_named_without_its_sql(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reason goes back to a webhook's sender and into the public ``/healthz`` (a feed's
    last error): a store error's text carries its SQL and the item's fields."""
    clock = FakeClock(START)

    async def failing(*args: object, **kwargs: object) -> None:
        raise OperationalError("INSERT INTO incidents (title) VALUES (?)", ("secret",), Exception())

    monkeypatch.setattr(service, "declare", failing)
    result = await apply_event(database, clock, event("v1"), hold=HOLD, reopen_within=REOPEN)
    assert result.kind == "error"
    assert result.reason == "the store failed (Exception); the daemon's log has the details"


async def test_back_inside_the_hold_waits_for_its_end(database: Database) -> None:
    """A flapping alert resolved and back inside its hold: its first notice still waits for
    the hold's end, not going out at once on the second flap."""
    clock = FakeClock(START)
    _, incident_id = await apply(database, clock, event("v1"))
    assert incident_id is not None
    clock.advance(5)
    await apply(database, clock, event("v2", status="resolved"))
    clock.advance(5)
    assert await apply(database, clock, event("v3")) == ("reopened", incident_id)
    async with database.session() as session:
        second = (await session.execute(select(Round).where(Round.number == 2))).scalar_one()
    assert (second.kind, second.due_at) == ("first", START + HOLD)
