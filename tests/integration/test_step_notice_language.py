"""An escalation step's staff notice (the duty manager told as a critical incident enters a
step of its policy) is the ``incident_step`` template, in ``messages.default_language``, in
the form of the staff notification channel: Dutch for a Dutch configuration, English for an
English one, an SMS that fits; an admin's override of it is used, and one that fails to
render keeps the notice for a later attempt without holding up the others (SQLite and
PostgreSQL)."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from broadcaster.clock import FakeClock
from broadcaster.compose import templates
from broadcaster.config.settings import Settings
from broadcaster.engine import Engine
from broadcaster.followups.service import queue_notice
from broadcaster.incidents import service
from broadcaster.store import Database, StaffNotice
from channels.base import Message
from channels.memory import MemoryChannel
from channels.sms_segments import segments
from rules import EXAMPLE_RULES
from tests.integration.test_followup_escalation_fixes import STAFF, make_settings
from tests.integration.test_rules_followups import START, channels, run_until, seed

TWO_HOURS_IN = START + timedelta(hours=2, minutes=1)
"""Past the example critical policy's second step (at 2 h); both steps tell the duty
managers (maria), the first at the declaration."""


def configured(
    language: str, *, notify: str = "email", templates_dir: Path | None = None
) -> Settings:
    staff: dict[str, Any] = copy.deepcopy(STAFF)
    staff["notify_channel"] = notify
    staff["people"]["maria"]["phone"] = "+31600000004"
    messages: dict[str, Any] = {
        "default_language": language,
        "public_url": "https://status.example.org",
    }
    if templates_dir is not None:
        messages["templates_dir"] = str(templates_dir)
    return make_settings(EXAMPLE_RULES, staff, messages=messages)


async def declared(
    database: Database, config: Settings, until: datetime = TWO_HOURS_IN
) -> tuple[Engine, dict[str, MemoryChannel], FakeClock, int]:
    clock = FakeClock(START)
    await seed(database)
    sinks = channels()
    engine = await Engine.create(config, database, clock, sinks)
    incident = await service.declare(
        database,
        clock,
        service.Declaration("Trains stopped", "critical", "No trains.", components=["rail"]),
    )
    await run_until(engine, clock, until)
    return engine, sinks, clock, incident.id


def steps_told(channel: MemoryChannel) -> list[Message]:
    """The step notices the channel carried, in order."""
    return [m.message for m in channel.sent if m.message.idempotency_key.startswith("step-")]


async def test_a_step_notice_in_a_dutch_configuration_reads_dutch(database: Database) -> None:
    _, sinks, _, incident = await declared(database, configured("nl"))
    first, second = steps_told(sinks["email"])
    assert second.subject == "[Escalatie] Trains stopped (critical, 2 uur open)"
    assert second.text.startswith(
        f"Maria Jansen,\n\nStoring {incident}, Trains stopped, heeft status investigating en "
        "is al 2 uur open (sinds 10:00 UTC). Het escalatiebeleid vraagt nu uw aandacht.\n"
    )
    assert "Ernst: critical\n" in second.text
    assert "Escalatiestap: 2 van 2 van het beleid critical, vanaf 2 uur (sinds 12:00 UTC)\n" in (
        second.text
    )
    assert "Wat er van u verwacht wordt: bekijk de storing nu." in second.text
    assert f"De openbare storingspagina: https://status.example.org/incidents/{incident}\n" in (
        second.text
    )
    assert (
        f"De storing in de console: https://status.example.org/console/incidents/{incident}"
    ) in second.text
    assert second.html is not None and 'lang="nl"' in second.html
    assert "Escalatiestap: 1 van 2 van het beleid critical, vanaf het begin" in first.text
    assert "0 minuten open" in first.subject
    for message in (first, second):
        for english in ("Escalation", "attention", "Severity", "has been open", "policy"):
            assert english not in message.text + message.subject


async def test_a_step_notice_in_an_english_configuration_keeps_what_it_said(
    database: Database,
) -> None:
    _, sinks, _, incident = await declared(database, configured("en"))
    first, second = steps_told(sinks["email"])
    assert second.subject == "[Escalation] Trains stopped (critical, open 2 hours)"
    assert second.text.startswith(
        f"Maria Jansen,\n\nIncident {incident}, Trains stopped, is investigating and has been "
        "open for 2 hours (since 10:00 UTC). The escalation policy now asks for your attention.\n"
    )
    assert (
        "Escalation step: 2 of 2 of the critical policy, from 2 hours on (since 12:00 UTC)\n"
        in second.text
    )
    assert "What is expected of you: look into the incident now." in second.text
    assert f"https://status.example.org/incidents/{incident}\n" in second.text
    assert f"https://status.example.org/console/incidents/{incident}" in second.text
    assert "Escalation step: 1 of 2 of the critical policy, from the start" in first.text
    assert second.headers["X-Broadcaster-Link"].endswith(f"/incidents/{incident}")
    assert "List-Unsubscribe" not in second.headers  # staff have no unsubscribe link


async def test_a_step_notice_by_sms_is_dutch_and_fits(database: Database) -> None:
    _, sinks, _, incident = await declared(database, configured("nl", notify="sms"))
    [_, second] = steps_told(sinks["sms"])
    assert sinks["sms"].sent[-1].target.address == "+31600000004"
    assert second.subject == ""
    info = segments(second.text)
    assert info.encoding == "GSM-7" and info.segments <= 3, info
    assert second.text.startswith(
        f"[Escalatie] Storing {incident}, Trains stopped (critical, status investigating), "
        "al 2 uur open: stap 2 van 2 van het beleid critical vraagt uw aandacht."
    )
    assert f"Console: https://status.example.org/console/incidents/{incident}\n" in second.text
    assert second.text.endswith(f"https://status.example.org/incidents/{incident}")


async def test_a_step_notice_whose_step_is_not_known_still_goes_out(database: Database) -> None:
    """A notice queued without its round (as before rounds were noted on notices) says
    what it knows: the incident and how long it has been open, not a step."""
    engine, sinks, clock, incident = await declared(database, configured("en"), until=START)
    clock.advance(timedelta(minutes=95))
    async with database.session() as session, session.begin():
        queue_notice(
            session,
            key="step-no-round",
            kind="step",
            staff="maria",
            incident_id=incident,
            now=clock.now(),
        )
    assert await engine.sweep_followups() >= 1
    [notice] = [m for m in steps_told(sinks["email"]) if m.idempotency_key == "step-no-round"]
    assert "has been open for 1 hour and 35 minutes (since 10:00 UTC)." in notice.text
    assert "Escalation step" not in notice.text


async def test_an_override_is_used_and_one_that_fails_keeps_the_notice_for_later(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(templates, "RELOAD_CHECK", 0.0)  # a mended file is read at once
    subject = tmp_path / "en" / "incident_step" / "email_subject.j2"
    subject.parent.mkdir(parents=True)
    subject.write_text("STEP {{ step.number }}/{{ step.steps }}: {{ incident.title }}", "utf-8")
    broken = tmp_path / "en" / "incident_step" / "email_text.j2"
    broken.write_text("{{ customer.name }}\n{{ incident.regions[0] }}\n", "utf-8")
    config = configured("en", templates_dir=tmp_path)
    engine, sinks, clock, _ = await declared(database, config, until=START)
    # The follow-up the same round assigned went out; the step's notice did not, and waits.
    assigned = [m for m in sinks["email"].sent if m.message.idempotency_key.endswith("assigned")]
    assert [m.target.address for m in assigned] == ["ann@example.org"]
    assert steps_told(sinks["email"]) == []
    async with database.session() as session:
        query = select(StaffNotice).where(StaffNotice.kind == "step")
        step = (await session.execute(query)).scalar_one()
    assert step.state == "pending" and step.attempts == 1
    assert step.last_error is not None
    assert "en/incident_step/email_text.j2 line 2: UndefinedError" in step.last_error
    assert "trying again at" in step.last_error

    # Mended, it goes out at its next attempt (after the backoff), with the admin's subject.
    broken.unlink()
    clock.advance(timedelta(seconds=5))
    assert await engine.sweep_followups() == 1
    [notice] = steps_told(sinks["email"])
    assert notice.subject == "STEP 1/2: Trains stopped"
    assert "The escalation policy now asks for your attention." in notice.text
