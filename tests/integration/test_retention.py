"""Retention (``retention.messages``): the deliveries, delivery history and staff notices of
incidents closed long enough ago are purged, in batches; everything else is kept, and so is
whatever the rules still count in a customer's history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from broadcaster.access.credentials import Principal
from broadcaster.cli.main import app as cli
from broadcaster.clock import FakeClock
from broadcaster.config import ConfigError, load_settings
from broadcaster.config.settings import Settings
from broadcaster.daemon import Daemon
from broadcaster.incidents import retention
from broadcaster.reports import incident_report
from broadcaster.store import (
    AuditEntry,
    Customer,
    Database,
    Delivery,
    DeliveryEvent,
    Followup,
    Incident,
    IncidentUpdate,
    Round,
    StaffNotice,
)
from broadcaster.store.migrate import upgrade_async
from channels.memory import MemoryChannel
from rules.loader import load_rules
from tests.api.support import api_client
from tests.integration.test_console import START, Console, build, signed_in

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
KEEP = timedelta(days=180)
WINDOW = timedelta(days=30)
BY = Principal("cli", "tester", "admin")


async def _customers(database: Database, count: int) -> None:
    async with database.session() as session, session.begin():
        session.add_all(
            Customer(id=f"c{i}", name=f"C {i}", created_at=NOW, updated_at=NOW)
            for i in range(count)
        )


async def _incident(
    database: Database,
    *,
    declared: datetime,
    closed: datetime | None,
    status: str = "closed",
    customers: int = 4,
    rounds: int = 2,
    last_state: str = "sent",
    notice_state: str = "sent",
) -> int:
    """An incident with ``rounds`` rounds of a delivery per customer (each with a history
    line; the second round's first delivery failed over from the first round's; the last
    one in ``last_state``), a staff notice, a follow-up and its timeline."""
    async with database.session() as session, session.begin():
        incident = Incident(
            title="Line 1",
            severity="major",
            status=status,
            created_at=declared,
            updated_at=closed or declared,
            closed_at=closed,
            rounds_made=rounds,
        )
        session.add(incident)
        await session.flush()
        session.add(
            IncidentUpdate(
                incident_id=incident.id,
                kind="declared",
                status="investigating",
                created_at=declared,
            )
        )
        first: Delivery | None = None
        for number in range(1, rounds + 1):
            round_ = Round(
                incident_id=incident.id,
                number=number,
                kind="first" if number == 1 else "update",
                state="dispatched",
                due_at=declared,
            )
            session.add(round_)
            await session.flush()
            for c in range(customers):
                delivery = Delivery(
                    round_id=round_.id,
                    incident_id=incident.id,
                    customer_id=f"c{c}",
                    channel="mail",
                    address=f"c{c}@example.org",
                    state=last_state if (number, c) == (rounds, customers - 1) else "sent",
                    next_attempt_at=declared,
                    created_at=declared,
                    failover_from_id=first.id if first is not None and c == 0 else None,
                )
                session.add(delivery)
                await session.flush()
                first = first or delivery
                session.add(DeliveryEvent(delivery_id=delivery.id, at=declared, state="sent"))
        session.add(
            StaffNotice(
                key=f"step-{incident.id}",
                kind="step",
                staff="ann",
                incident_id=incident.id,
                state=notice_state,
                next_attempt_at=declared,
                created_at=declared,
            )
        )
        session.add(
            Followup(
                incident_id=incident.id,
                customer_id="c0",
                rule="vip-call",
                kind="call",
                owner="ann",
                state="done",
                deadline_at=declared + timedelta(hours=2),
                created_at=declared,
            )
        )
        return incident.id


def queued_sms(round_id: int, incident_id: int) -> Delivery:
    """A pending SMS to customer c0 in that round (a late failover, say)."""
    return Delivery(
        round_id=round_id,
        incident_id=incident_id,
        customer_id="c0",
        channel="sms",
        address="+31600000000",
        state="pending",
        next_attempt_at=NOW,
        created_at=NOW,
    )


async def _left(database: Database, incident_id: int) -> dict[str, int]:
    """Rows of the incident still in each table."""
    async with database.session() as session:

        async def count(model: Any, *where: Any) -> int:
            query = select(func.count()).select_from(model).where(*where)
            return int((await session.execute(query)).scalar_one())

        return {
            "deliveries": await count(Delivery, Delivery.incident_id == incident_id),
            "events": await count(
                DeliveryEvent,
                DeliveryEvent.delivery_id.in_(
                    select(Delivery.id).where(Delivery.incident_id == incident_id)
                ),
            ),
            "notices": await count(StaffNotice, StaffNotice.incident_id == incident_id),
            "rounds": await count(Round, Round.incident_id == incident_id),
            "followups": await count(Followup, Followup.incident_id == incident_id),
            "timeline": await count(IncidentUpdate, IncidentUpdate.incident_id == incident_id),
        }


async def _purged_at(database: Database, incident_id: int) -> datetime | None:
    async with database.session() as session:
        incident = await session.get(Incident, incident_id)
        assert incident is not None
        return incident.messages_purged_at


FULL = {"deliveries": 8, "events": 8, "notices": 1, "rounds": 2, "followups": 1, "timeline": 1}
PURGED = {**FULL, "deliveries": 0, "events": 0, "notices": 0}


async def test_only_incidents_closed_long_enough_ago_lose_their_messages(
    database: Database,
) -> None:
    await _customers(database, 4)
    old = await _incident(database, declared=NOW - timedelta(days=201), closed=NOW - KEEP)
    recent = await _incident(
        database, declared=NOW - timedelta(days=200), closed=NOW - KEEP + timedelta(minutes=1)
    )
    resolved = await _incident(
        database, declared=NOW - timedelta(days=400), closed=None, status="resolved"
    )
    ongoing = await _incident(
        database, declared=NOW - timedelta(days=400), closed=None, status="monitoring"
    )

    purged = await retention.purge(database, NOW, KEEP, WINDOW, by=BY)

    assert (purged.incidents, purged.deliveries, purged.events, purged.notices) == ([old], 8, 8, 1)
    assert await _left(database, old) == PURGED  # rounds, follow-ups and timeline stay
    assert await _purged_at(database, old) == NOW
    for kept in (recent, resolved, ongoing):
        assert await _left(database, kept) == FULL
        assert await _purged_at(database, kept) is None
    # Done once: the incident is not looked at again.
    again = await retention.purge(database, NOW + timedelta(days=1), KEEP, WINDOW, by=BY)
    assert again.incidents == [recent]
    # Each purge is in the audit log, with who did it and what went.
    audits = await _audits(database)
    assert [(a.actor, a.target, a.source, a.detail) for a in audits] == [
        ("cli:tester", f"incident:{i}", "cli", {"deliveries": 8, "events": 8, "notices": 1})
        for i in (old, recent)
    ]


async def _audits(database: Database) -> list[AuditEntry]:
    async with database.session() as session:
        query = (
            select(AuditEntry).where(AuditEntry.action == "messages.purge").order_by(AuditEntry.id)
        )
        return list((await session.execute(query)).scalars())


@pytest.mark.parametrize(
    ("last_state", "notice_state"),
    [("pending", "sent"), ("sending", "sent"), ("sent", "pending"), ("sent", "sending")],
)
async def test_an_incident_with_a_message_still_queued_waits_for_it(
    database: Database, last_state: str, notice_state: str
) -> None:
    """A retry or a failover still to be sent (or a staff notice) is not deleted from
    under its worker: the incident waits, untouched, until it has gone."""
    await _customers(database, 4)
    busy = await _incident(
        database,
        declared=NOW - timedelta(days=400),
        closed=NOW - KEEP,
        last_state=last_state,
        notice_state=notice_state,
    )
    waiting = await retention.purge(database, NOW, KEEP, WINDOW, by=BY)
    assert (waiting.incidents, waiting.waiting) == ([], [busy])
    assert str(waiting).endswith(f"left for later, with messages still queued: #{busy}")
    assert await _left(database, busy) == FULL
    async with database.session() as session, session.begin():
        incident = await session.get(Incident, busy)
        assert incident is not None and incident.delivery_counts is None
        await session.execute(update(Delivery).values(state="sent"))
        await session.execute(update(StaffNotice).values(state="sent"))
    done = await retention.purge(database, NOW, KEEP, WINDOW, by=BY)
    assert (done.incidents, done.waiting) == ([busy], [])
    assert await _left(database, busy) == PURGED


async def test_a_message_queued_after_the_counts_were_kept_is_left_and_the_incident_not_marked(
    database: Database,
) -> None:
    await _customers(database, 4)
    old = await _incident(database, declared=NOW - timedelta(days=400), closed=NOW - KEEP)
    # Stopped after the counts were kept and the first batch went.
    asked = 0

    def one_batch() -> bool:
        nonlocal asked
        asked += 1
        return asked <= 2

    await retention.purge(database, NOW, KEEP, WINDOW, by=BY, batch=2, keep_going=one_batch)
    assert (await _left(database, old))["deliveries"] == 6
    async with database.session() as session, session.begin():  # a late failover
        round_id = (
            await session.execute(select(Round.id).where(Round.incident_id == old).limit(1))
        ).scalar_one()
        session.add(queued_sms(round_id, old))
    left = await retention.purge(database, NOW, KEEP, WINDOW, by=BY)
    assert (left.incidents, left.waiting) == ([], [old])
    assert (await _left(database, old))["deliveries"] == 1  # only the queued one
    assert await _purged_at(database, old) is None
    async with database.session() as session, session.begin():
        await session.execute(update(Delivery).values(state="sent"))
    assert (await retention.purge(database, NOW, KEEP, WINDOW, by=BY)).incidents == [old]
    assert await _left(database, old) == PURGED
    # The counts kept before the first delivery went, not the late one's.
    report = await incident_report(database, old)
    assert report.by_channel == {"mail": {"sent": 8}}


async def test_the_report_shows_the_counts_kept_before_the_purge(database: Database) -> None:
    await _customers(database, 4)
    old = await _incident(database, declared=NOW - timedelta(days=400), closed=NOW - KEEP)
    before = await incident_report(database, old)
    await retention.purge(database, NOW, KEEP, WINDOW, by=BY)
    after = await incident_report(database, old)
    assert after.per_round == before.per_round and len(after.per_round) == 2
    assert after.by_channel == before.by_channel == {"mail": {"sent": 8}}


def test_the_look_back_covers_the_rules_history_and_every_throttle() -> None:
    settings = Settings.model_validate(
        {
            "channels": {"mail": {"type": "console"}, "sms": {"type": "console"}},
            "delivery": {
                "channels": ["mail"],
                "throttle": {"sms": {"max": 4, "per": "40d", "fallback": "mail"}},
            },
        }
    )
    assert retention.lookback(settings, None) == timedelta(days=40)
    ruleset = load_rules(
        RULES_LOOKING_BACK, "rules.yaml", channels={"mail", "sms"}, staff=set(), groups=set()
    )
    assert retention.lookback(settings, ruleset) == timedelta(days=90)
    assert retention.history_window(settings, ruleset) == timedelta(days=60)


RULES_LOOKING_BACK = """\
version: 1
rules:
  - name: often-hit
    match:
      customer:
        incidents: {within: 60d, gte: 3}
    continue: true
  - name: weekly-cap
    throttle: {max: 10, per: 90d}
"""


async def test_what_the_rules_history_still_counts_is_kept(database: Database) -> None:
    """Closed 200 days ago: a rule counting a customer's incidents over a year still
    reads its deliveries."""
    await _customers(database, 4)
    counted = await _incident(
        database, declared=NOW - timedelta(days=300), closed=NOW - timedelta(days=200)
    )
    year = await retention.purge(database, NOW, KEEP, timedelta(days=365), by=BY)
    assert year.incidents == []
    assert await _left(database, counted) == FULL
    quarter = await retention.purge(database, NOW, KEEP, timedelta(days=90), by=BY)
    assert quarter.incidents == [counted]
    assert await _left(database, counted) == PURGED


async def test_batches_smaller_than_a_round_take_it_all(database: Database) -> None:
    await _customers(database, 10)
    old = await _incident(
        database, declared=NOW - timedelta(days=400), closed=NOW - KEEP, customers=10, rounds=3
    )
    purged = await retention.purge(database, NOW, KEEP, WINDOW, by=BY, batch=3)
    assert (purged.deliveries, purged.events) == (30, 30)
    assert (await _left(database, old))["deliveries"] == 0


async def test_a_purge_told_to_stop_stops_between_batches_and_the_next_carries_on(
    database: Database,
) -> None:
    """A daemon stopping (or no longer leading) does not finish a backlog first."""
    await _customers(database, 10)
    old = await _incident(
        database, declared=NOW - timedelta(days=400), closed=NOW - KEEP, customers=10
    )
    asked = 0

    def two_batches() -> bool:
        nonlocal asked
        asked += 1
        return asked <= 3  # the incident, then two batches

    stopped = await retention.purge(
        database, NOW, KEEP, WINDOW, by=BY, batch=4, keep_going=two_batches
    )
    assert (stopped.incidents, stopped.waiting) == ([], [])  # not finished, not marked
    assert (await _left(database, old))["deliveries"] == 12
    assert await _purged_at(database, old) is None
    rest = await retention.purge(database, NOW, KEEP, WINDOW, by=BY, batch=4)
    assert (rest.incidents, rest.deliveries, rest.notices) == ([old], 12, 1)
    assert await _left(database, old) == {**PURGED, "rounds": 2}


async def test_a_dry_run_counts_and_deletes_nothing(database: Database) -> None:
    await _customers(database, 4)
    old = await _incident(database, declared=NOW - timedelta(days=400), closed=NOW - KEEP)
    counted = await retention.purge(database, NOW, KEEP, WINDOW, by=BY, dry_run=True)
    assert (counted.incidents, counted.deliveries, counted.events, counted.notices) == (
        [old],
        8,
        8,
        1,
    )
    assert await _left(database, old) == FULL
    assert await _purged_at(database, old) is None
    assert str(counted) == (
        f"1 incident(s) (#{old}): 8 deliveries, 8 delivery events, 1 staff notices"
    )


def test_the_setting_is_off_by_default_and_at_least_a_day() -> None:
    assert Settings().retention.messages is None
    assert Settings.model_validate({"retention": {"messages": "180d"}}).retention.messages == KEEP


@pytest.mark.parametrize(
    ("yaml", "key", "says"),
    [
        ("retention:\n  messages: 12h\n", "retention.messages", "must be at least 1d"),
        (
            "retention:\n  messages: 180d\nrules:\n  history_window: 0s\n",
            "rules.history_window",
            "0s counts a customer's whole history, which retention.messages deletes",
        ),
    ],
)
def test_a_bad_retention_is_refused_with_where(
    tmp_path: Path, yaml: str, key: str, says: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml)
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    [problem] = [p for p in refused.value.problems if key in p]
    assert says in problem


def _config(tmp_path: Path, retention_lines: str = "") -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"database:\n  url: sqlite+aiosqlite:///{tmp_path / 'store.db'}\n"
        "delivery:\n  channels: [mail]\n"
        "channels:\n  mail: {type: console}\n" + retention_lines
    )
    return config


def test_the_cli_purges_on_demand_and_audits_it(tmp_path: Path) -> None:
    config = _config(tmp_path)
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    now = datetime.now(UTC)

    async def prepare() -> int:
        await upgrade_async(url)
        database = Database(url)
        try:
            await _customers(database, 4)
            return await _incident(
                database, declared=now - timedelta(days=400), closed=now - timedelta(days=200)
            )
        finally:
            await database.dispose()

    old = asyncio.run(prepare())
    runner = CliRunner()
    unset = runner.invoke(cli, ["db", "purge", "-c", str(config)])
    assert unset.exit_code == 2
    assert "set retention.messages in the configuration, or give --older-than" in unset.output
    short = runner.invoke(cli, ["db", "purge", "--older-than", "2h", "-c", str(config)])
    assert short.exit_code == 2 and "--older-than: must be at least 1d" in short.output

    dry = runner.invoke(
        cli, ["db", "purge", "--older-than", "180d", "--dry-run", "-c", str(config)]
    )
    assert dry.exit_code == 0, dry.output
    assert (
        "would purge the messages of incidents closed more than 180d ago (and more than 30d, "
        "the longest the rules and throttles look back)"
    ) in dry.output
    assert f"1 incident(s) (#{old}): 8 deliveries, 8 delivery events, 1 staff notices" in (
        dry.output
    )
    done = runner.invoke(cli, ["db", "purge", "--older-than", "180d", "-c", str(config)])
    assert done.exit_code == 0, done.output
    assert "purged the messages of incidents closed more than 180d ago" in done.output

    async def after() -> tuple[dict[str, int], list[AuditEntry]]:
        database = Database(url)
        try:
            async with database.session() as session:
                audits = list(
                    (
                        await session.execute(
                            select(AuditEntry).where(AuditEntry.action == "messages.purge")
                        )
                    ).scalars()
                )
            return await _left(database, old), audits
        finally:
            await database.dispose()

    left, audits = asyncio.run(after())
    assert left == PURGED
    # The dry run is not audited; the purge is, as done from the CLI by its login.
    assert [(a.actor.startswith("cli:"), a.target, a.source) for a in audits] == [
        (True, f"incident:{old}", "cli")
    ]
    assert audits[0].detail == {"deliveries": 8, "events": 8, "notices": 1}
    shown = runner.invoke(cli, ["incident", "show", str(old), "-c", str(config)])
    assert shown.exit_code == 0, shown.output
    assert "under retention.messages (deliveries, their history and staff notices)" in shown.output
    assert "[sent 4]" in shown.output  # each round's counts, as kept before the purge
    assert "no deliveries" not in shown.output


async def test_the_leading_daemon_purges_every_interval(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await upgrade_async(url)
    database = Database(url)
    try:
        await _customers(database, 4)
        old = await _incident(database, declared=NOW - timedelta(days=400), closed=NOW - KEEP)
        kept = await _incident(database, declared=NOW - timedelta(days=30), closed=NOW)
        settings = Settings.model_validate(
            {
                "database": {"url": url},
                "delivery": {"channels": ["mail"], "workers": 1},
                "channels": {"mail": {"type": "console"}},
                "http": {"enabled": False},
                "retention": {"messages": "180d", "interval": "100ms"},
            }
        )
        daemon = Daemon(
            settings, clock=FakeClock(NOW), channels={"mail": MemoryChannel(name="mail")}
        )
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            await asyncio.wait_for(daemon.ready.wait(), 10)
            for _ in range(100):
                if await _purged_at(database, old) is not None:
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
        assert await _purged_at(database, old) == NOW
        assert await _left(database, old) == PURGED
        assert await _left(database, kept) == FULL
        [audited] = await _audits(database)
        assert audited.actor.startswith("daemon:") and audited.target == f"incident:{old}"
    finally:
        await database.dispose()


async def test_the_api_says_when_the_messages_went_and_shows_the_kept_counts(
    database: Database,
) -> None:
    await _customers(database, 4)
    old = await _incident(database, declared=NOW - timedelta(days=400), closed=NOW - KEEP)
    async with api_client(database) as api:
        before = (await api.call("GET", f"/api/v1/incidents/{old}")).json()
        assert before["messages_purged_at"] is None
        assert before["deliveries_by_channel"] == {"mail": {"sent": 8}}
        await retention.purge(database, NOW, KEEP, WINDOW, by=BY)
        after = (await api.call("GET", f"/api/v1/incidents/{old}")).json()
        assert after["messages_purged_at"] is not None
        assert datetime.fromisoformat(after["messages_purged_at"]) == NOW
        # The counts kept before the purge; rounds and follow-ups stay.
        assert after["deliveries_by_channel"] == {"mail": {"sent": 8}}
        assert [r["deliveries"] for r in after["rounds"]] == [
            r["deliveries"] for r in before["rounds"]
        ]
        assert len(after["rounds"]) == 2 and len(after["followups"]) == 1
        counts = await api.call("GET", f"/api/v1/deliveries/counts?incident_id={old}")
        assert counts.json() == {"mail": {"sent": 8}}


@pytest.fixture
async def app(database: Database, tmp_path: Path) -> AsyncIterator[Console]:
    built = await build(database, tmp_path, "http://127.0.0.1:8080")
    async with built.http:
        yield built
    await built.engine.aclose()


async def test_the_console_shows_the_kept_counts_and_says_the_messages_went(app: Console) -> None:
    database = app.state.database
    await _customers(database, 4)
    old = await _incident(database, declared=START - timedelta(days=400), closed=START - KEEP)
    await retention.purge(database, START, KEEP, WINDOW, by=BY)
    await signed_in(app.http, "ann")
    page = await app.http.get(f"/console/incidents/{old}")
    assert page.status_code == 200
    assert 'id="messages-purged"' in page.text
    assert "no longer kept" in page.text
    assert 'data-channel="mail" data-sent="8" data-total="8"' in page.text  # the kept counts
    listed = await app.http.get("/console/incidents?status=all")
    assert listed.status_code == 200 and f"/console/incidents/{old}" in listed.text
