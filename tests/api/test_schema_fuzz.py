"""schemathesis against the whole OpenAPI document: generated requests for every operation,
sent to the app served by uvicorn; no answer may be a server error (5xx)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broadcaster.access import credentials
from broadcaster.clock import RealClock
from broadcaster.escalation.holder import RulesHolder
from broadcaster.escalation.plan import Escalation
from broadcaster.followups.directory import Directory
from broadcaster.incidents import service
from broadcaster.store import Database
from broadcaster.store.migrate import upgrade
from broadcaster.web.app import create_app
from broadcaster.web.state import WebState
from tests.api.support import SECRET
from tests.api.support import settings as api_settings
from tests.fakes.http import serve

EXAMPLES = 20


async def _seed(url: str) -> str:
    database = Database(url)
    try:
        clock = RealClock()
        await service.declare(
            database,
            clock,
            service.Declaration("Outage", "major", "Down.", components=["north"]),
        )
        _, secret = await credentials.create_token(database, clock, name="fuzz", role="admin")
        return secret
    finally:
        await database.dispose()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, dict[str, Any]]]:
    folder: Path = tmp_path_factory.mktemp("schema-fuzz")
    url = f"sqlite+aiosqlite:///{folder / 'store.db'}"
    upgrade(url)
    token = asyncio.run(_seed(url))
    config = api_settings()
    holder = RulesHolder(config)
    directory = Directory(config.staff)
    state = WebState(
        config,
        Database(url),
        RealClock(),
        SECRET,
        scheduler_running=True,
        rules=holder,
        escalation=Escalation(config, holder, directory),
        directory=directory,
    )
    app = create_app(state)
    document = app.openapi()
    try:
        with serve(app) as base:
            yield base, token, document
    finally:
        # The server's loop is gone; close its pooled connections from a fresh one.
        asyncio.run(state.database.dispose())


def test_no_generated_request_gets_a_server_error(
    served: tuple[str, str, dict[str, Any]],
) -> None:
    base, token, document = served
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) > 30

    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(), anonymous=st.booleans())
        def probe(case: schemathesis.Case[Any], anonymous: bool) -> None:
            headers = {} if anonymous else {"Authorization": f"Bearer {token}"}
            response = case.call(base_url=base, headers=headers, timeout=10)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:300]}\n{case.as_curl_command()}"
                )

        probe()

    assert not failures, "\n\n".join(failures[:10])
