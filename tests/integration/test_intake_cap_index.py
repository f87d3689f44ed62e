"""A CAP index feed: the watcher fetches each linked alert once, and again when updated."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broadcaster.clock import FakeClock
from broadcaster.intake.watch import FeedSettings, FeedWatcher
from broadcaster.store import Database, Incident
from tests.conftest import FIXTURES
from tests.fakes.http import serve

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
ALERTS = {
    "a1": FIXTURES / "cap" / "oasis-cap12-appendix-a1.xml",
    "a3": FIXTURES / "cap" / "oasis-cap12-appendix-a3.xml",
}


def index(base: str, updated: str) -> bytes:
    entries = "".join(
        f"<entry><id>urn:{name}</id><title>{name}</title><updated>{updated}</updated>"
        f'<link rel="alternate" type="application/cap+xml" href="{base}/alerts/{name}.xml"/>'
        "</entry>"
        for name in ALERTS
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        f"<id>urn:index</id><title>alerts</title><updated>{updated}</updated>{entries}</feed>"
    ).encode()


def cap_feed(url: str) -> FeedSettings:
    return FeedSettings.model_validate(
        {
            "name": "cap-feed",
            "kind": "cap_index",
            "url": url,
            "mapping": {"regions": {"*": "*"}, "components": {"*": "*"}},
            "hold": "0s",
        }
    )


@pytest.fixture
def served() -> Iterator[tuple[dict[str, int], str]]:
    fetched: dict[str, int] = {}
    state = {"updated": "2026-01-06T08:00:00Z", "base": ""}

    async def idx(request: Request) -> Response:
        return Response(index(state["base"], state["updated"]), media_type="application/atom+xml")

    async def alert(request: Request) -> Response:
        name = request.path_params["name"]
        fetched[name] = fetched.get(name, 0) + 1
        return Response(ALERTS[name].read_bytes(), media_type="application/cap+xml")

    app = Starlette(routes=[Route("/index.atom", idx), Route("/alerts/{name}.xml", alert)])
    with serve(app) as base:
        state["base"] = base
        yield fetched, base


async def test_index_alerts_are_fetched_once_each(
    database: Database, served: tuple[dict[str, int], str]
) -> None:
    fetched, base = served
    watcher = FeedWatcher(cap_feed(f"{base}/index.atom"), database, FakeClock(START))
    first = await watcher.poll_once()
    assert fetched.get("a1") == 1 and fetched.get("a3") == 1
    assert any(a.kind == "created" for a in first), first
    again = await watcher.poll_once()
    assert fetched.get("a1") == 1 and fetched.get("a3") == 1  # unchanged entries: not refetched
    assert all(a.kind in ("unchanged", "ignored") for a in again)
    async with database.session() as session:
        count = (
            await session.execute(
                select(func.count()).select_from(Incident).where(Incident.source == "cap-feed")
            )
        ).scalar_one()
    assert count >= 1


async def test_a_link_no_client_can_fetch_is_skipped_and_the_others_applied(
    database: Database, served: tuple[dict[str, int], str]
) -> None:
    """An entry whose link httpx cannot even parse (a host that is no IPv4 address) is
    skipped with its reason; the index's other alerts are still fetched and applied."""
    fetched, base = served
    good = index(base, "2026-01-06T08:00:00Z").decode()
    bad_entry = (
        "<entry><id>urn:bad</id><title>bad</title><updated>2026-01-06T08:00:00Z</updated>"
        '<link rel="alternate" type="application/cap+xml" href="http://999.1.1.1/a.xml"/>'
        "</entry>"
    )
    document = good.replace("</feed>", bad_entry + "</feed>").encode()

    async def idx(request: Request) -> Response:
        return Response(document, media_type="application/atom+xml")

    app = Starlette(routes=[Route("/index.atom", idx)])
    with serve(app) as index_base:
        watcher = FeedWatcher(cap_feed(f"{index_base}/index.atom"), database, FakeClock(START))
        applied = await watcher.poll_once()
    assert fetched.get("a1") == 1 and fetched.get("a3") == 1
    assert any(a.kind == "created" for a in applied), applied
    assert watcher.last_error is None and watcher.failures == 0
    assert watcher.counters["skipped"] >= 1


async def test_an_alert_the_store_failed_to_take_is_fetched_again(
    database: Database, served: tuple[dict[str, int], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An alert counts as seen only once its events are applied: with the store down at
    the first poll, the next one fetches and applies it."""
    fetched, base = served
    watcher = FeedWatcher(cap_feed(f"{base}/index.atom"), database, FakeClock(START))

    def down() -> object:
        raise OSError("the store is down")

    with monkeypatch.context() as patch:
        patch.setattr(database, "session", down)
        failed = await watcher.poll_once()
    assert failed and all(a.kind == "error" for a in failed), failed
    again = await watcher.poll_once()
    assert any(a.kind == "created" for a in again), again
    assert fetched.get("a1") == 2
    async with database.session() as session:
        count = (
            await session.execute(
                select(func.count()).select_from(Incident).where(Incident.source == "cap-feed")
            )
        ).scalar_one()
    assert count >= 1
