"""A version already applied to an item is never applied again, from any intake source.

Before, only the latest applied version was "unchanged", and an older one was ignored only
when both carried ``updated_at`` (optional): a signed webhook captured and sent again
within its replay window reopened a resolved incident, or rolled an open one back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select, update

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.intake import signed_webhook
from broadcaster.intake.apply import apply_event, plan_event, resolve_vanished
from broadcaster.intake.events import IncidentEvent
from broadcaster.store import Database, Incident, IncidentUpdate
from broadcaster.web.app import create_app
from broadcaster.web.state import WebState

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
HOLD = timedelta(0)
REOPEN = timedelta(hours=1)
SECRET = "whsec-for-replay-tests"


def event(
    version: str, status: str = "investigating", *, updated: datetime | None = None
) -> IncidentEvent:
    return IncidentEvent(
        source="ops",
        external_id="inc-1",
        version=version,
        title="Ticket sales down",
        severity="major",
        status=status,
        message=f"Ticket machines: {status}.",
        components=("tickets",),
        updated_at=updated,
    )


async def apply(db: Database, clock: FakeClock, ev: IncidentEvent) -> tuple[str, int | None]:
    result = await apply_event(db, clock, ev, hold=HOLD, reopen_within=REOPEN)
    assert result.kind != "error", result.reason
    return result.kind, result.incident_id


async def timeline_length(db: Database) -> int:
    async with db.session() as session:
        return int((await session.execute(select(func.count(IncidentUpdate.id)))).scalar_one())


async def incidents(db: Database) -> list[Incident]:
    async with db.session() as session:
        return list((await session.execute(select(Incident).order_by(Incident.id))).scalars())


async def test_an_earlier_version_replayed_after_the_resolution_does_not_reopen(
    database: Database,
) -> None:
    clock = FakeClock(START)
    kind, incident_id = await apply(database, clock, event("v1"))
    assert kind == "created" and incident_id is not None
    clock.advance(60)
    assert await apply(database, clock, event("v2", "resolved")) == ("resolved", incident_id)
    entries = await timeline_length(database)
    clock.advance(60)  # well within reopen_within (and a webhook's replay window)
    planned = await plan_event(database, clock, event("v1"), reopen_within=REOPEN)
    assert planned.kind == "unchanged"
    result = await apply_event(database, clock, event("v1"), hold=HOLD, reopen_within=REOPEN)
    assert (result.kind, result.reason) == ("unchanged", "version already applied")
    [row] = await incidents(database)
    assert row.status == "resolved"
    assert await timeline_length(database) == entries
    # A new version is still a genuine reopening.
    assert await apply(database, clock, event("v3")) == ("reopened", incident_id)
    assert (await incidents(database))[0].status == "investigating"


async def test_an_earlier_version_replayed_does_not_roll_an_open_incident_back(
    database: Database,
) -> None:
    clock = FakeClock(START)
    _, incident_id = await apply(database, clock, event("v1"))
    await apply(database, clock, event("v2", "identified"))
    await apply(database, clock, event("v3", "monitoring"))
    assert (await apply(database, clock, event("v2", "identified")))[0] == "unchanged"
    assert (await apply(database, clock, event("v1")))[0] == "unchanged"
    [row] = await incidents(database)
    assert row.id == incident_id and row.status == "monitoring"


async def test_a_replay_after_closure_declares_no_new_incident(database: Database) -> None:
    clock = FakeClock(START)
    _, incident_id = await apply(database, clock, event("v1"))
    await apply(database, clock, event("v2", "resolved"))
    assert incident_id is not None
    async with database.session() as session, session.begin():  # closed by staff
        await session.execute(
            update(Incident).where(Incident.id == incident_id).values(status="closed")
        )
    clock.advance(REOPEN * 3)
    assert (await apply(database, clock, event("v1")))[0] == "unchanged"
    assert [r.external_id for r in await incidents(database)] == ["inc-1"]
    # The source reporting it again, in a new version, is a new incident.
    kind, second = await apply(database, clock, event("v3"))
    assert kind == "created" and second != incident_id
    assert [r.external_id for r in await incidents(database)] == ["inc-1", "inc-1\t#2"]
    # Versions of the first generation stay applied for the item.
    assert (await apply(database, clock, event("v2", "resolved")))[0] == "unchanged"


async def test_a_source_reporting_an_item_open_again_reopens_it(database: Database) -> None:
    """A source whose version is a content hash says "open" again after "resolved": the
    same hash as before, but newer than anything applied, so a change, not a replay."""
    clock = FakeClock(START)
    t1, t2, t3 = START, START + timedelta(minutes=5), START + timedelta(minutes=10)
    _, incident_id = await apply(database, clock, event("open", updated=t1))
    await apply(database, clock, event("resolved", "resolved", updated=t2))
    assert await apply(database, clock, event("open", updated=t1)) == ("unchanged", incident_id)
    assert await apply(database, clock, event("open", updated=t3)) == ("reopened", incident_id)
    assert (await incidents(database))[0].status == "investigating"


async def test_the_version_applied_last_with_a_newer_time_is_unchanged(
    database: Database,
) -> None:
    """A GTFS-rt feed stamps every alert with the time of the fetch: the same alert, read
    again with a newer time, is not a change. Each fetch had sent customers the same update
    again."""
    clock = FakeClock(START)
    _, incident_id = await apply(database, clock, event("h:1", updated=START))
    for minutes in (1, 2, 3):
        later = START + timedelta(minutes=minutes)
        assert await apply(database, clock, event("h:1", updated=later)) == (
            "unchanged",
            incident_id,
        )
    assert await timeline_length(database) == 1
    edited = event("h:2", updated=START + timedelta(minutes=4))
    assert await apply(database, clock, edited) == ("updated", incident_id)


async def test_an_update_older_than_any_applied_one_is_ignored(database: Database) -> None:
    """Not only the latest entry's time counts: here the latest carries none."""
    clock = FakeClock(START)
    await apply(database, clock, event("v1", updated=START + timedelta(minutes=5)))
    await apply(database, clock, event("v2", "identified"))
    kind, _ = await apply(database, clock, event("v0", "resolved", updated=START))
    assert kind == "ignored"
    assert (await incidents(database))[0].status == "identified"


async def test_an_item_back_in_its_snapshot_feed_after_vanishing_is_open_again(
    database: Database,
) -> None:
    """A snapshot feed's own resolution (the item left the feed) is not a version: the same
    item listed again, unchanged, has come back (a GTFS-rt alert missing for a while)."""
    clock = FakeClock(START)
    _, incident_id = await apply(database, clock, event("v1"))
    assert incident_id is not None
    gone = await resolve_vanished(database, clock, "ops", incident_id, "missing")
    assert gone.kind == "resolved"
    clock.advance(60)
    assert await apply(database, clock, event("v1")) == ("reopened", incident_id)
    assert (await apply(database, clock, event("v1")))[0] == "unchanged"


async def test_an_item_whose_version_is_the_word_vanished_is_not_mistaken_for_it(
    database: Database,
) -> None:
    clock = FakeClock(START)
    await apply(database, clock, event("vanished"))
    await apply(database, clock, event("v2", "resolved"))
    assert (await apply(database, clock, event("vanished")))[0] == "unchanged"
    assert (await incidents(database))[0].status == "resolved"


# -- the reproduction, through the signed webhook ------------------------------------------


@pytest.fixture
async def hook(database: Database) -> AsyncIterator[tuple[httpx.AsyncClient, FakeClock]]:
    settings = Settings.model_validate({"webhook_secrets": {"ops": SECRET}})
    clock = FakeClock(START)
    state = WebState(settings, database, clock, "link-secret")
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        yield http, clock


def body(status: str, **extra: object) -> bytes:
    return json.dumps(
        {
            "id": "ops-42",
            "title": "Ticket sales down",
            "message": f"Ticket machines: {status}.",
            "status": status,
            "severity": "major",
            **extra,
        }
    ).encode()


@pytest.mark.parametrize("versioned", [True, False], ids=["version", "body-hash"])
async def test_a_captured_webhook_resent_within_the_window_changes_nothing(
    hook: tuple[httpx.AsyncClient, FakeClock], database: Database, versioned: bool
) -> None:
    http, clock = hook
    first = body("investigating", **({"version": "1"} if versioned else {}))
    captured = signed_webhook.sign(SECRET, first, int(clock.now().timestamp()))
    answer = await http.post("/hooks/incidents/ops", content=first, headers=captured)
    assert answer.json()["counts"] == {"created": 1}
    clock.advance(30)
    second = body("resolved", **({"version": "2"} if versioned else {}))
    signed = signed_webhook.sign(SECRET, second, int(clock.now().timestamp()))
    answer = await http.post("/hooks/incidents/ops", content=second, headers=signed)
    assert answer.json()["counts"] == {"resolved": 1}
    clock.advance(60)  # the replay window is 300 s: the captured signature still verifies
    replay = await http.post("/hooks/incidents/ops", content=first, headers=captured)
    assert replay.status_code == 200
    assert replay.json()["counts"] == {"unchanged": 1}
    [row] = await incidents(database)
    assert row.status == "resolved"
