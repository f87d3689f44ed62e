"""A template an admin overrides that fails for some incidents, or renders nothing, fails
those deliveries with the template's name and line, and they are tried again; an admin's
fix reaches the running daemon without a restart (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

import broadcaster.compose.templates as templates_module
from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import Database, Delivery
from channels.memory import MemoryChannel
from tests.integration.test_broadcast_loop import START, add_customers, make_settings, run_until


def with_overrides(folder: Path) -> Settings:
    settings = make_settings()
    settings.messages.templates_dir = folder
    return settings


async def deliveries(database: Database) -> list[tuple[str, str, str | None]]:
    async with database.session() as session:
        rows = await session.execute(
            select(Delivery.customer_id, Delivery.state, Delivery.last_error).order_by(Delivery.id)
        )
        return [(c, s, e) for c, s, e in rows]


async def declared(database: Database, overrides: Path) -> tuple[FakeClock, MemoryChannel, Engine]:
    """One customer, an engine using the ``overrides`` folder, and a critical incident
    without regions declared (its first round not yet run)."""
    clock = FakeClock(START)
    await add_customers(database, clock, [("A1", ["component:payments"])])
    mail = MemoryChannel(name="mail")
    engine = await Engine.create(
        with_overrides(overrides), database, clock, {"mail": mail}, owner="test"
    )
    await service.declare(
        database,
        clock,
        service.Declaration("Payments down", "critical", "Failing.", components=["payments"]),
    )
    return clock, mail, engine


@pytest.fixture(autouse=True)
def look_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The override folder is looked at on every use, not every two seconds."""
    monkeypatch.setattr(templates_module, "RELOAD_CHECK", 0.0)


async def test_a_failing_template_is_named_and_its_fix_is_picked_up(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    subject = tmp_path / "en" / "first" / "email_subject.j2"
    subject.parent.mkdir(parents=True)
    subject.write_text("Update\n[{{ incident.regions[0] | upper }}] {{ incident.title }}\n")
    clock, mail, engine = await declared(database, tmp_path)  # no regions: the template fails
    await run_until(engine, clock, START)
    # The log says which message: delivery, incident, round, customer, channel.
    [failed] = [r for r in caplog.records if r.getMessage() == "message could not be made"]
    ids = {key: getattr(failed, key, None) for key in ("customer", "channel", "incident")}
    assert ids == {"customer": "A1", "channel": "mail", "incident": 1}
    assert isinstance(getattr(failed, "delivery", None), int)
    assert isinstance(getattr(failed, "round", None), int)
    [(customer, state, error)] = await deliveries(database)
    assert (customer, state) == ("A1", "pending")  # to be tried again
    # The override's own file, where the admin can mend it.
    assert error == f"template {subject} line 2: UndefinedError: list object has no element 0"
    assert mail.sent == []

    subject.write_text("[{{ incident.severity | upper }}] {{ incident.title }}\n")  # the fix
    clock.set(START + timedelta(seconds=10))  # the retry, after the 10 s backoff
    await engine.dispatch_all()
    assert [m.message.subject for m in mail.sent] == ["[CRITICAL] Payments down"]
    assert [state for _, state, _ in await deliveries(database)] == ["sent"]


async def test_a_template_that_renders_nothing_is_not_sent_empty(
    database: Database, tmp_path: Path
) -> None:
    text = tmp_path / "en" / "first" / "email_text.j2"
    text.parent.mkdir(parents=True)
    text.write_text('{% if incident.severity == "major" %}Trains are late.{% endif %}\n')
    clock, mail, engine = await declared(database, tmp_path)  # critical: the `if` is not met
    await run_until(engine, clock, START)
    assert mail.sent == []
    [(_, state, error)] = await deliveries(database)
    assert state == "pending"
    assert error == "template en/first/email_text.j2 rendered nothing"
