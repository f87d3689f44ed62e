"""Which incident a feed event lands on: ids that look like generations, CAP updates that
name only the update they replace, and the same event delivered twice at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from broadcaster.clock import FakeClock
from broadcaster.intake import cap
from broadcaster.intake.apply import apply_event
from broadcaster.intake.events import IncidentEvent, SourceMapping
from broadcaster.store import Database, Incident, IncidentUpdate, Round

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
HOLD = timedelta(0)
REOPEN = timedelta(hours=1)


def event(external_id: str, version: str, status: str = "investigating") -> IncidentEvent:
    return IncidentEvent(
        source="status",
        external_id=external_id,
        version=version,
        title=f"Item {external_id}",
        severity="major",
        status=status,
        message=f"{external_id} in version {version}.",
        components=("payments",),
    )


async def apply(database: Database, clock: FakeClock, ev: IncidentEvent) -> tuple[str, int | None]:
    result = await apply_event(database, clock, ev, hold=HOLD, reopen_within=REOPEN)
    assert result.kind != "error", result.reason
    return result.kind, result.incident_id


async def incidents(database: Database) -> list[Incident]:
    async with database.session() as session:
        return list((await session.execute(select(Incident).order_by(Incident.id))).scalars())


async def test_an_id_ending_in_hash_digits_is_its_own_item_not_a_generation(
    database: Database,
) -> None:
    clock = FakeClock(START)
    page = "https://status.example.com/history"
    kind, first = await apply(database, clock, event(page, "a1"))
    assert kind == "created"
    kind, second = await apply(database, clock, event(f"{page}#2", "b1"))
    assert kind == "created" and second != first

    # The resolution of the first item lands on it, not on the item whose id is <id>#2.
    assert await apply(database, clock, event(page, "a2", "resolved")) == ("resolved", first)
    assert await apply(database, clock, event(f"{page}#2", "b2", "identified")) == (
        "updated",
        second,
    )
    rows = {row.external_id: row.status for row in await incidents(database)}
    assert rows == {page: "resolved", f"{page}#2": "identified"}

    # A generation of the first item (open again long after) never meets the other item.
    clock.advance(REOPEN * 2)
    kind, third = await apply(database, clock, event(page, "a3"))
    assert kind == "created" and third not in (first, second)
    assert [row.external_id for row in await incidents(database)][-1] == f"{page}\t#2"
    assert await apply(database, clock, event(page, "a4", "resolved")) == ("resolved", third)
    assert {row.external_id: row.status for row in await incidents(database)}[
        f"{page}#2"
    ] == "identified"


async def test_an_old_style_generation_is_still_read_as_one(database: Database) -> None:
    """Generations stored as ``<id>#2`` by earlier builds still take the item's events."""
    clock = FakeClock(START)
    await apply(database, clock, event("inc-1", "v1"))
    await apply(database, clock, event("inc-1", "v2", "resolved"))
    clock.advance(REOPEN * 2)
    _, second = await apply(database, clock, event("inc-1", "v3"))
    async with database.session() as session, session.begin():
        await session.execute(
            update(Incident).where(Incident.id == second).values(external_id="inc-1#2")
        )
    assert await apply(database, clock, event("inc-1", "v4", "resolved")) == (
        "resolved",
        second,
    )


def cap_message(
    identifier: str, kind: str, sent: str, refs: str = "", sender: str = "ops@example.org"
) -> bytes:
    references = f"<references>{refs}</references>" if refs else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>{identifier}</identifier>
<sender>{sender}</sender><sent>{sent}</sent><status>Actual</status>
<msgType>{kind}</msgType><scope>Public</scope>{references}
<info><category>Met</category><event>Flood</event><urgency>Immediate</urgency>
<severity>Severe</severity><certainty>Observed</certainty><headline>Flood {identifier}</headline>
<description>Roads closed.</description><expires>2026-01-07T07:50:00+00:00</expires>
<area><areaDesc>Valley</areaDesc></area></info></alert>""".encode()


async def test_a_cap_update_naming_only_the_update_it_replaces_lands_on_the_first_incident(
    database: Database,
) -> None:
    clock = FakeClock(START)
    sender = "ops@example.org"
    chain = [
        cap_message("F-1", "Alert", "2026-01-06T07:00:00+00:00"),
        cap_message(
            "F-2", "Update", "2026-01-06T07:20:00+00:00", f"{sender},F-1,2026-01-06T07:00:00+00:00"
        ),
        cap_message(
            "F-3", "Update", "2026-01-06T07:40:00+00:00", f"{sender},F-2,2026-01-06T07:20:00+00:00"
        ),
        cap_message(
            "F-4", "Cancel", "2026-01-06T07:55:00+00:00", f"{sender},F-3,2026-01-06T07:40:00+00:00"
        ),
    ]
    outcomes = []
    for document in chain:
        [ev] = cap.parse(document, SourceMapping(), source="floods", now=clock.now()).events
        outcomes.append(await apply(database, clock, ev))
    [incident] = await incidents(database)
    assert outcomes == [
        ("created", incident.id),
        ("updated", incident.id),
        ("updated", incident.id),
        ("resolved", incident.id),
    ]
    assert incident.external_id == f"{sender},F-1" and incident.status == "resolved"


async def test_a_cap_update_of_an_unknown_chain_falls_back_to_its_earliest_reference(
    database: Database,
) -> None:
    clock = FakeClock(START)
    document = cap_message(
        "G-3",
        "Update",
        "2026-01-06T07:40:00+00:00",
        "ops@example.org,G-2,2026-01-06T07:20:00+00:00 ops@example.org,G-1,2026-01-06T07:00:00Z",
    )
    [ev] = cap.parse(document, SourceMapping(), source="floods", now=clock.now()).events
    mine = "ops@example.org,"
    assert ev.references == (
        (mine, "G-2"),
        (mine, "G-2/ended"),
        (mine, "G-1"),
        (mine, "G-1/ended"),
    )
    assert (await apply(database, clock, ev))[0] == "created"
    [incident] = await incidents(database)
    assert incident.external_id == "ops@example.org,G-1"


async def test_a_cap_update_never_lands_on_another_senders_alert_of_the_same_identifier(
    database: Database,
) -> None:
    """An identifier is unique per sender only: an aggregated feed's sender B updating its
    own alert 1001 (not seen here) went to sender A's incident for A's alert 1001, and A's
    customers got B's text."""
    clock = FakeClock(START)
    a_alert = cap_message("1001", "Alert", "2026-01-06T07:00:00+00:00", sender="alerts@a.example")
    b_update = cap_message(
        "1002",
        "Update",
        "2026-01-06T07:20:00+00:00",
        "alerts@b.example,1001,2026-01-06T07:10:00+00:00",
        sender="alerts@b.example",
    )
    outcomes = []
    for document in (a_alert, b_update):
        [ev] = cap.parse(document, SourceMapping(), source="floods", now=clock.now()).events
        outcomes.append(await apply(database, clock, ev))
    by_id = {i.external_id: i.id for i in await incidents(database)}
    assert outcomes == [
        ("created", by_id["alerts@a.example,1001"]),
        ("created", by_id["alerts@b.example,1001"]),
    ]


async def test_the_same_event_delivered_twice_at_once_is_applied_once(
    database: Database,
) -> None:
    """An Alertmanager HA pair sends every notification twice, at the same moment."""
    clock = FakeClock(START)
    _, incident_id = await apply(database, clock, event("grp-1", "v1"))
    async with database.session() as session, session.begin():  # the first notice went out
        await session.execute(update(Round).values(state="dispatched"))

    clock.advance(timedelta(minutes=2))
    twice = event("grp-1", "v2", "identified")
    outcomes = await asyncio.gather(
        *(apply_event(database, clock, twice, hold=HOLD, reopen_within=REOPEN) for _ in range(2))
    )
    assert sorted(o.kind for o in outcomes) == ["unchanged", "updated"]

    clock.advance(timedelta(minutes=2))
    resolution = event("grp-1", "v3", "resolved")
    outcomes = await asyncio.gather(
        *(
            apply_event(database, clock, resolution, hold=HOLD, reopen_within=REOPEN)
            for _ in range(2)
        )
    )
    assert sorted(o.kind for o in outcomes) == ["resolved", "unchanged"], outcomes

    async with database.session() as session:
        timeline = (
            await session.execute(
                select(IncidentUpdate.kind, IncidentUpdate.author)
                .where(IncidentUpdate.incident_id == incident_id)
                .order_by(IncidentUpdate.id)
            )
        ).all()
    assert [tuple(row) for row in timeline] == [
        ("declared", "feed:status@v1"),
        ("update", "feed:status@v2"),
        ("resolved", "feed:status@v3"),
    ]


async def test_a_resolution_of_an_incident_resolved_meanwhile_is_unchanged(
    database: Database,
) -> None:
    clock = FakeClock(START)
    await apply(database, clock, event("grp-2", "v1"))
    first, second = await asyncio.gather(
        apply_event(
            database, clock, event("grp-2", "v2", "resolved"), hold=HOLD, reopen_within=REOPEN
        ),
        apply_event(
            database, clock, event("grp-2", "v3", "resolved"), hold=HOLD, reopen_within=REOPEN
        ),
    )
    assert sorted((first.kind, second.kind)) == ["resolved", "unchanged"], (first, second)
