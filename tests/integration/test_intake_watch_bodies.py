"""What a feed watcher reads: compressed bodies under the limit, parsing off the event loop,
and the items a snapshot feed still lists."""

from __future__ import annotations

import asyncio
import gzip
import threading
import types
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from google.transit import gtfs_realtime_pb2 as gtfs

from broadcaster.clock import FakeClock
from broadcaster.intake import body as body_module
from broadcaster.intake import watch
from broadcaster.intake.events import ParseResult
from broadcaster.intake.watch import FeedSettings, FeedWatcher
from broadcaster.store import Database, Incident

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
LIMIT = 5 * 1024 * 1024
DOCUMENT = b'{"page": {"url": "https://status.example.com"}, "incidents": []}'


def settings(url: str, kind: str = "statuspage", **extra: object) -> FeedSettings:
    return FeedSettings.model_validate(
        {"name": "payments-status", "kind": kind, "url": url, "hold": "0s", **extra}
    )


def answer(content: bytes, encoding: str | None = None) -> httpx.Response:
    """A 200 whose body the client reads off the wire (raw), as from a real server."""
    headers = {"Content-Encoding": encoding} if encoding else {}
    return httpx.Response(200, stream=httpx.ByteStream(content), headers=headers)


def serving(
    content: bytes, encoding: str | None = None, seen: list[httpx.Request] | None = None
) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return answer(content, encoding)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_a_gzip_document_is_read_and_gzip_is_asked_for(database: Database) -> None:
    seen: list[httpx.Request] = []
    async with serving(gzip.compress(DOCUMENT), "gzip", seen=seen) as client:
        watcher = FeedWatcher(settings("http://feeds.example/s"), database, FakeClock(START))
        watcher.client = client
        assert await watcher.fetch() == DOCUMENT
    assert "gzip" in seen[0].headers["Accept-Encoding"]


async def test_a_deflate_document_is_read_wrapped_or_raw(database: Database) -> None:
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for encoded in (zlib.compress(DOCUMENT), raw.compress(DOCUMENT) + raw.flush()):
        async with serving(encoded, "deflate") as client:
            watcher = FeedWatcher(settings("http://feeds.example/s"), database, FakeClock(START))
            watcher.client = client
            assert await watcher.fetch() == DOCUMENT


class _Counting:
    """A zlib decompressor that counts the bytes it gave out."""

    def __init__(self, inner: Any, counter: list[int]) -> None:
        self.inner = inner
        self.counter = counter

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        out: bytes = self.inner.decompress(data, max_length)
        self.counter[0] += len(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize(
    ("encoding", "layers", "refused"),
    [
        ("gzip", 1, "over the limit of 5242880 bytes"),
        ("gzip, gzip", 2, "sent more than one Content-Encoding (gzip, gzip)"),
        ("br", 1, "sent Content-Encoding 'br'; only gzip and deflate are read"),
    ],
)
async def test_a_compressed_bomb_is_refused_without_inflating_it(
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
    encoding: str,
    layers: int,
    refused: str,
) -> None:
    """A few kilobytes on the wire, gigabytes inflated (httpx decoded whole chunks, and
    every stacked coding): refused, and no more than the limit is ever inflated."""
    inflated = [0]
    counting = types.SimpleNamespace(
        **{name: getattr(zlib, name) for name in ("MAX_WBITS", "error")},
        decompressobj=lambda *a: _Counting(zlib.decompressobj(*a), inflated),
    )
    monkeypatch.setattr(body_module, "zlib", counting)
    bomb = b"\0" * (64 * 1024 * 1024)
    for _ in range(layers):
        bomb = gzip.compress(bomb, compresslevel=9)
    assert len(bomb) < 200_000
    async with serving(bomb, encoding) as client:
        config = settings("http://feeds.example/bomb?key=s3cret")
        watcher = FeedWatcher(config, database, FakeClock(START), client=client)
        assert await watcher.poll_once() == []
    assert watcher.failures == 1
    assert watcher.last_error is not None and refused in watcher.last_error
    if layers > 1 or encoding == "br":
        assert "http://feeds.example/bomb" in watcher.last_error  # the feed, named
        assert "s3cret" not in watcher.last_error
    assert inflated[0] <= LIMIT + 1


async def test_a_compressed_body_cut_short_is_refused(database: Database) -> None:
    cut = gzip.compress(DOCUMENT * 100)[:-40]
    async with serving(cut, "gzip") as client:
        watcher = FeedWatcher(
            settings("http://feeds.example/s"), database, FakeClock(START), client=client
        )
        assert await watcher.poll_once() == []
    assert watcher.last_error is not None and "ends early" in watcher.last_error


async def test_a_document_is_parsed_off_the_event_loop(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a (large, slow) document is parsed, the loop goes on serving other tasks: the
    parser here waits for a task on the loop to let it go."""
    started = threading.Event()
    released = threading.Event()
    outcome: dict[str, bool] = {}

    def parser(data: bytes, mapping: object, *, source: str, now: datetime) -> ParseResult:
        started.set()
        outcome["released by the loop"] = released.wait(timeout=10)
        return ParseResult()

    monkeypatch.setitem(watch.PARSERS, "statuspage", parser)
    async with serving(DOCUMENT) as client:
        watcher = FeedWatcher(
            settings("http://feeds.example/s"), database, FakeClock(START), client=client
        )

        async def other_work() -> None:
            await asyncio.to_thread(started.wait, 10)
            released.set()

        other = asyncio.create_task(other_work())
        assert await watcher.poll_once() == []
        await other
    assert outcome == {"released by the loop": True}
    assert watcher.last_error is None


def gtfs_feed(entity_id: str, start: datetime, now: datetime) -> bytes:
    message = gtfs.FeedMessage()
    message.header.gtfs_realtime_version = "2.0"
    message.header.incrementality = gtfs.FeedHeader.FULL_DATASET
    message.header.timestamp = int(now.timestamp())
    entity = message.entity.add()
    entity.id = entity_id
    alert = entity.alert
    alert.active_period.add().start = int(start.timestamp())
    alert.header_text.translation.add(text="Red line suspended", language="en")
    alert.description_text.translation.add(text="Shuttle buses replace trains.", language="en")
    alert.informed_entity.add(route_id="Red")
    alert.effect = gtfs.Alert.NO_SERVICE
    encoded: bytes = message.SerializeToString()
    return encoded


@pytest.mark.parametrize("length", [30, 200])
async def test_a_snapshot_item_still_listed_but_skipped_stays_open(
    database: Database, length: int
) -> None:
    """Skipped items' ids are cut short for the log (120 characters); the check for
    vanished items compares the whole id."""
    entity_id = "alert-" + "x" * (length - 6)
    clock = FakeClock(START)
    documents = [gtfs_feed(entity_id, START - timedelta(hours=1), START)]

    def handler(request: httpx.Request) -> httpx.Response:
        return answer(documents[-1])

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        config = settings("http://feeds.example/gtfs", "gtfs_rt", grace="5m")
        watcher = FeedWatcher(config, database, clock, client=client)
        [created] = await watcher.poll_once()
        assert created.kind == "created"
        # The agency postpones the same alert: not active yet, skipped, still listed.
        for _ in range(2):
            clock.advance(timedelta(minutes=6))
            documents.append(gtfs_feed(entity_id, clock.now() + timedelta(hours=2), clock.now()))
            assert await watcher.poll_once() == []
            assert watcher.counters["skipped"] >= 1
    async with database.session() as session:
        row = await session.get(Incident, created.incident_id)
        assert row is not None and row.status != "resolved" and row.resolved_at is None
