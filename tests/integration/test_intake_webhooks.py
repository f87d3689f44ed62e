"""Inbound incident webhooks: Alertmanager and the signed JSON webhook, through the app."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.incidents import service
from broadcaster.intake import alertmanager, signed_webhook
from broadcaster.intake.events import ParseResult, SkippedItem
from broadcaster.store import Database
from broadcaster.web.app import create_app
from broadcaster.web.state import WebState
from tests.conftest import FIXTURES

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
SECRET = "whsec-for-tests"
AM_TOKEN = "am-token-for-tests"


@pytest.fixture
async def client(database: Database) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings.model_validate(
        {
            "webhook_secrets": {"prom": AM_TOKEN, "ops": SECRET},
            "hooks": {"prom": {"mapping": {"components": {"job=*": "*"}}}},
        }
    )
    state = WebState(settings, database, FakeClock(START), "link-secret")
    app = create_app(state)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        yield http


def alertmanager_body() -> bytes:
    return (FIXTURES / "alertmanager" / "prom_post_request.json").read_bytes()


async def test_alertmanager_notification_declares_once(
    client: httpx.AsyncClient, database: Database
) -> None:
    headers = {"Authorization": f"Bearer {AM_TOKEN}"}
    response = await client.post(
        "/hooks/alertmanager/prom", content=alertmanager_body(), headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["counts"] == {"created": 1}
    again = await client.post(
        "/hooks/alertmanager/prom", content=alertmanager_body(), headers=headers
    )
    assert again.json()["counts"] == {"unchanged": 1}
    [incident] = await service.list_incidents(database)
    assert incident.source == "prom" and incident.title == "Prometheus Test"
    view = await service.show(database, incident.id)
    assert view.components == ["docker_nodes"]


async def test_alertmanager_auth_and_malformed_bodies(client: httpx.AsyncClient) -> None:
    good = {"Authorization": f"Bearer {AM_TOKEN}"}
    assert (
        await client.post("/hooks/alertmanager/prom", content=alertmanager_body())
    ).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (
        await client.post("/hooks/alertmanager/prom", content=alertmanager_body(), headers=wrong)
    ).status_code == 401
    unknown = await client.post(
        "/hooks/alertmanager/other", content=alertmanager_body(), headers=good
    )
    assert unknown.status_code == 404
    bad = await client.post("/hooks/alertmanager/prom", content=b"{not json", headers=good)
    assert bad.status_code == 400 and bad.json()["error"]
    old = json.dumps({"version": "3", "alerts": []}).encode()
    response = await client.post("/hooks/alertmanager/prom", content=old, headers=good)
    assert response.status_code == 400 and "version 4" in response.json()["error"]


def signed_body(**overrides: object) -> bytes:
    body: dict[str, object] = {
        "id": "ops-42",
        "title": "Ticket sales down",
        "message": "Ticket machines do not accept cards.",
        "status": "investigating",
        "severity": "major",
        "components": ["tickets"],
    }
    body.update(overrides)
    return json.dumps(body).encode()


async def test_signed_webhook_ok_then_resolved(
    client: httpx.AsyncClient, database: Database
) -> None:
    body = signed_body()
    headers = signed_webhook.sign(SECRET, body, int(START.timestamp()))
    response = await client.post("/hooks/incidents/ops", content=body, headers=headers)
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    assert result["kind"] == "created" and result["external_id"] == "ops-42"
    resolved = signed_body(status="resolved", message="Card payments work again.")
    headers = signed_webhook.sign(SECRET, resolved, int(START.timestamp()))
    response = await client.post("/hooks/incidents/ops", content=resolved, headers=headers)
    assert response.json()["counts"] == {"resolved": 1}
    [incident] = await service.list_incidents(database)
    assert incident.status == "resolved" and incident.external_id == "ops-42"


async def test_signed_webhook_refusals(client: httpx.AsyncClient, database: Database) -> None:
    body = signed_body()
    now = int(START.timestamp())
    forged = signed_webhook.sign("another-secret", body, now)
    response = await client.post("/hooks/incidents/ops", content=body, headers=forged)
    assert response.status_code == 401 and response.json()["error"] == "signature mismatch"

    stale = signed_webhook.sign(SECRET, body, now - 3600)
    response = await client.post("/hooks/incidents/ops", content=body, headers=stale)
    assert response.status_code == 401 and "replay window" in response.json()["error"]

    unsigned = await client.post("/hooks/incidents/ops", content=body)
    assert unsigned.status_code == 401

    broken = signed_body(severity="apocalyptic", status="exploded")
    response = await client.post(
        "/hooks/incidents/ops", content=broken, headers=signed_webhook.sign(SECRET, broken, now)
    )
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert any(e.startswith("severity:") for e in errors)
    assert any(e.startswith("status:") for e in errors)
    assert await service.list_incidents(database) == []


async def test_a_webhook_body_is_parsed_off_the_event_loop(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a (large, slow) body is parsed, the loop serves other tasks: the parser here
    waits for a task on the loop to let it go."""
    started = threading.Event()
    released = threading.Event()
    outcome: dict[str, bool] = {}

    def parser(data: bytes, mapping: object, *, source: str, now: datetime) -> ParseResult:
        started.set()
        outcome["released by the loop"] = released.wait(timeout=10)
        return ParseResult(skipped=[SkippedItem("nothing here")])

    monkeypatch.setattr(alertmanager, "parse", parser)

    async def other_work() -> None:
        await asyncio.to_thread(started.wait, 10)
        released.set()

    other = asyncio.create_task(other_work())
    headers = {"Authorization": f"Bearer {AM_TOKEN}"}
    response = await client.post(
        "/hooks/alertmanager/prom", content=alertmanager_body(), headers=headers
    )
    await other
    assert outcome == {"released by the loop": True}
    assert response.status_code == 400 and response.json()["error"] == "nothing here"
