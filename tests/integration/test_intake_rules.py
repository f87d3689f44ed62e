"""Resolutions reported by feeds and webhooks go through the rules, like staff's.

Before, intake called the service's resolve without the engine's escalation: no
compensation, and no word of the apology parts the rules require of a severe incident.
A feed cannot be refused like an operator, so the incident resolves anyway, with the
compensation, and the missing parts are logged and named in the result.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.escalation.holder import RulesHolder
from broadcaster.escalation.plan import Escalation
from broadcaster.followups.directory import Directory
from broadcaster.incidents import service
from broadcaster.intake import signed_webhook
from broadcaster.intake.apply import Applied, apply_event, resolve_vanished
from broadcaster.intake.events import IncidentEvent
from broadcaster.intake.watch import FeedSettings, start_watchers
from broadcaster.store import Database
from broadcaster.web.app import create_app
from broadcaster.web.state import WebState

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
SECRET = "whsec-for-rules-tests"

RULES = """\
version: 1
policies:
  default:
    steps:
      - after: 0m
        every: 30m
        channels: [console]
rules:
  - name: major-apology
    match:
      incident:
        severity: {gte: major}
    require_for_resolution: [cause, remedy, prevention]
    compensation: {kind: credit, amount: 5.00, currency: EUR}
    continue: true
  - name: default-policy
    policy: default
"""

CREDIT = [{"kind": "credit", "amount": "5.00", "currency": "EUR", "rule": "major-apology"}]
"""The rules' compensation, stored as data: each customer's message says it in their
language."""


@pytest.fixture
def config(tmp_path: Path) -> Settings:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    return Settings.model_validate(
        {"rules": {"path": str(path)}, "webhook_secrets": {"ops": SECRET}}
    )


@pytest.fixture
def escalation(config: Settings) -> Escalation:
    holder = RulesHolder(config)
    holder.load()
    return Escalation(config, holder, Directory(config.staff))


def event(version: str, status: str, severity: str = "major") -> IncidentEvent:
    return IncidentEvent(
        source="ops",
        external_id="inc-1",
        version=version,
        title="Ticket sales down",
        severity=severity,
        status=status,
        message=f"Ticket machines: {status}.",
        components=("tickets",),
    )


async def apply(
    db: Database, clock: FakeClock, ev: IncidentEvent, escalation: Escalation | None = None
) -> Applied:
    return await apply_event(
        db, clock, ev, hold=timedelta(0), reopen_within=timedelta(hours=1), escalation=escalation
    )


async def test_a_feed_resolution_gets_the_compensation_and_names_what_is_missing(
    database: Database, escalation: Escalation, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    created = await apply(database, clock, event("v1", "investigating"))
    assert created.incident_id is not None
    # Staff gave the cause on the way; the feed's resolution carries it over.
    await service.post_update(
        database,
        clock,
        created.incident_id,
        service.UpdateRequest(
            "Found it.", status="identified", cause_kind="known", cause="A card reader fault."
        ),
    )
    with caplog.at_level(logging.WARNING, logger="broadcaster.intake"):
        resolved = await apply(database, clock, event("v2", "resolved"), escalation)
    assert resolved.kind == "resolved", resolved.reason
    assert "without prevention, remedy" in resolved.reason
    view = await service.show(database, created.incident_id)
    assert view.incident.status == "resolved"
    assert view.updates[-1].compensation_offers == CREDIT
    lacking = "feed resolution lacks what the rules require"
    [warning] = [r for r in caplog.records if r.getMessage() == lacking]
    assert warning.__dict__["missing"] == ["prevention", "remedy"]
    assert warning.__dict__["rules"] == ["major-apology", "default-policy"]


async def test_a_resolution_the_rules_ask_nothing_of_is_not_flagged(
    database: Database, escalation: Escalation, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    await apply(database, clock, event("v1", "investigating", "minor"))
    with caplog.at_level(logging.WARNING, logger="broadcaster.intake"):
        resolved = await apply(database, clock, event("v2", "resolved", "minor"), escalation)
    assert (resolved.kind, resolved.reason) == ("resolved", "")
    assert not [r for r in caplog.records if "lacks" in r.getMessage()]
    assert resolved.incident_id is not None
    view = await service.show(database, resolved.incident_id)
    assert view.updates[-1].compensation is None
    assert view.updates[-1].compensation_offers is None


async def test_a_vanished_item_is_resolved_under_the_rules(
    database: Database, escalation: Escalation
) -> None:
    clock = FakeClock(START)
    created = await apply(database, clock, event("v1", "investigating"))
    assert created.incident_id is not None
    gone = await resolve_vanished(
        database, clock, "ops", created.incident_id, "missing", escalation
    )
    assert gone.kind == "resolved" and "cause, prevention, remedy" in gone.reason
    view = await service.show(database, created.incident_id)
    assert view.updates[-1].compensation_offers == CREDIT


async def test_a_webhook_resolution_goes_through_the_engine_s_escalation(
    database: Database, config: Settings, escalation: Escalation
) -> None:
    clock = FakeClock(START)
    state = WebState(config, database, clock, "link-secret", escalation=escalation)
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        for version, status in (("1", "investigating"), ("2", "resolved")):
            body = json.dumps(
                {
                    "id": "ops-7",
                    "version": version,
                    "title": "Ticket sales down",
                    "message": f"Ticket machines: {status}.",
                    "status": status,
                    "severity": "critical",
                }
            ).encode()
            headers = signed_webhook.sign(SECRET, body, int(clock.now().timestamp()))
            answer = await http.post("/hooks/incidents/ops", content=body, headers=headers)
            assert answer.status_code == 200, answer.text
    [result] = answer.json()["results"]
    assert result["kind"] == "resolved" and "cause, prevention, remedy" in result["reason"]
    view = await service.show(database, result["incident_id"])
    assert view.incident.status == "resolved"
    assert view.updates[-1].compensation_offers == CREDIT


async def test_the_daemon_s_feed_watchers_get_the_engine_s_escalation(
    escalation: Escalation,
) -> None:
    """The daemon starts its watchers with the engine's escalation (``start_watchers``), so
    a feed's resolutions meet the rules as a webhook's do."""
    feed = FeedSettings(name="status", kind="statuspage", url="https://status.example.org/")
    database = Database("sqlite+aiosqlite://")
    stop = asyncio.Event()
    stop.set()  # the watchers end at once: only how they were built matters here
    watchers, tasks = start_watchers(
        [feed], database, FakeClock(START), stop, escalation=escalation
    )
    await asyncio.gather(*tasks, return_exceptions=True)
    await database.dispose()
    assert [watcher.escalation for watcher in watchers] == [escalation]
