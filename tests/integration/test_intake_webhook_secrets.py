"""Webhook secrets: refused empty at load, several at once for a rotation, never a 500; and
the body limit the docs state."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from broadcaster.clock import FakeClock
from broadcaster.config import ConfigError, Settings, load_settings
from broadcaster.intake import signed_webhook
from broadcaster.store import Database
from broadcaster.web.app import create_app
from broadcaster.web.state import WebState
from tests.conftest import FIXTURES

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
OLD, NEW = "whsec-old-for-tests", "whsec-new-for-tests"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('""', "the secret is empty"),
        ("${OPS_SECRET:-}", "the secret is empty"),
        ('["whsec-current", "  "]', "secret 2 of 2 is empty"),
        ("[]", "no secret given"),
    ],
)
def test_an_empty_webhook_secret_is_refused_at_load_naming_the_source(
    tmp_path: Path, value: str, problem: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"webhook_secrets:\n  ops-tool: {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    [message] = info.value.problems
    assert f"{path}:2:" in message and "webhook_secrets.ops-tool" in message
    assert problem in message


def test_a_secret_or_a_list_of_secrets_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"webhook_secrets:\n  one: whsec-one-for-tests\n  rotating: [{NEW}, {OLD}]\n",
        encoding="utf-8",
    )
    secrets = load_settings(path, {}).webhook_secrets
    assert [s.get_secret_value() for s in secrets["one"]] == ["whsec-one-for-tests"]
    assert [s.get_secret_value() for s in secrets["rotating"]] == [NEW, OLD]
    with pytest.raises(ValidationError):
        Settings.model_validate({"webhook_secrets": {"ops": [NEW, 7]}})


def test_two_sources_sharing_a_secret_are_refused(tmp_path: Path) -> None:
    """A signature covers the timestamp and the body, not the source it was sent to: with one
    secret for two sources, a request to one could be replayed to the other."""
    path = tmp_path / "config.yaml"
    path.write_text(
        f"webhook_secrets:\n  one: {OLD}\n  rotating: [{NEW}, {OLD}]\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    [message] = info.value.problems
    assert "webhook_secrets.rotating" in message
    assert "shares a secret with 'one'; give each source its own" in message
    assert OLD not in message


@pytest.fixture
async def state(database: Database) -> AsyncIterator[tuple[httpx.AsyncClient, WebState]]:
    settings = Settings.model_validate({"webhook_secrets": {"prom": [NEW, OLD], "ops": [NEW, OLD]}})
    web = WebState(settings, database, FakeClock(START), "link-secret")
    transport = httpx.ASGITransport(app=create_app(web))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        yield http, web


def body(incident_id: str) -> bytes:
    return json.dumps(
        {"id": incident_id, "title": "Down", "message": "It is down.", "status": "investigating"}
    ).encode()


async def test_during_a_rotation_either_secret_is_accepted(
    state: tuple[httpx.AsyncClient, WebState],
) -> None:
    http, _ = state
    now = int(START.timestamp())
    for number, secret in enumerate((NEW, OLD)):
        data = body(f"ops-{number}")
        signed = signed_webhook.sign(secret, data, now)
        answer = await http.post("/hooks/incidents/ops", content=data, headers=signed)
        assert answer.status_code == 200, answer.text
    data = body("ops-x")
    forged = signed_webhook.sign("whsec-someone-else", data, now)
    answer = await http.post("/hooks/incidents/ops", content=data, headers=forged)
    assert answer.status_code == 401

    alerts = (FIXTURES / "alertmanager" / "prom_post_request.json").read_bytes()
    for secret in (NEW, OLD):
        answer = await http.post(
            "/hooks/alertmanager/prom",
            content=alerts,
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert answer.status_code == 200, answer.text
    wrong = {"Authorization": "Bearer whsec-someone-else"}
    answer = await http.post("/hooks/alertmanager/prom", content=alerts, headers=wrong)
    assert answer.status_code == 401


async def test_an_empty_secret_that_got_past_the_settings_is_no_500_and_no_way_in(
    state: tuple[httpx.AsyncClient, WebState],
) -> None:
    """Settings made in code can be changed after validation; an empty key must neither
    crash the handler (it did: 500 on every request) nor let ``Bearer `` in."""
    http, web = state
    web.settings.webhook_secrets["prom"] = [SecretStr("")]
    web.settings.webhook_secrets["ops"] = [SecretStr("")]
    data = body("ops-1")
    headers = {"X-Broadcaster-Timestamp": str(int(START.timestamp())), "Authorization": "Bearer "}
    for path in ("/hooks/incidents/ops", "/hooks/alertmanager/prom"):
        answer = await http.post(path, content=data, headers=headers)
        assert answer.status_code == 404, answer.text
        assert "no webhook source" in answer.json()["error"]


async def test_a_webhook_body_over_the_http_limit_gets_413_as_documented(
    state: tuple[httpx.AsyncClient, WebState],
) -> None:
    """docs/intake.md said 5 MiB; ``http.max_body_bytes`` (1 MiB by default) comes first."""
    http, web = state
    limit = web.settings.http.max_body_bytes
    assert limit == 1024 * 1024
    data = b"{" + b" " * limit + b"}"
    signed = signed_webhook.sign(NEW, data, int(START.timestamp()))
    answer = await http.post("/hooks/incidents/ops", content=data, headers=signed)
    assert answer.status_code == 413
    assert "http.max_body_bytes" in answer.json()["error"]["message"]
    docs = (Path(__file__).parents[2] / "docs" / "intake.md").read_text(encoding="utf-8")
    assert "413 over 5 MiB" not in docs and "`http.max_body_bytes`" in docs
