"""The demo: the main job on the embedded default, played in accelerated time.

It starts a local SMTP server, imports sample customers into a fresh SQLite store,
declares an incident and plays it on a fake clock (updates, "no news" rounds at the
cadence, the resolution) through the very engine the daemon runs, then reports the
timeline and what each customer received.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from importlib import resources
from pathlib import Path

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.customers.importer import import_customers
from broadcaster.devsmtp import SmtpSink
from broadcaster.dispatch.channels import build_channels
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import Database
from broadcaster.store.migrate import upgrade_async
from channels.email import EmailSettings


@dataclass(frozen=True)
class Step:
    at: timedelta
    describe: str
    act: Callable[[Database, FakeClock, int], object]


@dataclass
class Received:
    when: datetime
    subject: str
    text: str


@dataclass
class DemoReport:
    incident_id: int
    timeline: list[str] = field(default_factory=list)
    mail: dict[str, list[Received]] = field(default_factory=dict)
    customers: dict[str, str] = field(default_factory=dict)
    """address -> "name (language, time zone)" for every imported customer with email."""


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
    "remedy": "The certificate is renewed and every payment since 10:10 went through.",
    "prevention": "Certificates now renew automatically 30 days before they expire, "
    "and we are alerted when one is within 14 days.",
    "compensation": "A EUR 5 credit on your next order, applied automatically.",
}


def _demo_settings(base: Settings, workdir: Path, smtp_port: int) -> Settings:
    settings = base.model_copy(deep=True)
    settings.database.url = f"sqlite+aiosqlite:///{workdir / 'demo.db'}"
    email = EmailSettings.model_validate(
        {
            "type": "email",
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "none",
            "from": f"{settings.messages.organisation} <service@example.org>",
            "pool_size": 2,
        }
    )
    settings.channels = {"email": email}
    settings.delivery = settings.delivery.model_copy(
        update={
            "channels": ["email"],
            "failover": [],
            "throttle": {},
            "rate_limits": {},
            "processes": 1,  # one process on a fake clock
        }
    )
    # The demo plays the basic loop; the rules and follow-ups have their own tests.
    settings.rules = settings.rules.model_copy(update={"path": None})
    settings.staff = settings.staff.model_copy(update={"notify_channel": None})
    return settings


async def play(
    base: Settings, *, start: datetime | None = None, workdir: Path | None = None
) -> DemoReport:
    """Run the whole demo and return what happened (printing is the CLI's job)."""
    with tempfile.TemporaryDirectory(prefix="broadcaster-demo-") as tmp, SmtpSink() as sink:
        folder = workdir or Path(tmp)
        settings = _demo_settings(base, folder, sink.port)
        await upgrade_async(settings.database.url)
        database = Database(settings.database.url)
        clock = FakeClock(start or datetime(2026, 1, 6, 8, 0, tzinfo=UTC))
        engine = await Engine.create(settings, database, clock, build_channels(settings))
        try:
            sample = resources.files("broadcaster.demo_data").joinpath("customers.jsonl")
            with resources.as_file(sample) as path:
                await import_customers(database, path, clock=clock)
            report = DemoReport(incident_id=0)
            incident = await service.declare(
                database,
                clock,
                service.Declaration(
                    title="Card payments failing",
                    severity="critical",
                    components=["payments"],
                    regions=["nl-north"],
                    message="Card payments in our web shop and app fail. We are investigating.",
                    workaround="You can still pay by bank transfer.",
                    author="demo operator",
                ),
            )
            report.incident_id = incident.id
            declared_at = clock.now()
            await _run_until(engine, clock, declared_at)
            for minutes, action, status, cause, message in SCRIPT:
                when = declared_at + timedelta(minutes=minutes)
                await _run_until(engine, clock, when)
                clock.set(when)
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
                if action == "resolve":
                    await service.resolve(database, clock, incident.id, request)
                else:
                    await service.post_update(database, clock, incident.id, request)
                await _run_until(engine, clock, clock.now())
            # Let the schedule run on: nothing more may be sent after the resolution.
            await _run_until(engine, clock, clock.now() + timedelta(hours=3))
            await engine.dispatch_all()
            report.timeline = await _timeline(database, incident.id)
        finally:
            await engine.aclose()
            await database.dispose()
        for mail in sink.messages:
            message_obj = mail.message
            to = str(message_obj["To"])
            report.mail.setdefault(to, []).append(_received(message_obj))
        return report


async def _run_until(engine: Engine, clock: FakeClock, until: datetime) -> None:
    """Advance the fake clock from due time to due time up to ``until``, working at each."""
    while True:
        await engine.process_due_rounds()
        await engine.dispatch_all()
        wake = await engine.next_wakeup()
        if wake is None or wake > until:
            return
        if wake > clock.now():
            clock.set(wake)


def _received(message: EmailMessage) -> Received:
    body = message.get_body(preferencelist=("plain",))
    text = body.get_content() if body is not None else ""
    return Received(
        when=parsedate_to_datetime(str(message["Date"])),
        subject=str(message["Subject"]),
        text=str(text),
    )


async def _timeline(database: Database, incident_id: int) -> list[str]:
    view = await service.show(database, incident_id)
    lines = [f"{u.created_at:%H:%M}Z  {u.kind:<9} {u.status:<13} {u.message}" for u in view.updates]
    lines.append("")
    lines += [
        f"round {r.number:>2} {r.kind:<10} at {(r.started_at or r.due_at):%H:%M}Z"
        + (f", promised next by {r.next_due_at:%H:%M}Z" if r.next_due_at else ", final")
        for r in view.rounds
        if r.state != "cancelled"
    ]
    return lines
