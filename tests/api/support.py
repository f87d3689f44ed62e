"""An API client over httpx's ASGI transport, with one token per role."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from broadcaster.access import credentials
from broadcaster.access.roles import ROLES
from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.escalation.holder import RulesHolder
from broadcaster.escalation.plan import Escalation
from broadcaster.followups.directory import Directory
from broadcaster.store import Database
from broadcaster.web.app import create_app
from broadcaster.web.state import WebState

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SECRET = "link-secret-for-api-tests"
PUBLIC = "https://status.example.org"


def settings(rules: Path | None = None, **http: object) -> Settings:
    data: dict[str, object] = {
        "messages": {"public_url": PUBLIC, "organisation": "Example Transit"},
        "staff": {
            "people": {
                "ann": {"name": "Ann Agent", "manager": "max"},
                "max": {"name": "Max Manager"},
                "operator-bot": {"name": "Bot"},
            }
        },
        "http": http,
    }
    if rules is not None:
        data["rules"] = {"path": str(rules)}
    return Settings.model_validate(data)


@dataclass
class Api:
    http: httpx.AsyncClient
    state: WebState
    clock: FakeClock
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}

    async def call(
        self,
        method: str,
        path: str,
        role: str | None = "admin",
        *,
        json: object = None,
        params: dict[str, str | int] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        return await self.http.request(
            method,
            path,
            headers={**self.auth(role), **(headers or {})},
            json=json,
            params=params,
            content=content,
        )


@asynccontextmanager
async def api_client(database: Database, config: Settings | None = None) -> AsyncIterator[Api]:
    config = config or settings()
    clock = FakeClock(START)
    holder = RulesHolder(config)
    holder.load()
    directory = Directory(config.staff)
    state = WebState(
        config,
        database,
        clock,
        SECRET,
        scheduler_running=True,
        rules=holder,
        escalation=Escalation(config, holder, directory),
        directory=directory,
    )
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        api = Api(http, state, clock)
        for role in ROLES:
            _, secret = await credentials.create_token(
                database, clock, name=f"{role}-bot", role=role
            )
            api.tokens[role] = secret
        yield api
