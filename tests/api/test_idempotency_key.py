"""``Idempotency-Key`` on declarations and updates: a retried request answers what the first
did instead of acting twice (customers got two first notices); the key with another request
is refused; of two at once only one acts."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from broadcaster.access import credentials
from broadcaster.store import Database, Incident, IncidentUpdate, Round
from broadcaster.store.models import IdempotencyKey
from broadcaster.web.api import idempotency
from tests.api.support import Api, api_client

DECLARE = {
    "title": "Payments down",
    "severity": "major",
    "message": "Card payments fail.",
    "components": ["payments"],
}


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def count(database: Database, model: Any) -> int:
    async with database.session() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def declare(api: Api, key: str, body: object = DECLARE, role: str = "operator") -> Any:
    return await api.call("POST", "/api/v1/incidents", role, json=body, headers=keyed(key))


async def test_a_retried_declaration_declares_once(database: Database) -> None:
    async with api_client(database) as api:
        first = await declare(api, "0b6b3c1e-retry")
        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        again = await declare(api, "0b6b3c1e-retry")
        assert again.status_code == 201, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        assert await count(database, Incident) == 1
        assert await count(database, Round) == 1  # one first notice
        audit = (await api.call("GET", "/api/v1/audit", "admin")).json()["items"]
        assert [a["action"] for a in audit].count("incident.declare") == 1
        # Without a key, each request acts.
        plain = await api.call("POST", "/api/v1/incidents", "operator", json=DECLARE)
        assert plain.status_code == 201 and plain.json()["id"] != first.json()["id"]


async def test_the_key_with_another_request_is_refused(database: Database) -> None:
    async with api_client(database) as api:
        first = await declare(api, "k-1")
        assert first.status_code == 201
        other = await declare(api, "k-1", {**DECLARE, "title": "Something else"})
        assert other.status_code == 422, other.text
        error = other.json()["error"]
        assert error["field"] == "header.Idempotency-Key"
        assert "used for another request" in error["message"]
        number = first.json()["id"]
        # Another endpoint with the key is another request too.
        update = await api.call(
            "POST",
            f"/api/v1/incidents/{number}/updates",
            "operator",
            json={"message": "Still down."},
            headers=keyed("k-1"),
        )
        assert update.status_code == 422, update.text
        assert await count(database, Incident) == 1
        assert await count(database, IncidentUpdate) == 1


async def test_a_key_is_the_callers_own(database: Database) -> None:
    async with api_client(database) as api:
        mine = await declare(api, "shared", role="operator")
        theirs = await declare(api, "shared", role="admin")
        assert mine.status_code == theirs.status_code == 201
        assert mine.json()["id"] != theirs.json()["id"]


async def test_a_retried_update_is_posted_once(database: Database) -> None:
    async with api_client(database) as api:
        number = (await declare(api, "declared")).json()["id"]
        path = f"/api/v1/incidents/{number}/updates"
        body = {"message": "Engineers are on site.", "status": "identified"}
        first = await api.call("POST", path, "operator", json=body, headers=keyed("u-1"))
        again = await api.call("POST", path, "operator", json=body, headers=keyed("u-1"))
        assert first.status_code == again.status_code == 201, again.text
        assert again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        timeline = (await api.call("GET", f"/api/v1/incidents/{number}/timeline")).json()
        assert [e["kind"] for e in timeline] == ["declared", "update"]


async def test_a_key_is_checked_for_form(database: Database) -> None:
    async with api_client(database) as api:
        for bad in ("", "x" * 256, "two words"):
            refused = await declare(api, bad)
            assert refused.status_code == 422, (bad, refused.text)
            assert refused.json()["error"]["field"] == "header.Idempotency-Key"
        assert await count(database, Incident) == 0


async def test_a_refused_request_keeps_no_key(database: Database) -> None:
    async with api_client(database) as api:
        refused = await declare(api, "k", {**DECLARE, "components": []})
        assert refused.status_code == 422
        assert await count(database, IdempotencyKey) == 0
        fixed = await declare(api, "k", DECLARE)
        assert fixed.status_code == 201 and "idempotent-replayed" not in fixed.headers


async def test_a_key_is_forgotten_after_a_day(database: Database) -> None:
    async with api_client(database) as api:
        first = await declare(api, "daily")
        api.clock.advance(timedelta(hours=23))
        assert (await declare(api, "daily")).json()["id"] == first.json()["id"]
        api.clock.advance(timedelta(hours=2))
        later = await declare(api, "daily")
        assert later.status_code == 201 and "idempotent-replayed" not in later.headers
        assert later.json()["id"] != first.json()["id"]
        assert await count(database, IdempotencyKey) == 1


async def test_concurrent_duplicates_act_once(database: Database) -> None:
    async with api_client(database) as api:
        answers = await asyncio.gather(*(declare(api, "burst") for _ in range(5)))
        assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
        assert len({a.json()["id"] for a in answers}) == 1
        assert await count(database, Incident) == 1
        assert await count(database, Round) == 1


async def test_a_duplicate_that_passed_the_check_is_stopped_by_the_unique_key(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests at once both find no key: the one that commits second fails on the key,
    its declaration is rolled back, and it answers as a replay of the first."""
    async with api_client(database) as api:
        first = await declare(api, "race")
        real = idempotency.Idempotency.previous
        calls: list[str] = []

        async def blind_once(self: idempotency.Idempotency) -> Any:
            calls.append(self.key or "")
            if len(calls) == 1:
                return None  # as if the first had not committed yet
            return await real(self)

        monkeypatch.setattr(idempotency.Idempotency, "previous", blind_once)
        second = await declare(api, "race")
        assert second.status_code == 201, second.text
        assert second.headers["idempotent-replayed"] == "true"
        assert second.json()["id"] == first.json()["id"]
        assert len(calls) == 2
        assert await count(database, Incident) == 1
        assert await count(database, Round) == 1
        number = first.json()["id"]
        calls.clear()
        path = f"/api/v1/incidents/{number}/updates"
        body = {"message": "Update."}
        one = await api.call("POST", path, "operator", json=body, headers=keyed("race-u"))
        calls.clear()
        two = await api.call("POST", path, "operator", json=body, headers=keyed("race-u"))
        assert two.status_code == 201 and two.json()["id"] == one.json()["id"]
        assert await count(database, IncidentUpdate) == 2


async def test_a_field_sent_as_null_is_another_request_than_one_left_out(
    database: Database,
) -> None:
    """Left out keeps the expected resolution, null withdraws it: the second was answered
    as a replay of the first, and the withdrawal lost."""
    async with api_client(database) as api:
        body = {**DECLARE, "expected_resolution_at": "2026-03-02T12:00:00Z"}
        number = (await declare(api, "declared", body)).json()["id"]
        path = f"/api/v1/incidents/{number}/updates"
        keep = {"message": "No time any more."}
        withdraw = {**keep, "expected_resolution_at": None}
        first = await api.call("POST", path, "operator", json=keep, headers=keyed("u-2"))
        assert first.status_code == 201, first.text
        other = await api.call("POST", path, "operator", json=withdraw, headers=keyed("u-2"))
        assert other.status_code == 422, other.text


async def test_two_tokens_of_one_name_have_their_own_keys(database: Database) -> None:
    async with api_client(database) as api:
        secrets = []
        for _ in range(2):
            _, secret = await credentials.create_token(
                database, api.clock, name="ci-bot", role="operator"
            )
            secrets.append(secret)
        answers = [
            await api.call(
                "POST",
                "/api/v1/incidents",
                None,
                json=DECLARE,
                headers={"Authorization": f"Bearer {secret}", **keyed("same-key")},
            )
            for secret in secrets
        ]
        assert [a.status_code for a in answers] == [201, 201]
        assert "idempotent-replayed" not in answers[1].headers
        assert answers[0].json()["id"] != answers[1].json()["id"]


async def test_the_leader_prunes_keys_older_than_a_day(database: Database) -> None:
    async with api_client(database) as api:
        await declare(api, "old")
        api.clock.advance(timedelta(hours=20))
        await declare(api, "new")
        api.clock.advance(timedelta(hours=5))
        assert await idempotency.prune(database, api.clock.now()) == 1
        async with database.session() as session:
            kept = (await session.execute(select(IdempotencyKey.key))).scalars().all()
        assert kept == ["new"]
