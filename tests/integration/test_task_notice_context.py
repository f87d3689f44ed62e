"""A staff member's task notice says how to reach the customer as the customer lives: their
language, their time zone and the deadline there; and their history over the rules' history
window, not since the beginning of time."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert

from broadcaster.clock import FakeClock
from broadcaster.config.settings import StaffSettings
from broadcaster.engine import Engine
from broadcaster.followups import service as followups
from broadcaster.followups.directory import Directory
from broadcaster.followups.notify import _commands, send_due_notices
from broadcaster.followups.service import queue_notice
from broadcaster.incidents import service
from broadcaster.store import ContactPoint, Customer, Database, Followup, Subscription
from tests.integration.test_rules_followups import START, channels, run_until, settings


async def _vera(database: Database) -> None:
    async with database.session() as session, session.begin():
        await session.execute(
            insert(Customer).values(
                id="V1",
                name="Vera VIP",
                language="nl",
                timezone="Asia/Tokyo",
                tier="vip",
                account_manager="ann",
                created_at=START - timedelta(days=60),
                updated_at=START - timedelta(days=60),
            )
        )
        await session.execute(
            insert(ContactPoint).values(
                customer_id="V1",
                kind="email",
                address="v@example.org",
                opted_out=False,
                disabled=False,
                updated_at=START - timedelta(days=60),
            )
        )
        await session.execute(
            insert(Subscription).values(customer_id="V1", kind="component", value="rail")
        )


async def test_the_task_names_language_zone_local_deadline_and_recent_history(
    database: Database,
) -> None:
    clock = FakeClock(START - timedelta(days=40))
    await _vera(database)
    sinks = channels()
    engine = await Engine.create(settings(), database, clock, sinks)
    # Two earlier incidents reached Vera: 40 days ago (outside the 30-day window) and 10.
    for title, when in (("Old", START - timedelta(days=40)), ("Recent", START - timedelta(10))):
        clock.set(when)
        earlier = await service.declare(
            database, clock, service.Declaration(title, "minor", "Slow.", components=["rail"])
        )
        await engine.process_due_rounds()
        await service.resolve(
            database, clock, earlier.id, service.UpdateRequest("Fixed."), engine.escalation
        )
        await engine.process_due_rounds()
    clock.set(START)
    await service.declare(
        database, clock, service.Declaration("Pay down", "critical", "Down.", components=["rail"])
    )
    await run_until(engine, clock, START)
    [task] = await followups.list_followups(database, state="open")
    assert task.owner == "ann" and task.deadline_at == START + timedelta(hours=2)  # 12:00 UTC

    [notice] = [
        m.message
        for m in sinks["email"].sent
        if m.target.address == "ann@example.org" and m.message.subject.startswith("Follow-up")
    ]
    assert notice.subject == f"Follow-up {task.id}: call Vera VIP by 12:00 UTC"
    assert (
        "How to reach them: v@example.org; they read Dutch (nl); their time zone is "
        "Asia/Tokyo, where the deadline is 21:00 JST\n"
    ) in notice.text
    assert "Their history: 2 incidents affected them in the last 30 days; tier vip" in (notice.text)
    # How to record it: this task's id and the recipient's staff id.
    assert (
        f"'broadcaster followups done {task.id} --as ann --outcome reached "
        '--note "what was said"\' (or --outcome voicemail, declined or unreachable)'
    ) in notice.text
    assert "/console/followups)" in notice.text

    # A longer window (the rules look back 90 days, say) counts the older one too.
    async with database.session() as session, session.begin():
        queue_notice(
            session,
            key="test-reminder",
            kind="reminder",
            staff="ann",
            incident_id=task.incident_id,
            now=clock.now(),
            followup_id=task.id,
        )
    sent = await send_due_notices(
        database,
        clock,
        sinks["email"],
        engine.renderer,
        engine.directory,
        owner="test",
        settings=engine.settings.delivery,
        public_url="http://example.org",
        history_window=timedelta(days=90),
    )
    assert sent == 1
    reminder = sinks["email"].sent[-1].message
    assert reminder.subject == f"Reminder: Follow-up {task.id}: call Vera VIP by 12:00 UTC"
    assert "3 incidents affected them in the last 90 days" in reminder.text


def test_the_commands_offered_are_ones_that_work_for_the_one_told() -> None:
    """The owner, a manager of the owner and anyone the task escalated to record the outcome
    at once (``done``); a colleague the rules named may claim it first; someone who may do
    neither (the task went to another since the notice was queued) is offered no command,
    only the console."""
    directory = Directory(
        StaffSettings.model_validate(
            {
                "people": {
                    "ann": {"name": "Ann", "email": "a@example.org", "manager": "maria"},
                    "bram": {"name": "Bram", "email": "b@example.org", "manager": "maria"},
                    "carla": {"name": "Carla", "email": "c@example.org"},
                    "dirk": {"name": "Dirk", "email": "d@example.org"},
                    "maria": {"name": "Maria", "email": "m@example.org"},
                },
                "groups": {"account-managers": {"members": ["ann", "bram"]}},
            }
        )
    )
    task = Followup(
        id=7,
        kind="call",
        owner="ann",
        owner_ref="group:account-managers",
        state="open",
        deadline_at=START,
        escalation=["staff:dirk"],
        escalation_level=1,
    )
    now = START + timedelta(minutes=1)
    for staff, claim in (("ann", False), ("maria", False), ("dirk", False), ("bram", True)):
        claims, done = _commands(task, staff, directory, set(), now)
        assert done == f"broadcaster followups done 7 --as {staff}", staff
        assert (claims == f"broadcaster followups claim 7 --as {staff}") is claim, staff
        assert claims is None or claim, staff
    assert _commands(task, "carla", directory, set(), now) == (None, None)
    # Whom the history says it was escalated to (an account manager link's person).
    assert _commands(task, "carla", directory, {"carla"}, now)[1] is not None
