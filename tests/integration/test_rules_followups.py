"""The example rules at work in the engine, on a fake clock: the critical ladder, forced
follow-ups (created, announced, reminded, escalated, done or waived), resolution
requirements, compensation, closure refused then allowed, snapshots and safe reloads."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.engine import Engine
from broadcaster.escalation.holder import RulesHolder
from broadcaster.followups import service as followups
from broadcaster.followups.notify import send_due_notices
from broadcaster.followups.service import queue_notice
from broadcaster.incidents import service
from broadcaster.incidents.lifecycle import TransitionError
from broadcaster.store import (
    ContactPoint,
    Customer,
    Database,
    Delivery,
    Followup,
    FollowupEvent,
    Incident,
    Round,
    Subscription,
)
from channels.base import DeliveryError, Message, Target
from channels.memory import MemoryChannel
from rules import EXAMPLE_RULES, RulesError

START = datetime(2026, 1, 6, 10, 0, tzinfo=UTC)  # 11:00 in Amsterdam: no quiet hours


def settings(rules_path: Path = EXAMPLE_RULES) -> Settings:
    return Settings.model_validate(
        {
            "delivery": {"channels": ["email"], "backoff": {"jitter": 0}},
            "channels": {
                "email": {"type": "console", "contact": "email"},
                "sms": {"type": "console", "contact": "sms"},
                "push": {"type": "console", "contact": "fcm"},
            },
            "staff": {
                "notify_channel": "email",
                "people": {
                    "ann": {"name": "Ann Visser", "email": "ann@example.org", "manager": "maria"},
                    "bram": {
                        "name": "Bram de Jong",
                        "email": "bram@example.org",
                        "manager": "maria",
                    },
                    "carla": {"name": "Carla Smit", "email": "carla@example.org"},
                    "maria": {"name": "Maria Jansen", "email": "maria@example.org"},
                },
                "groups": {
                    "account-managers": {"members": ["ann", "bram"]},
                    "care": {"members": ["carla"], "on_call": "carla"},
                    "duty-managers": {"members": ["maria"], "on_call": "maria"},
                },
            },
            "rules": {"path": str(rules_path)},
        }
    )


async def seed(db: Database) -> None:
    people = [("V1", "vip", "ann"), ("B1", "business", "bram"), ("S1", "standard", None)]
    async with db.session() as session, session.begin():
        for cid, tier, manager in people:
            await session.execute(
                insert(Customer).values(
                    id=cid,
                    name=f"Customer {cid}",
                    language="en",
                    timezone="Europe/Amsterdam",
                    tier=tier,
                    account_manager=manager,
                    created_at=START,
                    updated_at=START,
                )
            )
            await session.execute(
                insert(ContactPoint).values(
                    customer_id=cid,
                    kind="email",
                    address=f"{cid.lower()}@example.org",
                    opted_out=False,
                    disabled=False,
                    updated_at=START,
                )
            )
            await session.execute(
                insert(Subscription).values(customer_id=cid, kind="component", value="rail")
            )


def channels() -> dict[str, MemoryChannel]:
    return {
        "email": MemoryChannel(name="email", contact="email"),
        "sms": MemoryChannel(name="sms", contact="sms"),
        "push": MemoryChannel(name="push", contact="fcm"),
    }


async def run_until(engine: Engine, clock: FakeClock, until: datetime) -> None:
    while True:
        await engine.process_due_rounds()
        await engine.dispatch_all()
        await engine.sweep_followups()
        wake = await engine.next_wakeup()
        step = min(wake or until, clock.now() + timedelta(minutes=5), until)
        if clock.now() >= until:
            return
        clock.set(max(step, clock.now() + timedelta(seconds=1)) if step <= until else until)


def staff_mail(email: MemoryChannel, address: str) -> list[str]:
    return [m.message.subject for m in email.sent if m.target.address == address]


async def test_critical_incident_with_forced_follow_up(database: Database) -> None:
    clock = FakeClock(START)
    await seed(database)
    sinks = channels()
    engine = await Engine.create(settings(), database, clock, sinks)
    incident = await service.declare(
        database,
        clock,
        service.Declaration("Trains stopped", "critical", "No trains.", components=["rail"]),
    )
    await run_until(engine, clock, START)
    async with database.session() as session:
        stored = await session.get(Incident, incident.id)
        first = (await session.execute(select(Round).where(Round.number == 1))).scalar_one()
        tasks = (await session.execute(select(Followup))).scalars().all()
    assert stored is not None and stored.plan is not None and stored.plan["policy"] == "critical"
    assert first.channels == "push,email,sms" and first.next_due_at == START + timedelta(minutes=15)
    assert [(t.customer_id, t.kind, t.owner, t.rule) for t in tasks] == [
        ("V1", "call", "ann", "vip-critical-call")
    ]
    email = sinks["email"]
    assert any("Follow-up" in s for s in staff_mail(email, "ann@example.org"))
    to_vip = [m.message.text for m in email.sent if m.target.address == "v1@example.org"]
    assert "Ann Visser of Example Transit will call you personally" in to_vip[0]
    to_standard = [m.message.text for m in email.sent if m.target.address == "s1@example.org"]
    assert "personally" not in to_standard[0]

    # Reminders every 30 minutes until the deadline (2 h), then escalation to the duty manager.
    await run_until(engine, clock, START + timedelta(hours=2, minutes=5))
    reminders = [s for s in staff_mail(email, "ann@example.org") if s.startswith("Reminder")]
    assert len(reminders) == 3  # at 30, 60 and 90 minutes
    assert any(s.startswith("Overdue") for s in staff_mail(email, "maria@example.org"))
    async with database.session() as session:
        kinds = (await session.execute(select(FollowupEvent.kind))).scalars().all()
        cadence = (
            await session.execute(
                select(Round.started_at, Round.next_due_at)
                .where(Round.state == "dispatched")
                .order_by(Round.number.desc())
                .limit(1)
            )
        ).one()
    assert {"created", "notified", "reminded", "escalated"} <= set(kinds)
    assert cadence[0] is not None and cadence[1] is not None
    assert cadence[1] - cadence[0] <= timedelta(minutes=10, seconds=59)  # the 2 h step: 10 min

    # After 4 hours the business customer's account manager must follow up too.
    await run_until(engine, clock, START + timedelta(hours=4, minutes=15))
    async with database.session() as session:
        owners = dict((await session.execute(select(Followup.customer_id, Followup.owner))).all())
    assert owners == {"V1": "ann", "B1": "bram"}

    # A critical incident cannot be resolved without cause, remedy and prevention.
    with pytest.raises(service.ResolutionRefused, match="cause, prevention, remedy"):
        await service.resolve(
            database, clock, incident.id, service.UpdateRequest("Trains run."), engine.escalation
        )
    fixed = service.UpdateRequest(
        "Trains run.",
        cause_kind="known",
        cause="A signal failure.",
        remedy="The signal was replaced.",
        prevention="Signals are now monitored.",
    )
    update_row = await service.resolve(database, clock, incident.id, fixed, engine.escalation)
    assert update_row.compensation is None  # open longer than 2 h: the rules' credit, as data
    assert update_row.compensation_offers == [
        {"kind": "credit", "amount": "10.00", "currency": "EUR", "rule": "long-outage-credit"}
    ]
    await run_until(engine, clock, clock.now())
    resolution = [m.message.text for m in email.sent if m.target.address == "s1@example.org"][-1]
    assert "To make up for it: a credit of €10.00." in resolution

    # Closing is refused while follow-ups are open; a waiver needs a manager.
    with pytest.raises(TransitionError, match="2 forced follow-up"):
        await service.close(database, clock, incident.id)
    vip, business = sorted(
        (await followups.list_followups(database, state="open")), key=lambda t: t.customer_id
    )[::-1]
    await followups.done(database, clock, vip.id, "ann", "reached", "Apologised; credit noted.")
    with pytest.raises(followups.FollowupError, match="only a manager"):
        await followups.waive(database, clock, business.id, "ann", "no", engine.directory)
    await followups.waive(
        database, clock, business.id, "maria", "Customer asked not to be called.", engine.directory
    )
    closed = await service.close(database, clock, incident.id)
    assert closed.status == "closed"


async def test_the_plan_is_fixed_when_escalation_starts(database: Database, tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(EXAMPLE_RULES.read_text(encoding="utf-8"), encoding="utf-8")
    clock = FakeClock(START)
    await seed(database)
    engine = await Engine.create(settings(rules_file), database, clock, channels())
    await service.declare(
        database, clock, service.Declaration("Slow", "minor", "Delays.", components=["rail"])
    )
    await run_until(engine, clock, START)
    # An admin makes the default policy much faster mid-incident.
    rules_file.write_text(
        rules_file.read_text(encoding="utf-8").replace("every: 30m", "every: 5m"),
        encoding="utf-8",
    )
    assert engine.rules.reload()
    await run_until(engine, clock, START + timedelta(minutes=40))
    async with database.session() as session:
        rounds = (
            await session.execute(
                select(Round.number, Round.started_at)
                .where(Round.state == "dispatched")
                .order_by(Round.number)
            )
        ).all()
    # The running incident keeps its 30-minute ladder: rounds at 0 and 30 minutes only.
    assert [r[1] for r in rounds] == [START, START + timedelta(minutes=30)]


async def test_one_notice_that_raises_does_not_keep_the_others_unsent(database: Database) -> None:
    clock = FakeClock(START)
    await seed(database)
    sinks = channels()
    engine = await Engine.create(settings(), database, clock, sinks)
    await service.declare(
        database,
        clock,
        service.Declaration("Trains stopped", "critical", "No trains.", components=["rail"]),
    )
    await run_until(engine, clock, START)
    async with database.session() as session:
        task = (await session.execute(select(Followup))).scalar_one()
    calls: list[str] = []

    def ann_breaks(target: Target, message: Message) -> DeliveryError | None:
        calls.append(target.address)
        if target.address == "ann@example.org":
            raise RuntimeError("a template bug")
        return None

    broken = MemoryChannel(name="email", contact="email", fail=ann_breaks)
    async with database.session() as session, session.begin():
        for staff, kind in (("ann", "reminder"), ("maria", "escalation")):
            queue_notice(
                session,
                key=f"test-{kind}",
                kind=kind,
                staff=staff,
                incident_id=task.incident_id,
                now=clock.now(),
                followup_id=task.id,
            )
    sent = await send_due_notices(
        database,
        clock,
        broken,
        engine.renderer,
        engine.directory,
        owner="test",
        settings=engine.settings.delivery,
        public_url="http://example.org",
    )
    assert sent == 1 and sorted(calls) == ["ann@example.org", "maria@example.org"]
    assert [m.target.address for m in broken.sent] == ["maria@example.org"]
    async with database.session() as session:
        details = (
            await session.execute(
                select(FollowupEvent.staff, FollowupEvent.detail)
                .where(FollowupEvent.kind == "notified", FollowupEvent.at == clock.now())
                .order_by(FollowupEvent.id)
            )
        ).all()
    latest = {staff: str(detail) for staff, detail in details}  # in the order they were written
    assert "unexpected error" in latest["ann"] and "trying again" in latest["ann"]
    assert latest["maria"].startswith("escalation sent")


async def test_an_escalation_notice_that_raises_does_not_keep_the_others_or_the_round(
    database: Database,
) -> None:
    clock = FakeClock(START)
    await seed(database)
    config = settings()
    config.staff.groups["duty-managers"].members = ["maria", "carla"]

    def maria_breaks(target: Target, message: Message) -> DeliveryError | None:
        if message.subject.startswith("[Escalation]") and target.address.startswith("maria"):
            raise RuntimeError("a template bug")
        return None

    sinks = channels()
    sinks["email"] = MemoryChannel(name="email", contact="email", fail=maria_breaks)
    engine = await Engine.create(config, database, clock, sinks)
    await service.declare(
        database,
        clock,
        service.Declaration("Trains stopped", "critical", "No trains.", components=["rail"]),
    )
    await run_until(engine, clock, START + timedelta(hours=2, minutes=1))
    escalations = [
        m.target.address for m in sinks["email"].sent if m.message.subject.startswith("[Esc")
    ]
    assert escalations == ["carla@example.org"]  # the 2 h step's group: maria's raised
    async with database.session() as session:
        late = (
            await session.execute(
                select(func.count())
                .select_from(Round)
                .where(Round.started_at >= START + timedelta(hours=2))
            )
        ).scalar_one()
    assert late == 1  # the round of that step went on


async def test_closing_the_channels_goes_on_past_one_that_fails(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    closed: list[str] = []

    class Closing(MemoryChannel):
        async def aclose(self) -> None:
            closed.append(self.name)
            if self.name == "email":
                raise OSError("the relay hung up")

    sinks = {name: Closing(name=name, contact=c.contact) for name, c in channels().items()}
    engine = await Engine.create(settings(), database, FakeClock(START), sinks)
    await engine.aclose()
    assert sorted(closed) == ["email", "push", "sms"]
    assert any("email did not close cleanly" in r.getMessage() for r in caplog.records)


async def test_a_bad_rules_edit_keeps_the_previous_rules(tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(EXAMPLE_RULES.read_text(encoding="utf-8"), encoding="utf-8")
    holder = RulesHolder(settings(rules_file))
    good = holder.load()
    rules_file.write_text("policies: {default: {steps: [{after: soon}]}}\nrules: []\n")
    assert not holder.reload()
    assert holder.current is good
    assert holder.error is not None and "rules.yaml:1:" in holder.error
    rules_file.write_text(EXAMPLE_RULES.read_text(encoding="utf-8"), encoding="utf-8")
    assert holder.reload() and holder.error is None


async def test_a_rules_file_saved_in_another_encoding_is_a_bad_edit(tmp_path: Path) -> None:
    """Not UTF-8 (an editor's Latin-1 "é"): refused like any bad edit, with the line, and
    at start-up a RulesError, not a traceback."""
    rules_file = tmp_path / "rules.yaml"
    text = EXAMPLE_RULES.read_text(encoding="utf-8")
    rules_file.write_text(text, encoding="utf-8")
    holder = RulesHolder(settings(rules_file))
    good = holder.load()
    rules_file.write_bytes(text.encode("utf-8") + "# Réseau\n".encode("latin-1"))
    assert not holder.reload()
    assert holder.current is good
    line = text.count("\n") + 1
    assert holder.error is not None
    assert holder.error.startswith(f"{rules_file}:{line}: not UTF-8 (byte 0xe9")
    with pytest.raises(RulesError, match="not UTF-8"):
        RulesHolder(settings(rules_file)).load()


async def test_quiet_hours_hold_non_critical_updates(database: Database) -> None:
    night = datetime(2026, 1, 6, 22, 30, tzinfo=UTC)  # 23:30 in Amsterdam
    clock = FakeClock(night)
    await seed(database)
    sinks = channels()
    engine = await Engine.create(settings(), database, clock, sinks)
    await service.declare(
        database, clock, service.Declaration("Slow", "minor", "Delays.", components=["rail"])
    )
    await engine.process_due_rounds()
    await engine.dispatch_all()
    assert sinks["email"].sent == []  # held until 07:00 local
    clock.set(datetime(2026, 1, 7, 6, 0, tzinfo=UTC))  # 07:00 in Amsterdam
    await engine.dispatch_all()
    assert len(sinks["email"].sent) == 3


async def test_a_message_before_quiet_hours_promises_their_end(database: Database) -> None:
    """Sent at 21:40 local, a message promised "next update by 22:10", a round the customer's
    quiet hours (22:00 to 07:00) would hold until 07:00: a promise broken to them, and
    counted as kept. It now promises 07:00; a critical incident, never held, keeps 22:10."""
    evening = datetime(2026, 1, 6, 20, 40, tzinfo=UTC)  # 21:40 in Amsterdam
    clock = FakeClock(evening)
    await seed(database)
    sinks = channels()
    engine = await Engine.create(settings(), database, clock, sinks)
    for severity in ("minor", "critical"):
        await service.declare(
            database, clock, service.Declaration(severity, severity, "Delays.", components=["rail"])
        )
    await engine.process_due_rounds()
    await engine.dispatch_all()
    promises = {
        m.message.subject.split()[-1]: next(
            line for line in m.message.text.splitlines() if "next update by" in line
        )
        for m in sinks["email"].sent
        if m.target.address == "s1@example.org"
    }
    assert "by Wed 7 Jan 07:00 CET" in promises["minor"]
    assert "by 21:55 CET" in promises["critical"]  # 15-minute steps, never held
    # The held round goes out at the window's end, keeping the promise.
    clock.set(datetime(2026, 1, 7, 6, 0, tzinfo=UTC))
    await run_until(engine, clock, clock.now())
    minor = [m for m in sinks["email"].sent if m.message.subject.endswith("minor")]
    assert [m.message.created_at for m in minor if m.target.address == "s1@example.org"] == [
        evening,
        datetime(2026, 1, 7, 6, 0, tzinfo=UTC),
    ]


async def test_a_night_of_held_updates_arrives_as_the_latest_one_only(database: Database) -> None:
    """Every round of a night held for quiet hours supersedes the customer's earlier held
    ones: at 07:00 each customer gets one message, the latest, not a flood of stale ones."""
    night = datetime(2026, 1, 6, 22, 30, tzinfo=UTC)  # 23:30 in Amsterdam
    clock = FakeClock(night)
    await seed(database)
    sinks = channels()
    engine = await Engine.create(settings(), database, clock, sinks)
    await service.declare(
        database, clock, service.Declaration("Slow", "minor", "Delays.", components=["rail"])
    )
    await run_until(engine, clock, datetime(2026, 1, 7, 5, 59, tzinfo=UTC))
    assert customers_mail(sinks["email"]) == []  # staff step notices go out at night
    async with database.session() as session:
        rounds = (
            await session.execute(
                select(func.count()).select_from(Round).where(Round.state == "dispatched")
            )
        ).scalar_one()
        waiting = (
            await session.execute(
                select(func.count()).select_from(Delivery).where(Delivery.state == "pending")
            )
        ).scalar_one()
    assert rounds >= 3  # rounds through the night, each held
    assert waiting == 3  # one per customer: the latest round's

    clock.set(datetime(2026, 1, 7, 6, 0, tzinfo=UTC))  # 07:00 in Amsterdam
    await engine.dispatch_all()
    mail = customers_mail(sinks["email"])
    assert len(mail) == 3
    assert len({m.target.customer_id for m in mail}) == 3


async def test_the_held_message_says_what_the_ones_it_cancelled_would_have(
    database: Database,
) -> None:
    """A night's held rounds cancel the earlier held ones; the one left says the first notice
    to a customer never told of the incident, and an update where an operator's news was
    held, with the latest facts: never "no news yet" as the first word of a disruption or in
    place of the night's news."""
    evening = datetime(2026, 1, 6, 20, 40, tzinfo=UTC)  # 21:40 in Amsterdam
    clock = FakeClock(evening)
    await seed(database)
    sinks = channels()
    engine = await Engine.create(settings(), database, clock, sinks)
    told = await service.declare(
        database, clock, service.Declaration("Told", "minor", "Delays.", components=["rail"])
    )
    await run_until(engine, clock, datetime(2026, 1, 6, 22, 30, tzinfo=UTC))  # 23:30
    untold = await service.declare(
        database, clock, service.Declaration("Untold", "minor", "Stops.", components=["rail"])
    )
    await run_until(engine, clock, datetime(2026, 1, 7, 1, 0, tzinfo=UTC))  # 02:00
    for incident in (told, untold):
        await service.post_update(
            database,
            clock,
            incident.id,
            service.UpdateRequest("Buses run every 15 minutes.", status="identified"),
        )
    await run_until(engine, clock, datetime(2026, 1, 7, 5, 59, tzinfo=UTC))
    before = len(customers_mail(sinks["email"]))
    clock.set(datetime(2026, 1, 7, 6, 0, tzinfo=UTC))  # 07:00 in Amsterdam
    await run_until(engine, clock, clock.now())
    morning = [m for m in customers_mail(sinks["email"])[before:] if m.target.customer_id == "S1"]
    said = {m.message.subject.split()[-1]: m.message for m in morning}
    assert sorted(said) == ["Told", "Untold"]  # one message each: the night's last
    assert said["Untold"].headers["X-Broadcaster-Kind"] == "first"
    assert said["Told"].headers["X-Broadcaster-Kind"] == "update"
    for message in said.values():
        assert "Buses run every 15 minutes." in message.text
        assert not message.subject.startswith("Still working on it")  # the no-news subject


async def test_a_promise_made_before_the_rounds_could_be_held_is_kept(database: Database) -> None:
    """A critical incident's messages go out at night, each promising the next round; an
    update that lowers it to major, a severity whose rounds quiet hours hold, goes out at
    once all the same (the last message promised a time inside the night) and promises the
    window's end; the rounds after it are held until then."""
    night = datetime(2026, 1, 6, 23, 0, tzinfo=UTC)  # 00:00 in Amsterdam
    clock = FakeClock(night)
    await seed(database)
    sinks = channels()
    engine = await Engine.create(settings(), database, clock, sinks)
    incident = await service.declare(
        database, clock, service.Declaration("Down", "critical", "Stops.", components=["rail"])
    )
    await run_until(engine, clock, datetime(2026, 1, 7, 0, 10, tzinfo=UTC))  # 01:10
    sent = customers_mail(sinks["email"])
    last = [m for m in sent if m.target.customer_id == "S1"][-1]
    assert "next update by 01:15 CET" in last.message.text
    await service.post_update(
        database,
        clock,
        incident.id,
        service.UpdateRequest("Buses replace the trains.", severity="major"),
    )
    await run_until(engine, clock, datetime(2026, 1, 7, 5, 59, tzinfo=UTC))
    night_mail = [m for m in customers_mail(sinks["email"]) if m.target.customer_id == "S1"]
    downgrade = night_mail[len([m for m in sent if m.target.customer_id == "S1"]) :]
    assert [m.message.created_at for m in downgrade] == [datetime(2026, 1, 7, 0, 10, tzinfo=UTC)]
    assert "Buses replace the trains." in downgrade[0].message.text
    assert "next update by 07:00 CET" in downgrade[0].message.text
    clock.set(datetime(2026, 1, 7, 6, 0, tzinfo=UTC))
    await run_until(engine, clock, clock.now())
    morning = [
        m
        for m in customers_mail(sinks["email"])[len(customers_mail(sinks["email"])) - 3 :]
        if m.target.customer_id == "S1"
    ]
    assert [m.message.created_at for m in morning] == [datetime(2026, 1, 7, 6, 0, tzinfo=UTC)]


def customers_mail(email: MemoryChannel) -> list[Any]:
    """The messages to customers (deliveries), not the notices to staff."""
    return [m for m in email.sent if (m.message.idempotency_key or "").startswith("delivery-")]


async def test_no_follow_up_without_an_owner_is_lost(database: Database) -> None:
    clock = FakeClock(START)
    await seed(database)
    async with database.session() as session, session.begin():
        await session.execute(
            update(Customer).where(Customer.id == "V1").values(account_manager=None)
        )
    engine = await Engine.create(settings(), database, clock, channels())
    await service.declare(
        database, clock, service.Declaration("Down", "critical", "Down.", components=["rail"])
    )
    await run_until(engine, clock, START)
    async with database.session() as session:
        owner = (await session.execute(select(Followup.owner))).scalar_one()
    assert owner == "maria"  # no account manager: the escalation chain's first link owns it


async def test_the_ladder_changes_cadence_and_channels_with_age(database: Database) -> None:
    clock = FakeClock(START)
    await seed(database)
    engine = await Engine.create(settings(), database, clock, channels())
    await service.declare(
        database, clock, service.Declaration("Slow", "minor", "Delays.", components=["rail"])
    )
    await run_until(engine, clock, START + timedelta(hours=1, minutes=30))
    async with database.session() as session:
        rounds = (
            await session.execute(
                select(Round.started_at, Round.channels, Round.next_due_at)
                .where(Round.state == "dispatched")
                .order_by(Round.number)
            )
        ).all()
    assert [((r[0] or START) - START, r[1]) for r in rounds] == [
        (timedelta(0), "push,email"),
        (timedelta(minutes=30), "push,email"),
        (timedelta(hours=1), "push,email,sms"),
        (timedelta(hours=1, minutes=20), "push,email,sms"),
    ]


async def test_a_rule_throttle_moves_sms_to_email(database: Database, tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        """
policies:
  fast:
    steps: [{after: 0m, every: 10m, channels: [sms]}]
rules:
  - name: sms-budget
    match: {customer: {tier: vip}}
    throttle: {max: 1, per: 1h, channels: [sms], fallback: email}
    continue: true
  - name: everything
    policy: fast
""",
        encoding="utf-8",
    )
    clock = FakeClock(START)
    await seed(database)
    async with database.session() as session, session.begin():
        await session.execute(
            insert(ContactPoint).values(
                customer_id="V1",
                kind="sms",
                address="+31612345678",
                opted_out=False,
                disabled=False,
                updated_at=START,
            )
        )
    sinks = channels()
    engine = await Engine.create(settings(rules_file), database, clock, sinks)
    await service.declare(
        database, clock, service.Declaration("Slow", "minor", "Delays.", components=["rail"])
    )
    await run_until(engine, clock, START + timedelta(minutes=25))
    assert len(sinks["sms"].sent) == 1  # the first round; then the budget is spent
    vip_mail = [m for m in sinks["email"].sent if m.target.address == "v1@example.org"]
    assert len(vip_mail) == 2  # the next two rounds, by email instead


async def test_a_rule_throttle_without_fallback_never_holds_back_the_apology(
    database: Database, tmp_path: Path
) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        """
policies:
  fast:
    steps: [{after: 0m, every: 10m, channels: [email]}]
rules:
  - name: email-cap
    match: {customer: {tier: vip}}
    throttle: {max: 1, per: 1h, channels: [email]}
    continue: true
  - name: everything
    policy: fast
""",
        encoding="utf-8",
    )
    clock = FakeClock(START)
    await seed(database)
    sinks = channels()
    engine = await Engine.create(settings(rules_file), database, clock, sinks)
    incident = await service.declare(
        database, clock, service.Declaration("Slow", "minor", "Delays.", components=["rail"])
    )
    await run_until(engine, clock, START + timedelta(minutes=25))
    clock.set(START + timedelta(minutes=26))
    await service.resolve(
        database, clock, incident.id, service.UpdateRequest("Fixed."), engine.escalation
    )
    await run_until(engine, clock, START + timedelta(minutes=30))
    vip = [m.message.text for m in sinks["email"].sent if m.target.address == "v1@example.org"]
    standard = [m for m in sinks["email"].sent if m.target.address == "s1@example.org"]
    assert len(vip) == 2 and "Fixed." in vip[-1]  # the first notice and the apology
    assert len(standard) == 4  # unthrottled: the first notice, two updates, the resolution


NOBODY_OWNS = """\
version: 1
policies:
  default:
    steps:
      - after: 0m
        every: 15m
        channels: [email]
rules:
  - name: standard-call
    match:
      customer:
        tier: standard
    followup:
      kind: call
      owner: account_manager
      deadline: 2h
    continue: true
  - name: everyone
    policy: default
"""


async def test_a_customer_whose_time_zone_is_unknown_here_does_not_stop_the_round(
    database: Database, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """And a forced follow-up that nobody can own is said, not silently skipped."""
    clock = FakeClock(START)
    await seed(database)
    async with database.session() as session, session.begin():
        await session.execute(
            update(Customer).where(Customer.id == "S1").values(timezone="Mars/Olympus")
        )
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(NOBODY_OWNS)
    sinks = channels()
    engine = await Engine.create(settings(rules_file), database, clock, sinks)
    await service.declare(
        database,
        clock,
        service.Declaration("Trains stopped", "major", "No trains.", components=["rail"]),
    )
    with caplog.at_level(logging.WARNING):
        await run_until(engine, clock, START)
    told = {m.target.address for m in sinks["email"].sent}
    assert {"v1@example.org", "b1@example.org", "s1@example.org"} <= told
    warnings = {r.getMessage() for r in caplog.records}
    assert "unknown time zone; the rules take UTC for this customer" in warnings
    assert "a forced follow-up has nobody to own it; it is kept unowned for an admin" in warnings


@pytest.mark.parametrize(
    ("customer", "told"),
    [("V1", ["ann", "maria"]), ("S1", ["maria"])],  # S1 has no account manager
)
async def test_an_escalation_chain_goes_past_a_link_that_names_nobody(
    database: Database, tmp_path: Path, customer: str, told: list[str]
) -> None:
    """``escalation: [account_manager, group:duty-managers]``: the account manager link was
    resolved without the customer, named nobody, and ended the chain: an overdue forced
    call was escalated to no one, not even the duty manager (doctrine 6)."""
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        f"""
policies:
  p:
    steps: [{{after: 0m, every: 30m, channels: [email]}}]
rules:
  - name: call
    match: {{customer: {{id: {customer}}}}}
    followup:
      kind: call
      owner: group:care
      deadline: 1h
      escalation: [account_manager, group:duty-managers]
      escalation_interval: 30m
    continue: true
  - name: everyone
    policy: p
""",
        encoding="utf-8",
    )
    clock = FakeClock(START)
    await seed(database)
    engine = await Engine.create(settings(rules_file), database, clock, channels())
    await service.declare(
        database, clock, service.Declaration("Down", "minor", "Down.", components=["rail"])
    )
    await run_until(engine, clock, START + timedelta(hours=3))
    async with database.session() as session:
        escalated = (
            await session.execute(
                select(FollowupEvent.staff, FollowupEvent.detail)
                .where(FollowupEvent.kind == "escalated")
                .order_by(FollowupEvent.id)
            )
        ).all()
        [task] = (await session.execute(select(Followup))).scalars().all()
    assert [staff for staff, _ in escalated] == told
    assert task.escalation_level == 2 and task.next_escalation_at is None
    if customer == "S1":
        assert (escalated[0][1] or "").endswith("; skipped account_manager (nobody)")


async def test_each_message_carries_its_step_s_urgency(database: Database) -> None:
    """``steps[].urgency`` reached no channel: the shipped policy's 1-hour step (urgency
    high) sent at the same priority as the first (normal)."""
    clock = FakeClock(START)
    await seed(database)
    sinks = channels()
    engine = await Engine.create(settings(), database, clock, sinks)
    await service.declare(
        database, clock, service.Declaration("Slow", "minor", "Delays.", components=["rail"])
    )
    await run_until(engine, clock, START + timedelta(hours=1, minutes=5))
    to_s1 = [m.message for m in sinks["email"].sent if m.target.address == "s1@example.org"]
    urgencies = [m.headers["X-Broadcaster-Urgency"] for m in to_s1]
    assert urgencies == ["normal", "normal", "high"]  # at 0:00, 0:30 and 1:00
