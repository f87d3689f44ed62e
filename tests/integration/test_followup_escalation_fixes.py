"""Forced follow-ups that run late, in the engine on a fake clock: whoever a task escalated to
may take it over (even from whoever claimed it) and record its outcome, as its notice says;
an escalation never goes back to the task's own owner; a follow-up whose rule names nobody
for the customer is owned by someone, or kept unowned and said, never dropped; staff told by
SMS, or in Dutch, read which notice it is, the task, its owner and how to record it."""

from __future__ import annotations

import copy
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.engine import Engine
from broadcaster.followups import service as followups
from broadcaster.incidents import service
from broadcaster.incidents.lifecycle import TransitionError
from broadcaster.store import Customer, Database, Followup, FollowupEvent
from channels.memory import MemoryChannel
from rules import EXAMPLE_RULES
from tests.integration.test_rules_followups import START, channels, run_until, seed

STAFF: dict[str, Any] = {
    "notify_channel": "email",
    "people": {
        "ann": {"name": "Ann Visser", "email": "ann@example.org", "manager": "maria"},
        "bram": {"name": "Bram de Jong", "email": "bram@example.org", "manager": "maria"},
        "carla": {"name": "Carla Smit", "email": "carla@example.org"},
        "maria": {"name": "Maria Jansen", "email": "maria@example.org"},
    },
    "groups": {
        "account-managers": {"members": ["ann", "bram"]},
        "care": {"members": ["carla"], "on_call": "carla"},
        "duty-managers": {"members": ["maria"], "on_call": "maria"},
    },
}
"""As tests/integration/test_rules_followups.py's: ann and bram report to maria, carla to
nobody; nobody is an admin."""


def make_settings(rules: Path, staff: dict[str, Any] = STAFF, **more: Any) -> Settings:
    return Settings.model_validate(
        {
            "delivery": {"channels": ["email"], "backoff": {"jitter": 0}},
            "channels": {
                "email": {"type": "console", "contact": "email"},
                "sms": {"type": "console", "contact": "sms"},
                "push": {"type": "console", "contact": "fcm"},
            },
            "staff": staff,
            "rules": {"path": str(rules)},
            **more,
        }
    )


def rules_file(tmp_path: Path, followup: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(
        f"""\
policies:
  default:
    steps:
      - {{after: 0m, every: 30m, channels: [email]}}
rules:
  - name: vip-call
    match: {{customer: {{tier: vip}}}}
    followup: {followup}
    continue: true
  - name: default-policy
    policy: default
""",
        encoding="utf-8",
    )
    return path


CARE_CALL = "{kind: call, owner: group:care, deadline: 1h, escalation: [group:duty-managers]}"


async def _declare(database: Database, clock: FakeClock) -> int:
    incident = await service.declare(
        database,
        clock,
        service.Declaration("Trains stopped", "critical", "No trains.", components=["rail"]),
    )
    return incident.id


async def _events(database: Database, followup_id: int) -> list[tuple[str, str | None, str]]:
    async with database.session() as session:
        rows = await session.execute(
            select(FollowupEvent.kind, FollowupEvent.staff, FollowupEvent.detail)
            .where(FollowupEvent.followup_id == followup_id)
            .order_by(FollowupEvent.id)
        )
        return [(kind, staff, detail or "") for kind, staff, detail in rows]


async def _claimed_by_carla_then_overdue(
    database: Database, tmp_path: Path
) -> tuple[Engine, FakeClock, dict[str, MemoryChannel], Followup]:
    """The rules give V1's call to the care group (carla); carla claims it and lets it run
    late; at the deadline it escalates to the duty manager, maria."""
    clock = FakeClock(START)
    await seed(database)
    sinks = channels()
    engine = await Engine.create(
        make_settings(rules_file(tmp_path, CARE_CALL)), database, clock, sinks
    )
    await _declare(database, clock)
    await run_until(engine, clock, START + timedelta(minutes=5))
    [task] = await followups.list_followups(database, state="open")
    await followups.claim(database, clock, task.id, "carla", engine.directory)
    with pytest.raises(followups.FollowupError) as early:
        await followups.claim(database, clock, task.id, "maria", engine.directory)
    assert str(early.value).startswith(
        f"follow-up {task.id} is claimed, not open: carla holds it; from its deadline"
    )
    await run_until(engine, clock, task.deadline_at + timedelta(minutes=1))
    return engine, clock, sinks, task


async def test_whoever_it_escalated_to_takes_over_a_claimed_task(
    database: Database, tmp_path: Path
) -> None:
    engine, clock, sinks, task = await _claimed_by_carla_then_overdue(database, tmp_path)
    told = [m.message for m in sinks["email"].sent if m.target.address == "maria@example.org"]
    notice = told[-1]
    assert notice.subject.startswith(f"Overdue, escalated to you: Follow-up {task.id}: call")
    # The notice's command is one that works for maria: she may record the outcome at once.
    assert f"'broadcaster followups done {task.id} --as maria --outcome reached" in notice.text
    assert "followups claim" not in notice.text
    assert "Carla Smit (carla), its owner, recorded no outcome by the deadline" in notice.text

    with pytest.raises(followups.FollowupError) as stranger:
        await followups.claim(database, clock, task.id, "bram", engine.directory)
    assert str(stranger.value) == (
        f"only a manager of carla, those it has escalated to (maria) or an admin may take "
        f"over follow-up {task.id} from carla, who claimed it; you are 'bram'"
    )
    taken = await followups.claim(database, clock, task.id, "maria", engine.directory)
    assert (taken.state, taken.owner) == ("claimed", "maria")
    claims = [(staff, detail) for kind, staff, detail in await _events(database, task.id)]
    assert ("maria", "taken over from carla, overdue since 2026-01-06 11:00Z") in claims
    done = await followups.done(
        database, clock, task.id, "maria", "reached", "Called.", directory=engine.directory
    )
    assert (done.state, done.closed_by) == ("done", "maria")


async def test_a_task_escalated_to_someone_is_in_their_list(
    database: Database, tmp_path: Path
) -> None:
    """``followups list --owner maria`` (and the API's ``owner=maria``) shows what she owns
    and what was escalated to her, which she may act on; not what was escalated to nobody
    she is."""
    _engine, _clock, _, task = await _claimed_by_carla_then_overdue(database, tmp_path)
    assert [t.id for t in await followups.list_followups(database, owner="maria")] == [task.id]
    assert [t.id for t in await followups.list_followups(database, owner="carla")] == [task.id]
    assert await followups.list_followups(database, owner="bram") == []
    assert await followups.list_followups(database, owner="maria", state="done") == []


async def test_whoever_it_escalated_to_records_its_outcome_without_claiming(
    database: Database, tmp_path: Path
) -> None:
    engine, clock, _, task = await _claimed_by_carla_then_overdue(database, tmp_path)
    with pytest.raises(followups.FollowupError) as refused:  # not told of it: not hers
        await followups.done(
            database, clock, task.id, "ann", "reached", "n/a", directory=engine.directory
        )
    assert str(refused.value) == (
        f"only a manager of carla, those it has escalated to (maria) or an admin may record "
        f"the outcome of follow-up {task.id} in the place of its owner, carla; you are 'ann'"
    )
    done = await followups.done(
        database, clock, task.id, "maria", "reached", "Called.", directory=engine.directory
    )
    assert (done.state, done.closed_by, done.owner) == ("done", "maria", "carla")


async def test_an_account_manager_it_escalated_to_may_record_it(
    database: Database, tmp_path: Path
) -> None:
    """Whom an ``account_manager`` link reached is known from the task's history (the chain
    alone does not say whose account manager)."""
    clock = FakeClock(START)
    await seed(database)
    sinks = channels()
    rules = rules_file(
        tmp_path, "{kind: call, owner: group:care, deadline: 1h, escalation: [account_manager]}"
    )
    engine = await Engine.create(make_settings(rules), database, clock, sinks)
    await _declare(database, clock)
    await run_until(engine, clock, START + timedelta(hours=1, minutes=1))
    [task] = await followups.list_followups(database, state="open")
    notice = [m.message for m in sinks["email"].sent if m.target.address == "ann@example.org"][-1]
    assert f"followups done {task.id} --as ann --outcome" in notice.text
    assert "followups claim" not in notice.text
    done = await followups.done(
        database, clock, task.id, "ann", "reached", "Called.", directory=engine.directory
    )
    assert done.closed_by == "ann"


async def seed_without_account_manager(database: Database) -> None:
    """The customers of :func:`seed`, the VIP V1 without an account manager."""
    await seed(database)
    async with database.session() as session, session.begin():
        await session.execute(
            update(Customer).where(Customer.id == "V1").values(account_manager=None)
        )


async def test_no_escalation_goes_back_to_the_owner_who_had_it_from_the_chain(
    database: Database,
) -> None:
    """The shipped vip-critical-call for a VIP without an account manager: the duty
    manager's link owns it, and the deadline tells her nothing as if she were someone else;
    her task's history says that nobody else was there to tell."""
    clock = FakeClock(START)
    await seed_without_account_manager(database)
    sinks = channels()
    engine = await Engine.create(make_settings(EXAMPLE_RULES), database, clock, sinks)
    await _declare(database, clock)
    await run_until(engine, clock, START + timedelta(hours=2, minutes=1))
    [task] = await followups.list_followups(database, state="open")
    assert (task.owner, task.escalation_level, task.next_escalation_at) == ("maria", 1, None)
    subjects = [m.message.subject for m in sinks["email"].sent if m.target.address.startswith("m")]
    assert not [s for s in subjects if s.startswith("Overdue")], subjects
    events = await _events(database, task.id)
    assert ("escalated", "maria") not in [(kind, staff) for kind, staff, _ in events]
    assert (
        "not_escalated",
        "maria",
        "overdue since 2026-01-06 12:00Z; nobody but its owner to escalate to",
    ) in events
    assert events[0][2].endswith("; owned by group:duty-managers")


ROOT = {"name": "Root", "email": "r@example.org", "admin": True}
DOCS_FIRST = "{kind: call, owner: account_manager, deadline: 2h, reminder_every: 30m}"
"""docs/rules.md, A first file: no escalation chain."""


@pytest.mark.parametrize(
    ("staff", "owner"),
    [
        ({"unassigned_owner": "carla"}, "carla"),
        ({"people": {**STAFF["people"], "root": ROOT}}, "root"),
    ],
)
async def test_a_follow_up_nobody_is_named_for_goes_to_the_fallback_owner(
    database: Database, tmp_path: Path, staff: dict[str, Any], owner: str
) -> None:
    clock = FakeClock(START)
    await seed_without_account_manager(database)
    sinks = channels()
    settings = make_settings(rules_file(tmp_path, DOCS_FIRST), {**STAFF, **staff})
    engine = await Engine.create(settings, database, clock, sinks)
    await _declare(database, clock)
    await run_until(engine, clock, START)
    [task] = await followups.list_followups(database, state="open")
    assert task.owner == owner
    address = settings.staff.people[owner].email
    assert any(
        m.message.subject.startswith(f"Follow-up {task.id}: call Customer V1")
        for m in sinks["email"].sent
        if m.target.address == address
    )


async def test_a_follow_up_nobody_can_own_is_kept_said_and_holds_the_close(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    await seed_without_account_manager(database)
    sinks = channels()
    engine = await Engine.create(
        make_settings(rules_file(tmp_path, DOCS_FIRST)), database, clock, sinks
    )
    incident_id = await _declare(database, clock)
    with caplog.at_level(logging.ERROR, logger="broadcaster.followups"):
        await run_until(engine, clock, START + timedelta(hours=3))
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == (
        "a forced follow-up has nobody to own it; it is kept unowned for an admin"
    )
    [task] = await followups.list_followups(database, state="open")
    assert (task.customer_id, task.owner) == ("V1", "")
    assert not [m for m in sinks["email"].sent if "Follow-up" in m.message.subject]
    await service.resolve(
        database, clock, incident_id, service.UpdateRequest("Fixed."), engine.escalation
    )
    await run_until(engine, clock, clock.now() + timedelta(minutes=1))
    with pytest.raises(TransitionError, match="forced follow-up"):
        await service.close(database, clock, incident_id, "op")
    with pytest.raises(followups.FollowupError, match="only a manager of nobody"):
        await followups.done(database, clock, task.id, "", "reached", "n/a")
    with pytest.raises(followups.FollowupError, match=r"only its owner \(nobody\)"):
        await followups.claim(database, clock, task.id, "carla", engine.directory)
    await followups.claim(database, clock, task.id, "carla", engine.directory, admin=True)
    await followups.done(database, clock, task.id, "carla", "reached", "Called.")
    closed = await service.close(database, clock, incident_id, "op")
    assert closed.status == "closed"


async def test_staff_told_by_sms_in_dutch_read_the_notice_task_owner_and_command(
    database: Database,
) -> None:
    staff = copy.deepcopy(STAFF)
    staff["notify_channel"] = "sms"
    staff["people"]["ann"]["phone"] = "+31600000001"
    staff["people"]["maria"]["phone"] = "+31600000004"
    clock = FakeClock(START)
    await seed(database)
    sinks = channels()
    settings = make_settings(EXAMPLE_RULES, staff, messages={"default_language": "nl"})
    engine = await Engine.create(settings, database, clock, sinks)
    await _declare(database, clock)
    await run_until(engine, clock, START + timedelta(hours=2, minutes=1))
    [task] = await followups.list_followups(database, state="open")
    told = [
        (m.target.address, m.message.text)
        for m in sinks["sms"].sent
        if m.target.address.startswith("+316") and "opvolging" in m.message.text.lower()
    ]
    heads = [(address, text.split(".")[0]) for address, text in told]
    assert heads == [
        ("+31600000001", f"Opvolging {task.id} is voor u"),
        ("+31600000001", f"Herinnering: opvolging {task.id} staat nog open"),
        ("+31600000001", f"Herinnering: opvolging {task.id} staat nog open"),
        ("+31600000001", f"Herinnering: opvolging {task.id} staat nog open"),
        ("+31600000004", f"Te laat, naar u geescaleerd: opvolging {task.id}"),
    ]
    escalation = told[-1][1]
    assert "Eigenaar Ann Visser (ann) legde niets vast." in escalation
    assert f"broadcaster followups done {task.id} --as maria --outcome reached" in escalation
    assert "leest Engels" in escalation  # the customer's language, named in Dutch
    for _, text in told:
        for english in ("Please", "they read", "Reminder", "Overdue", "Record", "its owner"):
            assert english not in text
