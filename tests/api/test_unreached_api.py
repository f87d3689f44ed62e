"""``GET /api/v1/incidents/{id}/unreached`` and ``broadcaster_customers_unreached`` on
``/metrics``: the customers an incident has not reached, paged, counted, withheld from
viewers; bad input refused with the parameter named."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, select, update

from broadcaster.store import Customer, Database, Delivery, Round, Subscription
from broadcaster.web import metrics
from tests.api.support import START, Api, api_client

DECLARE = {
    "title": "Card payments failing",
    "severity": "major",
    "message": "Card payments fail for some customers.",
    "components": ["payments"],
}


async def _customers(database: Database, *ids: str) -> None:
    async with database.session() as session, session.begin():
        for cid in ids:
            await session.execute(
                insert(Customer).values(
                    id=cid, name=f"Name {cid}", created_at=START, updated_at=START
                )
            )


async def _deliver(database: Database, incident_id: int, rows: list[tuple[str, str]]) -> None:
    """(customer, state) deliveries on email in the incident's first round."""
    async with database.session() as session, session.begin():
        round_id = (
            await session.execute(select(Round.id).where(Round.incident_id == incident_id))
        ).scalar_one()
        for customer, state in rows:
            session.add(
                Delivery(
                    round_id=round_id,
                    incident_id=incident_id,
                    customer_id=customer,
                    channel="email",
                    address=f"{customer}@example.org",
                    state=state,
                    attempts=1,
                    next_attempt_at=START,
                    created_at=START,
                    last_error=None if state == "sent" else "550 mailbox unavailable",
                )
            )


async def _declared(api: Api, database: Database, **changes: object) -> int:
    response = await api.call("POST", "/api/v1/incidents", json={**DECLARE, **changes})
    assert response.status_code == 201, response.text
    incident_id: int = response.json()["id"]
    return incident_id


async def test_operators_page_the_customers_not_reached_with_the_counts(
    database: Database,
) -> None:
    async with api_client(database) as api:
        await _customers(database, "c1", "c2", "c3", "c4", "c5")
        incident = await _declared(api, database)
        await _deliver(
            database,
            incident,
            [("c1", "sent"), ("c2", "failed"), ("c3", "pending"), ("c4", "cancelled")],
        )
        async with database.session() as session, session.begin():
            # The round was written; c5, subscribed, got no delivery (no usable address).
            await session.execute(
                update(Round).where(Round.incident_id == incident).values(materialised_at=START)
            )
            session.add(Subscription(customer_id="c5", kind="component", value="payments"))
        url = f"/api/v1/incidents/{incident}/unreached"
        first = await api.call("GET", url, "operator", params={"limit": 2})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["counts"] == {
            "unreached": 3,
            "still_trying": 1,
            "by_reason": {
                "failed": 1,
                "undelivered": 0,
                "cancelled": 1,
                "other": 0,
                "no_address": 1,
            },
            "purged": False,
        }
        assert body["withheld"] is False
        assert [i["customer_id"] for i in body["items"]] == ["c2", "c3"]
        assert body["next_cursor"] == "c3"
        c2 = body["items"][0]
        assert (c2["name"], c2["reason"], c2["still_trying"]) == ("Name c2", "failed", False)
        [email] = c2["channels"]
        assert email["channel"] == "email" and email["state"] == "failed"
        assert email["last_error"] == "550 mailbox unavailable"
        assert email["next_attempt_at"] is None and email["at"].startswith("2026-03-02T09:00")
        c3 = body["items"][1]
        assert c3["reason"] == "trying" and c3["channels"][0]["next_attempt_at"] is not None

        rest = (await api.call("GET", url, "operator", params={"limit": 2, "cursor": "c3"})).json()
        assert [i["customer_id"] for i in rest["items"]] == ["c4", "c5"]
        assert rest["next_cursor"] is None
        c5 = rest["items"][1]
        assert (c5["reason"], c5["still_trying"], c5["channels"]) == ("no_address", False, [])

        final = (await api.call("GET", url, "operator", params={"only": "final"})).json()
        assert [i["customer_id"] for i in final["items"]] == ["c2", "c4", "c5"]
        trying = (await api.call("GET", url, "operator", params={"only": "trying"})).json()
        assert [i["customer_id"] for i in trying["items"]] == ["c3"]


async def test_a_viewer_gets_the_counts_not_the_customers(database: Database) -> None:
    async with api_client(database) as api:
        await _customers(database, "c1")
        incident = await _declared(api, database)
        await _deliver(database, incident, [("c1", "failed")])
        answer = await api.call("GET", f"/api/v1/incidents/{incident}/unreached", "viewer")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["counts"]["unreached"] == 1
        assert body["items"] == [] and body["next_cursor"] is None and body["withheld"] is True
        assert "c1" not in answer.text and "550" not in answer.text


@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        ("/api/v1/incidents/999999/unreached", {}, 404, "path.incident_id"),
        ("/api/v1/incidents/0/unreached", {}, 422, "path.incident_id"),
        (f"/api/v1/incidents/{2**70}/unreached", {}, 422, "path.incident_id"),
        ("/api/v1/incidents/1/unreached", {"limit": 0}, 422, "query.limit"),
        ("/api/v1/incidents/1/unreached", {"limit": 1001}, 422, "query.limit"),
        ("/api/v1/incidents/1/unreached", {"limit": "ten"}, 422, "query.limit"),
        ("/api/v1/incidents/1/unreached", {"cursor": "x" * 65}, 422, "query.cursor"),
        ("/api/v1/incidents/1/unreached", {"cursor": ""}, 422, "query.cursor"),
        ("/api/v1/incidents/1/unreached", {"cursor": "a\x00b"}, 422, "query.cursor"),
        ("/api/v1/incidents/1/unreached", {"only": "failed"}, 422, "query.only"),
    ],
)
async def test_bad_input_is_refused_naming_it(
    database: Database, path: str, params: dict[str, str | int], status: int, field: str
) -> None:
    async with api_client(database) as api:
        await _declared(api, database)
        answer = await api.call("GET", path, "operator", params=params)
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]["field"] == field


async def test_the_endpoint_is_in_the_openapi_document(database: Database) -> None:
    async with api_client(database) as api:
        document = (await api.http.get("/openapi.json")).json()
    operation = document["paths"]["/api/v1/incidents/{incident_id}/unreached"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {
        "incident_id",
        "limit",
        "cursor",
        "only",
    }
    assert "404" in operation["responses"]
    schema = document["components"]["schemas"]["UnreachedPageOut"]
    assert {"items", "next_cursor", "counts", "withheld"} <= set(schema["properties"])


def _unreached(text: str) -> dict[str, float]:
    return {
        sample.labels["severity"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "broadcaster_customers_unreached"
    }


async def test_metrics_count_the_open_incidents_customers_not_reached_by_severity(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with api_client(database) as api:
        await _customers(database, "c1", "c2", "c3")
        major = await _declared(api, database)
        critical = await _declared(api, database, severity="critical", components=["web"])
        minor = await _declared(api, database, severity="minor", components=["login"])
        await _deliver(database, major, [("c1", "failed"), ("c2", "pending"), ("c3", "sent")])
        await _deliver(database, critical, [("c1", "cancelled"), ("c2", "undelivered")])
        await _deliver(database, minor, [("c3", "failed")])
        resolved = await api.call(
            "POST", f"/api/v1/incidents/{minor}/resolve", json={"message": "Fixed."}
        )
        assert resolved.status_code == 201, resolved.text
        await api.call("POST", f"/api/v1/incidents/{minor}/close")
        scrape = await api.call("GET", "/metrics", "viewer")
        assert scrape.status_code == 200
        # The closed incident is not counted; c2 of the major one is still being tried.
        assert _unreached(scrape.text) == {"minor": 0, "major": 1, "critical": 2}

        async with database.session() as session, session.begin():
            failed = Delivery(
                round_id=(
                    await session.execute(select(Round.id).where(Round.incident_id == major))
                ).scalar_one(),
                incident_id=major,
                customer_id="c3",
                channel="sms",
                address="x",
                state="failed",
                next_attempt_at=START,
                created_at=START,
            )
            session.add(failed)  # c3 was reached by email: still reached
            await session.execute(
                update(Delivery)
                .where(Delivery.customer_id == "c2", Delivery.incident_id == major)
                .values(state="failed")
            )
        # A scrape reports the last count, not a new one.
        assert _unreached((await api.call("GET", "/metrics", "viewer")).text)["major"] == 1
        api.clock.advance(timedelta(seconds=metrics.UNREACHED_EVERY))
        deadline = time.monotonic() + 10
        while _unreached((await api.call("GET", "/metrics", "viewer")).text)["major"] != 2:
            assert time.monotonic() < deadline, "the customers were not counted again"
            await asyncio.sleep(0.05)
        await metrics.stop_counting(api.state)
