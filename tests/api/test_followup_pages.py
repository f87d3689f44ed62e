"""The follow-up lists are pages, soonest deadline first with a keyset cursor on (deadline,
id): the queue was a bare list cut at 1,000 with no way to the rest."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import insert

from broadcaster.store import Database, Followup
from tests.api.support import START, Api, api_client


async def _declared(api: Api) -> int:
    customer = {"id": "c1", "name": "Ann", "email": "ann@example.org", "components": ["x"]}
    await api.call("PUT", "/api/v1/customers/c1", "admin", json=customer)
    made = await api.call(
        "POST",
        "/api/v1/incidents",
        "operator",
        json={"title": "Outage", "severity": "major", "message": "Down.", "components": ["x"]},
    )
    return int(made.json()["id"])


async def _tasks(database: Database, incident_id: int, hours: list[int]) -> list[int]:
    ids = []
    async with database.session() as session, session.begin():
        for number, offset in enumerate(hours):
            result = await session.execute(
                insert(Followup)
                .values(
                    incident_id=incident_id,
                    customer_id="c1",
                    rule=f"vip-call-{number}",
                    kind="call",
                    owner="ann",
                    state="open",
                    deadline_at=START + timedelta(hours=offset, microseconds=7),
                    escalation_level=0,
                    created_at=START,
                )
                .returning(Followup.id)
            )
            ids.append(int(result.scalar_one()))
    return ids


async def _walk(api: Api, path: str, limit: int, **params: Any) -> list[int]:
    seen: list[int] = []
    cursor = None
    for _ in range(20):
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        page = await api.call("GET", path, "viewer", params=query)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= limit
        seen += [task["id"] for task in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("no last page")


async def test_both_follow_up_lists_page_through_every_task(database: Database) -> None:
    async with api_client(database) as api:
        one, two = await _declared(api), await _declared(api)
        # Equal deadlines too: the id orders them, and none is skipped at a page boundary.
        mine = await _tasks(database, one, [3, 1, 1, 1, 2, 5, 1])
        theirs = await _tasks(database, two, [1, 4])
        by_deadline = sorted(
            zip([3, 1, 1, 1, 2, 5, 1, 1, 4], mine + theirs, strict=True),
        )
        everything = [task for _, task in by_deadline]
        for limit in (1, 2, 3, 100):
            assert await _walk(api, "/api/v1/followups", limit) == everything
            assert await _walk(api, f"/api/v1/incidents/{one}/followups", limit) == [
                task for task in everything if task in mine
            ]
        assert await _walk(api, "/api/v1/followups", 2, incident_id=two) == [
            task for task in everything if task in theirs
        ]
        last = await api.call("GET", "/api/v1/followups", "viewer", params={"limit": 1000})
        assert last.json()["next_cursor"] is None


async def test_a_bad_cursor_or_an_unknown_incident_is_refused(database: Database) -> None:
    async with api_client(database) as api:
        for cursor in ("x", "1", "9999999999999999999.1", "1.0", "1.9999999999999999999"):
            for path in ("/api/v1/followups", "/api/v1/incidents/1/followups"):
                refused = await api.call("GET", path, "viewer", params={"cursor": cursor})
                assert refused.status_code in (404, 422), (path, cursor, refused.text)
                if refused.status_code == 422:
                    assert refused.json()["error"]["field"] == "query.cursor", cursor
        missing = await api.call("GET", "/api/v1/incidents/999/followups", "viewer")
        assert missing.status_code == 404
        assert missing.json()["error"]["field"] == "path.incident_id"


async def test_an_incidents_detail_holds_the_first_follow_ups_and_counts_them_all(
    database: Database,
) -> None:
    """It held every one (about 5 MB for 20,000 tasks)."""
    async with api_client(database) as api:
        number = await _declared(api)
        made = await _tasks(database, number, list(range(60, 0, -1)))
        detail = (await api.call("GET", f"/api/v1/incidents/{number}", "viewer")).json()
    assert detail["followup_counts"] == {"open": 60}
    assert [task["id"] for task in detail["followups"]] == list(reversed(made))[:50]
