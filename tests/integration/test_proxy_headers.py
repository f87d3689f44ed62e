"""Proxy headers are believed only from ``http.trusted_proxies`` (none by default).

uvicorn on its own believes ``X-Forwarded-For`` from 127.0.0.1, so any process on the host
could write any source address into the audit log. The daemon's server (``make_server``)
is run for real here: the ASGI test transport has no proxy-header middleware to test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import Request
from pydantic import ValidationError

from broadcaster.access import credentials
from broadcaster.clock import FakeClock
from broadcaster.config.settings import HttpSettings, Settings
from broadcaster.store import Database
from broadcaster.web.app import bind, create_app, make_server
from broadcaster.web.state import WebState, client_source

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
FORGED = "203.0.113.9"


@asynccontextmanager
async def served(settings: Settings, database: Database) -> AsyncIterator[str]:
    state = WebState(settings, database, FakeClock(START), "link-secret", scheduler_running=True)
    app = create_app(state)

    @app.get("/test/source")
    async def source(request: Request) -> dict[str, str]:
        return {"source": client_source(request)}

    listener = bind("127.0.0.1", 0)
    server = make_server(app, "127.0.0.1", 0)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


async def source_seen(base: str) -> str:
    async with httpx.AsyncClient(base_url=base) as http:
        answer = await http.get("/test/source", headers={"X-Forwarded-For": FORGED})
        value: str = answer.json()["source"]
        return value


async def test_a_local_client_cannot_forge_its_address_by_default(database: Database) -> None:
    async with served(Settings(), database) as base:
        assert await source_seen(base) == "127.0.0.1"
        # And so the audit log records where the request really came from.
        clock = FakeClock(START)
        _, token = await credentials.create_token(database, clock, name="ops", role="admin")
        async with httpx.AsyncClient(base_url=base) as http:
            headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": FORGED}
            declared = await http.post(
                "/api/v1/incidents",
                headers=headers,
                json={
                    "title": "Down",
                    "severity": "minor",
                    "message": "Down.",
                    "components": ["x"],
                },
            )
            assert declared.status_code == 201, declared.text
            audit = (await http.get("/api/v1/audit", headers=headers)).json()["items"]
        [entry] = [a for a in audit if a["action"] == "incident.declare"]
        assert entry["source"] == "127.0.0.1"


async def test_a_configured_proxy_is_believed(database: Database) -> None:
    settings = Settings.model_validate({"http": {"trusted_proxies": ["127.0.0.0/8"]}})
    async with served(settings, database) as base:
        assert await source_seen(base) == FORGED


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert HttpSettings().trusted_proxies == []
    ok = HttpSettings.model_validate({"trusted_proxies": ["10.0.0.5", "10.1.0.0/16", "::1"]})
    assert ok.trusted_proxies == ["10.0.0.5", "10.1.0.0/16", "::1"]
    assert HttpSettings.model_validate({"trusted_proxies": ["*"]}).trusted_proxies == ["*"]
    with pytest.raises(ValidationError, match="not an IP address or network"):
        HttpSettings.model_validate({"trusted_proxies": ["proxy.internal"]})
    # What the server would take for a literal, and so silently trust nobody with:
    with pytest.raises(ValidationError, match=r"host bits set: the network is 10\.0\.0\.0/24"):
        HttpSettings.model_validate({"trusted_proxies": ["10.0.0.5/24"]})
    with pytest.raises(ValidationError, match="give it alone"):
        HttpSettings.model_validate({"trusted_proxies": ["*", "10.0.0.1"]})
