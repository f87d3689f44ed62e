"""Feed watchers against a real local HTTP server: changes, ETags, failures, bad documents."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from broadcaster.cli import feeds as feeds_cli
from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.incidents import service
from broadcaster.intake.apply import resolve_vanished
from broadcaster.intake.watch import FeedSettings, FeedWatcher
from broadcaster.store import Database
from broadcaster.store.migrate import upgrade_async
from broadcaster.web.app import create_app
from broadcaster.web.state import WebState
from tests.fakes.http import serve

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)


@dataclass
class Feed:
    """What the fake Statuspage serves; the test edits it between polls."""

    incidents: list[dict[str, object]] = field(default_factory=list)
    status_code: int = 200
    raw: bytes | None = None
    etag_version: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)

    def body(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(
            {"page": {"url": "https://status.example.com"}, "incidents": self.incidents}
        ).encode()


def incident(
    updated: str, status: str = "investigating", body: str = "Card payments fail."
) -> dict[str, object]:
    return {
        "id": "abc123",
        "name": "Card payments failing",
        "status": status,
        "impact": "major",
        "updated_at": updated,
        "incident_updates": [{"body": body, "status": status, "display_at": updated}],
        "components": [{"id": "c1", "name": "Card payments"}],
    }


def app(feed: Feed) -> Starlette:
    async def document(request: Request) -> Response:
        feed.requests.append(dict(request.headers))
        if feed.status_code != 200:
            return Response("down", status_code=feed.status_code)
        etag = f'"v{feed.etag_version}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(feed.body(), media_type="application/json", headers={"ETag": etag})

    return Starlette(routes=[Route("/api/v2/incidents.json", document)])


@pytest.fixture
def served() -> Iterator[tuple[Feed, str]]:
    feed = Feed()
    with serve(app(feed)) as base:
        yield feed, f"{base}/api/v2/incidents.json"


def settings(url: str) -> FeedSettings:
    return FeedSettings.model_validate(
        {
            "name": "payments-status",
            "kind": "statuspage",
            "url": url,
            "interval": "30s",
            "timeout": "5s",
            "max_backoff": "5m",
            "hold": "0s",
            "mapping": {"components": {"Card payments": "payments"}},
        }
    )


async def test_changes_between_polls_and_etag(database: Database, served: tuple[Feed, str]) -> None:
    feed, url = served
    clock = FakeClock(START)
    watcher = FeedWatcher(settings(url), database, clock)
    feed.incidents = [incident("2026-01-06T07:55:00Z")]

    [created] = await watcher.poll_once()
    assert created.kind == "created" and created.incident_id is not None
    assert watcher.etag == '"v0"' and watcher.last_error is None

    # Unchanged: the server answers 304 to our If-None-Match.
    assert await watcher.poll_once() == []
    assert feed.requests[-1].get("if-none-match") == '"v0"'
    assert watcher.counters["not_modified"] == 1

    # An edit: new ETag, new version, one update; then resolved.
    feed.incidents = [incident("2026-01-06T08:05:00Z", "identified", "Cause found.")]
    feed.etag_version = 1
    clock.advance(60)
    [updated] = await watcher.poll_once()
    assert (updated.kind, updated.incident_id) == ("updated", created.incident_id)
    feed.incidents = [incident("2026-01-06T08:20:00Z", "resolved", "Fixed.")]
    feed.etag_version = 2
    [resolved] = await watcher.poll_once()
    assert resolved.kind == "resolved"
    view = await service.show(database, created.incident_id)
    assert view.incident.status == "resolved"
    assert view.components == ["payments"]
    assert [u.message for u in view.updates] == ["Card payments fail.", "Cause found.", "Fixed."]


async def test_a_failing_source_backs_off_then_recovers(
    database: Database, served: tuple[Feed, str]
) -> None:
    feed, url = served
    watcher = FeedWatcher(settings(url), database, FakeClock(START))
    feed.status_code = 503
    delays = []
    for _ in range(5):
        assert await watcher.poll_once() == []
        delays.append(watcher.next_delay())
    assert delays == [
        timedelta(seconds=60),
        timedelta(seconds=120),
        timedelta(seconds=240),
        timedelta(minutes=5),
        timedelta(minutes=5),
    ]
    assert watcher.last_error is not None and "HTTP 503" in watcher.last_error
    assert watcher.counters["failures"] == 5
    feed.status_code = 200
    await watcher.poll_once()
    assert watcher.failures == 0 and watcher.last_error is None
    assert watcher.next_delay() == timedelta(seconds=30)


async def test_an_unreachable_source_is_a_failure_not_a_crash(database: Database) -> None:
    watcher = FeedWatcher(settings("http://127.0.0.1:9/none"), database, FakeClock(START))
    assert await watcher.poll_once() == []
    assert watcher.failures == 1 and watcher.last_error


async def test_a_malformed_document_is_logged_and_skipped(
    database: Database, served: tuple[Feed, str], caplog: pytest.LogCaptureFixture
) -> None:
    feed, url = served
    watcher = FeedWatcher(settings(url), database, FakeClock(START))
    feed.raw = b"<html>not json</html>"
    with caplog.at_level(logging.WARNING, logger="broadcaster.intake"):
        assert await watcher.poll_once() == []
    assert watcher.last_error is not None and watcher.last_error.startswith("document refused")
    assert watcher.etag is None  # not remembered: the next poll fetches it again
    assert any(r.getMessage() == "feed poll failed" for r in caplog.records)

    # One bad item among good ones: logged with the source and reason, the rest applied.
    feed.raw = None
    feed.incidents = [
        {"id": "bad", "name": "x", "status": "exploded"},
        incident("2026-01-06T07:55:00Z"),
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="broadcaster.intake"):
        [created] = await watcher.poll_once()
    assert created.kind == "created"
    [skip] = [r for r in caplog.records if r.getMessage() == "feed item skipped"]
    assert skip.__dict__["source"] == "payments-status" and "status" in skip.__dict__["reason"]
    assert watcher.counters["skipped"] == 1 and watcher.last_error is None


async def test_a_snapshot_feed_resolves_missing_incidents_after_grace(
    database: Database, served: tuple[Feed, str]
) -> None:
    feed, url = served
    clock = FakeClock(START)
    config = settings(url).model_copy(update={"snapshot": True, "grace": timedelta(minutes=5)})
    watcher = FeedWatcher(config, database, clock)
    feed.incidents = [incident("2026-01-06T07:55:00Z")]
    [created] = await watcher.poll_once()
    feed.incidents = []
    feed.etag_version = 1
    assert await watcher.poll_once() == []  # missing, but within the grace period
    clock.advance(timedelta(minutes=5))
    [gone] = await watcher.poll_once()  # 304 now: the last snapshot still counts
    assert (gone.kind, gone.incident_id) == ("resolved", created.incident_id)
    assert created.incident_id is not None
    view = await service.show(database, created.incident_id)
    assert view.incident.status == "resolved"


def test_feeds_check_prints_the_plan_and_writes_nothing(
    served: tuple[Feed, str], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed, url = served
    asyncio.run(upgrade_async(sqlite_url))
    config = Settings.model_validate(
        {
            "database": {"url": sqlite_url},
            "feeds": [settings(url + "?api_key=SECRET-KEY").model_dump(mode="json")],
        }
    )
    monkeypatch.setattr(feeds_cli, "settings_or_exit", lambda path: config)
    feed.incidents = [
        incident("2026-01-06T07:55:00Z"),
        {"id": "bad", "name": "x", "status": "exploded"},
    ]
    result = CliRunner().invoke(feeds_cli.app, ["check"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith("1 event(s), 1 skipped")
    assert "SECRET-KEY" not in result.output  # a feed's key is not printed
    assert lines[1].split()[:2] == ["create", "abc123:"]
    assert lines[2].startswith("  skip      bad: status")

    async def count() -> int:
        db = Database(sqlite_url)
        try:
            return len(await service.list_incidents(db))
        finally:
            await db.dispose()

    assert asyncio.run(count()) == 0
    missing = CliRunner().invoke(feeds_cli.app, ["check", "nope"])
    assert missing.exit_code == 2
    feed.status_code = 500
    assert CliRunner().invoke(feeds_cli.app, ["check"]).exit_code == 1


async def test_healthz_reports_each_feed(served: tuple[Feed, str], database: Database) -> None:
    feed, url = served
    feed.raw = b"{not json"
    watcher = FeedWatcher(settings(url), database, FakeClock(START))
    await watcher.poll_once()
    state = WebState(
        Settings(), database, FakeClock(START), "secret", scheduler_running=True, feeds=[watcher]
    )
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        body = (await http.get("/healthz")).json()
    report = body["feeds"][watcher.name]
    assert report["last_poll"] is not None and "document refused" in report["last_error"]
    assert report["counts"]["failures"] == 1


async def test_a_store_outage_during_a_snapshot_poll_is_recorded_and_the_watcher_goes_on(
    database: Database, served: tuple[Feed, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open incidents a snapshot feed may resolve are read from the store at every
    poll, a 304 included; the store failing there is the feed's last error (the feed is
    fetched again at the next poll), not the end of the watcher's task, which nothing
    would start again."""
    feed, url = served
    clock = FakeClock(START)
    config = settings(url).model_copy(update={"snapshot": True, "grace": timedelta(0)})
    watcher = FeedWatcher(config, database, clock)
    feed.incidents = [incident("2026-01-06T07:55:00Z")]
    [created] = await watcher.poll_once()
    feed.incidents = []
    feed.etag_version = 1

    real_session = database.session

    def broken() -> object:
        raise OSError("the store is down")

    monkeypatch.setattr(database, "session", broken)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    async with asyncio.timeout(10):
        while watcher.last_error is None:
            await asyncio.sleep(0.01)
    assert not task.done()
    assert "store is down" in watcher.last_error
    monkeypatch.setattr(database, "session", real_session)
    [gone] = await watcher.poll_once()
    assert (gone.kind, gone.incident_id) == ("resolved", created.incident_id)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_resolving_a_vanished_incident_never_raises(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> object:
        raise OSError("the store is down")

    monkeypatch.setattr(database, "session", broken)
    outcome = await resolve_vanished(database, FakeClock(START), "payments-status", 7, "gone")
    assert outcome.kind == "error" and "store is down" in outcome.reason


class Endless(httpx.AsyncByteStream):
    """A body that never ends, in 64 KiB chunks (``pause`` seconds apart); counts what
    was read of it."""

    def __init__(self, pause: float = 0.0) -> None:
        self.pulled = 0
        self.pause = pause

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            if self.pause:
                await asyncio.sleep(self.pause)
            self.pulled += 65536
            yield b" " * 65536


async def test_a_document_over_the_limit_is_refused_while_it_is_read(database: Database) -> None:
    body = Endless()
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
    )
    watcher = FeedWatcher(
        settings("http://feeds.example/big"), database, FakeClock(START), client=client
    )
    assert await watcher.poll_once() == []
    assert watcher.failures == 1
    assert watcher.last_error is not None and "over the limit of 5242880 bytes" in str(
        watcher.last_error
    )
    assert body.pulled <= 5 * 1024 * 1024 + 65536  # it stopped reading at the limit
    await client.aclose()


async def test_a_source_that_trickles_bytes_for_ever_fails_at_the_fetch_deadline(
    database: Database,
) -> None:
    body = Endless(pause=0.05)
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
    )
    config = settings("http://feeds.example/slow?key=s3cret")
    config.timeout = timedelta(milliseconds=200)  # each wait is short: it never times out
    watcher = FeedWatcher(config, database, FakeClock(START), client=client)
    assert await watcher.poll_once() == []
    assert watcher.last_error == "the fetch of http://feeds.example/slow took over 0.6 s"
    await client.aclose()


async def test_a_failed_poll_names_the_feed_without_its_credentials(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    url = "https://reader:hunter2@feeds.example.net/gtfs-rt/alerts?api_key=SECRET-KEY-123#x"
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(503)))
    watcher = FeedWatcher(settings(url), database, FakeClock(START), client=client)
    with caplog.at_level(logging.WARNING, logger="broadcaster.intake"):
        assert await watcher.poll_once() == []
    assert watcher.last_error == "HTTP 503 from https://feeds.example.net/gtfs-rt/alerts"
    logged = [getattr(record, "error", "") for record in caplog.records]
    assert logged == [watcher.last_error]
    state = WebState(
        Settings(), database, FakeClock(START), "secret", scheduler_running=True, feeds=[watcher]
    )
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        health = await http.get("/healthz")
    assert "feeds.example.net/gtfs-rt/alerts" in health.text
    assert "SECRET-KEY-123" not in health.text and "hunter2" not in health.text
    await client.aclose()
