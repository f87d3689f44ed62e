"""An update through the API may change the incident's severity; every text an operator
writes has the same limit whichever way it is written (API, console, CLI: the service)."""

from __future__ import annotations

from typing import Any

import pytest

from broadcaster.clock import FakeClock
from broadcaster.incidents import service
from broadcaster.incidents.lifecycle import MAX_TEXT_CHARS
from broadcaster.store import Database, Incident
from broadcaster.web.api.schemas import DeclareIn, ResolveIn, UpdateIn
from tests.api.support import START, api_client

DECLARE = {
    "title": "Signal failure at Central",
    "severity": "minor",
    "message": "Trains between Central and North are delayed.",
    "components": ["north-line"],
}


async def test_an_update_raises_the_severity_through_the_api(database: Database) -> None:
    async with api_client(database) as api:
        number = (await api.call("POST", "/api/v1/incidents", "operator", json=DECLARE)).json()[
            "id"
        ]
        raised = await api.call(
            "POST",
            f"/api/v1/incidents/{number}/updates",
            "operator",
            json={"message": "All lines are down now.", "severity": "critical"},
        )
        assert raised.status_code == 201, raised.text
        shown = (await api.call("GET", f"/api/v1/incidents/{number}", "viewer")).json()
        assert shown["severity"] == "critical"
        kept = await api.call(
            "POST", f"/api/v1/incidents/{number}/updates", "operator", json={"message": "Still."}
        )
        assert kept.status_code == 201, kept.text
        assert (await api.call("GET", f"/api/v1/incidents/{number}")).json()["severity"] == (
            "critical"
        )
        bad = await api.call(
            "POST",
            f"/api/v1/incidents/{number}/updates",
            "operator",
            json={"message": "Worse.", "severity": "apocalyptic"},
        )
        assert bad.status_code == 422, bad.text
        assert bad.json()["error"]["field"] == "body.severity"
        async with database.session() as session:
            incident = await session.get(Incident, number)
            assert incident is not None and incident.severity == "critical"
        audit = (await api.call("GET", "/api/v1/audit", "admin")).json()["items"]
        assert {"severity": "critical"} in [
            a["detail"] for a in audit if a["action"] == "incident.update"
        ]


def test_the_api_schema_has_the_service_limit_for_every_text() -> None:
    for model, names in (
        (DeclareIn, ("cause", "actions", "workaround")),
        (UpdateIn, ("cause", "actions", "workaround")),
        (ResolveIn, ("cause", "responsibility", "regret", "remedy", "prevention", "compensation")),
    ):
        properties = model.model_json_schema()["properties"]
        for name in names:
            (text,) = [v for v in properties[name]["anyOf"] if v.get("type") == "string"]
            assert text["maxLength"] == MAX_TEXT_CHARS, (model.__name__, name)


LONG = "x" * (MAX_TEXT_CHARS + 1)


@pytest.mark.parametrize("name", ["cause", "actions", "workaround"])
async def test_the_service_refuses_a_declaration_text_over_the_limit(
    database: Database, name: str
) -> None:
    """The console and the CLI declare through the service: it refused only a long title or
    message, and stored a 50,000-character cause that went out in every message."""
    clock = FakeClock(START)
    extra: dict[str, Any] = {"cause_kind": "known"} if name == "cause" else {}
    too_long: dict[str, Any] = {**extra, name: LONG}
    decl = service.Declaration("Outage", "major", "Down.", components=["north"], **too_long)
    with pytest.raises(ValueError, match=f"^{name}: {MAX_TEXT_CHARS + 1} characters; at most"):
        await service.declare(database, clock, decl)
    at_most: dict[str, Any] = {**extra, name: LONG[1:]}
    fits = service.Declaration("Outage", "major", "Down.", components=["north"], **at_most)
    await service.declare(database, clock, fits)


@pytest.mark.parametrize(
    ("name", "resolving"),
    [
        ("cause", False),
        ("actions", False),
        ("workaround", False),
        ("cause", True),
        ("responsibility", True),
        ("regret", True),
        ("remedy", True),
        ("prevention", True),
        ("compensation", True),
    ],
)
async def test_the_service_refuses_an_update_or_resolution_text_over_the_limit(
    database: Database, name: str, resolving: bool
) -> None:
    clock = FakeClock(START)
    incident = await service.declare(
        database, clock, service.Declaration("Outage", "major", "Down.", components=["north"])
    )
    extra: dict[str, Any] = {"cause_kind": "known"} if name == "cause" else {}
    too_long: dict[str, Any] = {**extra, name: LONG}
    request = service.UpdateRequest("Fixed.", **too_long)
    act = service.resolve if resolving else service.post_update
    with pytest.raises(ValueError, match=f"^{name}: {MAX_TEXT_CHARS + 1} characters; at most"):
        await act(database, clock, incident.id, request)
    async with database.session() as session:
        kept = await service.latest_update(session, incident.id)
        assert kept is not None and kept.kind == "declared"  # nothing was stored
    at_most: dict[str, Any] = {**extra, name: LONG[1:]}
    fits = service.UpdateRequest("Fixed.", **at_most)
    entry = await act(database, clock, incident.id, fits)
    assert getattr(entry, name) == LONG[1:]


async def test_the_api_names_the_field_of_a_text_over_the_limit(database: Database) -> None:
    async with api_client(database) as api:
        refused = await api.call(
            "POST",
            "/api/v1/incidents",
            "operator",
            json={**DECLARE, "cause_kind": "known", "cause": LONG},
        )
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] == "body.cause"


async def test_an_expected_resolution_is_kept_moved_or_withdrawn(database: Database) -> None:
    """Omitted keeps it; null withdraws it (a time told that no longer holds)."""
    async with api_client(database) as api:
        body = {**DECLARE, "expected_resolution_at": "2026-03-02T12:00:00Z"}
        number = (await api.call("POST", "/api/v1/incidents", "operator", json=body)).json()["id"]
        path = f"/api/v1/incidents/{number}/updates"
        kept = await api.call("POST", path, "operator", json={"message": "Still."})
        assert kept.json()["expected_resolution_at"].startswith("2026-03-02T12:00:00")
        gone = await api.call(
            "POST",
            path,
            "operator",
            json={"message": "Unknown now.", "expected_resolution_at": None},
        )
        assert gone.status_code == 201, gone.text
        assert gone.json()["expected_resolution_at"] is None
        later = await api.call("POST", path, "operator", json={"message": "And still."})
        assert later.json()["expected_resolution_at"] is None
