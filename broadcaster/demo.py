"""The demo: the main job on the embedded default, played in accelerated time.

It runs the configuration it is given (``config.yaml`` by default: its schedule, its
channels, its escalation rules and its staff) on a fresh SQLite store in a temporary
folder. Every configured channel is a local sink that records what it is handed, at the
fake clock's time: the embedded default's channels are console sinks already, and a channel
pointed at a real provider is never called, so the demo sends nothing anywhere. It imports
sample customers, declares a critical incident and plays it through the very engine the
daemon runs: the first notice on every channel the rules' escalation step names, operator
updates, "no news yet" rounds at the cadence, the call the rules force an account manager
to make (one made, one missed and escalated), the resolution with its apology. It then
reports the timeline, what each customer received on which channel, and what the staff
were told and did.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

from sqlalchemy import select

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.customers.importer import import_customers
from broadcaster.engine import Engine
from broadcaster.followups import service as followups
from broadcaster.incidents import service
from broadcaster.store import Customer, Database, Followup, FollowupEvent
from broadcaster.store.migrate import upgrade_async
from channels.memory import MemoryChannel


@dataclass(frozen=True)
class Received:
    """One message as a channel was handed it."""

    when: datetime
    channel: str
    address: str
    subject: str
    text: str


@dataclass
class DemoReport:
    incident_id: int
    timeline: list[str] = field(default_factory=list)
    received: dict[str, list[Received]] = field(default_factory=dict)
    """What each customer got, by customer id, in the order it was sent."""
    customers: dict[str, str] = field(default_factory=dict)
    """Customer id -> "name (tier, language, time zone)", for every imported customer."""
    staff_notices: dict[str, list[Received]] = field(default_factory=dict)
    """What each member of staff was told, by staff id (a message to a staff member's own
    address on file, for a target named by their staff id)."""
    followups: list[str] = field(default_factory=list)
    """Each forced follow-up and what happened to it, line by line."""


INCIDENT = service.Declaration(
    title="Card payments failing",
    severity="critical",
    components=["payments"],
    regions=["nl-north"],
    message="Card payments in our web shop and app fail. We are investigating.",
    workaround="You can still pay by bank transfer.",
    author="demo operator",
)

SCRIPT: tuple[tuple[int, str, str | None, str | None, str], ...] = (
    # minutes after declaration, action, status, cause, message
    (
        22,
        "update",
        "identified",
        "An expired certificate at our card processor rejects payment requests.",
        "We found the cause and are working with our card processor to renew the certificate.",
    ),
    (
        50,
        "update",
        "monitoring",
        None,
        "A new certificate is in place and card payments are recovering. We are watching closely.",
    ),
    (
        70,
        "resolve",
        None,
        None,
        "Card payments work normally again. Payments that failed during the disruption were "
        "not charged; please try them again. We now renew certificates automatically, "
        "30 days before they expire.",
    ),
)

RESOLUTION = {
    "responsibility": "Keeping that certificate valid was our job, and we missed it.",
    "regret": "We are sorry: for over an hour you could not pay us when you needed to.",
    "remedy": "The certificate is renewed, and every payment since then has gone through.",
    "prevention": "Certificates now renew automatically 30 days before they expire, "
    "and we are alerted when one is within 14 days.",
    "compensation": "A EUR 5 credit on your next order, applied automatically.",
}

CALL_MADE = (
    35,
    "C001",
    "reached",
    "Called Anna: explained the workaround; her failed order is paid by bank transfer.",
)
"""Minutes after declaration, the customer whose account manager makes the call the rules
forced, its outcome and note. The other VIP's account manager never calls: the rules
remind them, and escalate to the duty manager at the deadline."""

PLAY_ON = timedelta(hours=3)
"""How long the demo lets the schedule run after the resolution: no customer message may
follow it, while the missed call is reminded and escalated."""


def _demo_settings(base: Settings, workdir: Path) -> Settings:
    settings = base.model_copy(deep=True)
    settings.database.url = f"sqlite+aiosqlite:///{workdir / 'demo.db'}"
    settings.database.pooler = "none"
    settings.database.direct_url = None
    settings.delivery = settings.delivery.model_copy(update={"processes": 1})  # a fake clock
    return settings


def _sinks(settings: Settings) -> dict[str, MemoryChannel]:
    """Every configured channel as the project's in-memory channel, which keeps what it is
    handed and calls nothing."""
    return {
        name: MemoryChannel(name=name, contact=channel.contact)
        for name, channel in settings.channels.items()
    }


async def play(
    base: Settings, *, start: datetime | None = None, workdir: Path | None = None
) -> DemoReport:
    """Run the whole demo and return what happened (printing is the CLI's job)."""
    with tempfile.TemporaryDirectory(prefix="broadcaster-demo-") as tmp:
        folder = workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        settings = _demo_settings(base, folder)
        await upgrade_async(settings.database.url)
        database = Database(settings.database.url)
        clock = FakeClock(start or datetime(2026, 1, 6, 8, 0, tzinfo=UTC))
        sinks = _sinks(settings)
        try:
            engine = await Engine.create(settings, database, clock, sinks)
        except BaseException:
            await database.dispose()
            raise
        try:
            sample = resources.files("broadcaster.demo_data").joinpath("customers.jsonl")
            with resources.as_file(sample) as path:
                await import_customers(database, path, clock=clock)
            incident = await service.declare(database, clock, INCIDENT)
            report = DemoReport(incident_id=incident.id)
            declared_at = clock.now()
            await _run_until(engine, clock, declared_at)
            actions = [(minutes, "script", index) for index, (minutes, *_) in enumerate(SCRIPT)]
            actions.append((CALL_MADE[0], "call", 0))
            for minutes, kind, index in sorted(actions):
                when = declared_at + timedelta(minutes=minutes)
                await _run_until(engine, clock, when)
                clock.set(when)
                if kind == "call":
                    await _make_call(engine, database, clock, incident.id)
                else:
                    await _operator(engine, database, clock, incident.id, SCRIPT[index])
                await _run_until(engine, clock, clock.now())
            await _run_until(engine, clock, clock.now() + PLAY_ON)
            await engine.dispatch_all()
            report.timeline = await _timeline(database, incident.id)
            report.followups = await _followups(database, incident.id)
            report.customers = await _customers(database)
        finally:
            await engine.aclose()
            await database.dispose()
        staff = settings.staff.people
        # Every message carries the (fake) time it was made, which is when it was handed over.
        sent = [
            (item.message.created_at or clock.now(), sink.name, item)
            for sink in sinks.values()
            for item in sink.sent
        ]
        for when, channel, item in sorted(sent, key=lambda entry: entry[0]):
            target, message = item.target, item.message
            who = target.customer_id  # a staff notice's is the staff id
            person = staff.get(who)
            told = person is not None and target.address in (person.email, person.phone)
            into = report.staff_notices if told else report.received
            received = Received(when, channel, target.address, message.subject, message.text)
            into.setdefault(who, []).append(received)
        return report


async def _operator(
    engine: Engine,
    database: Database,
    clock: FakeClock,
    incident_id: int,
    step: tuple[int, str, str | None, str | None, str],
) -> None:
    _, action, status, cause, message = step
    request = service.UpdateRequest(
        message=message,
        status=status,
        cause_kind="known" if cause else None,
        cause=cause,
        author="demo operator",
    )
    if action == "resolve":
        request = dataclasses.replace(
            request,
            responsibility=RESOLUTION["responsibility"],
            regret=RESOLUTION["regret"],
            remedy=RESOLUTION["remedy"],
            prevention=RESOLUTION["prevention"],
            compensation=RESOLUTION["compensation"],
        )
        await service.resolve(database, clock, incident_id, request, engine.escalation)
    else:
        await service.post_update(database, clock, incident_id, request)


async def _make_call(
    engine: Engine, database: Database, clock: FakeClock, incident_id: int
) -> None:
    """The account manager of :data:`CALL_MADE`'s customer makes the forced call, where the
    configuration's rules forced one (without rules, or with others, there may be none)."""
    _, customer, outcome, note = CALL_MADE
    async with database.session() as session:
        task = (
            (
                await session.execute(
                    select(Followup)
                    .where(Followup.incident_id == incident_id, Followup.customer_id == customer)
                    .order_by(Followup.id)
                )
            )
            .scalars()
            .first()
        )
    if task is None:
        return
    owner = task.owner
    await followups.claim(database, clock, task.id, owner, engine.directory)
    await followups.done(database, clock, task.id, owner, outcome, note)


async def _run_until(engine: Engine, clock: FakeClock, until: datetime) -> None:
    """Advance the fake clock to each due round, and by the follow-up sweep's interval in
    between, up to ``until``, doing at each step what the daemon's jobs do."""
    sweep = engine.settings.rules.followup_sweep
    while True:
        await engine.process_due_rounds()
        await engine.dispatch_all()
        await engine.sweep_followups()
        wake = await engine.next_wakeup()
        step = clock.now() + sweep
        if wake is None or wake <= clock.now():  # work due now was done: move on
            wake = step
        wake = min(wake, step)
        if wake > until:
            return
        clock.set(wake)


async def _timeline(database: Database, incident_id: int) -> list[str]:
    view = await service.show(database, incident_id)
    lines = [f"{u.created_at:%H:%M}Z  {u.kind:<9} {u.status:<13} {u.message}" for u in view.updates]
    lines.append("")
    lines += [
        f"round {r.number:>2} {r.kind:<10} at {(r.started_at or r.due_at):%H:%M}Z"
        + (f", promised next by {r.next_due_at:%H:%M}Z" if r.next_due_at else ", final")
        + (f" ({r.channels.replace(',', ', ')})" if r.channels else "")
        for r in view.rounds
        if r.state != "cancelled"
    ]
    return lines


async def _followups(database: Database, incident_id: int) -> list[str]:
    async with database.session() as session:
        tasks = (
            await session.execute(
                select(Followup, Customer.name)
                .join(Customer, Customer.id == Followup.customer_id)
                .where(Followup.incident_id == incident_id)
                .order_by(Followup.id)
            )
        ).all()
        events = (
            await session.execute(
                select(FollowupEvent)
                .where(FollowupEvent.followup_id.in_([task.id for task, _ in tasks]))
                .order_by(FollowupEvent.at, FollowupEvent.id)
            )
        ).scalars()
        by_task: dict[int, list[FollowupEvent]] = {}
        for event in events:
            by_task.setdefault(event.followup_id, []).append(event)
    lines: list[str] = []
    for task, name in tasks:
        lines.append(
            f"follow-up {task.id}: {task.kind} {name} ({task.customer_id}), rule {task.rule}, "
            f"owner {task.owner}, by {task.deadline_at:%H:%M}Z: {task.state}"
        )
        for event in by_task.get(task.id, []):
            who = f" {event.staff}" if event.staff else ""
            detail = f": {event.detail}" if event.detail else ""
            lines.append(f"  {event.at:%H:%M}Z  {event.kind}{who}{detail}")
    return lines


async def _customers(database: Database) -> dict[str, str]:
    async with database.session() as session:
        rows = await session.execute(select(Customer).order_by(Customer.id))
        return {c.id: f"{c.name} ({c.tier}, {c.language}, {c.timezone})" for c in rows.scalars()}
