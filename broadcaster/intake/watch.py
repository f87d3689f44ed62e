"""Polling configured feeds: fetch (conditional GET), parse, apply; one watcher per source.

A :class:`FeedWatcher` owns one :class:`FeedSettings` entry. Each runs in its own task
(:meth:`FeedWatcher.run`), so a slow or dead source never delays another. A poll that
fails (network error, HTTP error status, a document the parser refuses) is logged,
recorded in ``last_error`` and retried with exponential backoff (``interval`` doubled per
consecutive failure, capped at ``max_backoff``). ``ETag`` / ``Last-Modified`` are kept in
memory and sent back (``If-None-Match`` / ``If-Modified-Since``); they are remembered only
after a document was applied without errors, so an event that failed is retried.

A snapshot document (a GTFS-rt full dataset, or any feed with ``snapshot: true``, such as
Statuspage's ``unresolved.json``) lists every current item: an open incident of the source
missing from it for ``grace`` is resolved.

The CAP feeds (``cap``, ``cap_index``) are one another's ``peers``: a CAP alert's
``sender,identifier`` is unique worldwide, so the same alert is one incident whichever of
them brings it (:func:`~broadcaster.intake.apply.apply_event`). The ids of other kinds
(an RSS guid, a Statuspage id) are their feed's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, field_validator
from sqlalchemy import select

from broadcaster.clock import Clock
from broadcaster.incidents.lifecycle import OPEN_STATUSES
from broadcaster.intake import cap, cap_index, gtfs_rt, rss, statuspage
from broadcaster.intake.apply import Applied, apply_event, base_external_id, resolve_vanished
from broadcaster.intake.body import ACCEPT_ENCODING, BodyDecoder, BodyError
from broadcaster.intake.events import (
    FeedError,
    IncidentEvent,
    ParseResult,
    SkippedItem,
    SourceMapping,
)
from broadcaster.store import Database, Incident

if TYPE_CHECKING:
    from broadcaster.escalation.plan import Escalation

log = logging.getLogger("broadcaster.intake")

Severity = Literal["minor", "major", "critical"]
FeedKind = Literal["statuspage", "rss", "gtfs_rt", "cap", "cap_index"]
SHARED_ID_KINDS: Final = frozenset({"cap", "cap_index"})
"""Feed kinds whose item ids are unique across sources: their feeds share their items."""
MAX_INDEX_LINKS: Final = 50
"""Alerts fetched from one CAP index poll at most (the newest first)."""
Parser = Callable[..., ParseResult]

PARSERS: Final[Mapping[str, Parser]] = {
    "statuspage": statuspage.parse,
    "rss": rss.parse,
    "gtfs_rt": gtfs_rt.parse,
    "cap": cap.parse,
}
USER_AGENT: Final = "broadcaster-feeds/1"


def _parse_duration(value: object) -> timedelta:
    # Imported when used: broadcaster.config.settings imports this module, and importing
    # broadcaster.config here would make that a cycle.
    from broadcaster.config.durations import parse_duration

    return parse_duration(value)


def _format_duration(value: timedelta) -> str:
    from broadcaster.config.durations import format_duration

    return format_duration(value)


Duration = Annotated[
    timedelta,
    BeforeValidator(_parse_duration),
    PlainSerializer(_format_duration, return_type=str),
]
"""``broadcaster.config.durations.Duration``, without importing the config package here."""


class MappingSettings(BaseModel):
    """A source's vocabulary (see docs/intake.md, "Mapping")."""

    model_config = ConfigDict(extra="forbid")

    components: dict[str, str] = Field(default_factory=dict)
    regions: dict[str, str] = Field(default_factory=dict)
    severities: dict[str, Severity] = Field(default_factory=dict)
    default_severity: Severity = "minor"

    def source_mapping(self) -> SourceMapping:
        return SourceMapping(
            components=self.components,
            regions=self.regions,
            severities=dict(self.severities),
            default_severity=self.default_severity,
        )


class HookSettings(BaseModel):
    """An inbound webhook source (``hooks:`` in config.yaml); all optional."""

    model_config = ConfigDict(extra="forbid")

    mapping: MappingSettings = Field(default_factory=MappingSettings)
    hold: Duration = timedelta(0)
    """0 by default: senders such as Alertmanager already wait (group_wait) before sending."""
    reopen_within: Duration = timedelta(hours=1)


class FeedSettings(BaseModel):
    """One polled source (``feeds:`` in config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    """The source name: incidents from this feed carry it; it must stay stable."""
    kind: FeedKind
    url: str
    interval: Duration = timedelta(seconds=60)
    timeout: Duration = timedelta(seconds=10)
    mapping: MappingSettings = Field(default_factory=MappingSettings)
    hold: Duration = timedelta(seconds=30)
    """How long a new incident's first round waits (like Alertmanager's group_wait)."""
    reopen_within: Duration = timedelta(hours=1)
    """A resolved item open again within this is reopened; later it is a new incident."""
    grace: Duration = timedelta(minutes=5)
    """Snapshot feeds: how long an incident may be missing before it is resolved."""
    snapshot: bool | None = None
    """Treat every document as a full list of current items (None: as the parser says)."""
    max_backoff: Duration = timedelta(minutes=15)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("a feed URL must be http:// or https://")
        return value

    @field_validator("interval", "timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be more than 0s")
        return value


FETCH_DEADLINE = 3
"""A feed's whole fetch (connect, answer, body) must end within this many of its
``timeout``, which httpx applies to each wait on its own."""


def shown_url(url: str) -> str:
    """``url`` as the feed's errors and logs name it: scheme, host, port and path, without
    the user and password or the query, where a feed's credentials go (``/healthz`` shows a
    feed's last error to anyone)."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "(the feed's URL)"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class FetchError(Exception):
    """The document could not be fetched (network, timeout, or an HTTP error status)."""


@dataclass
class FeedWatcher:
    """Polls one source; its attributes are what ``/healthz`` and the CLI report."""

    feed: FeedSettings
    database: Database
    clock: Clock
    client: httpx.AsyncClient | None = None
    last_poll: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    failures: int = 0
    """Consecutive failed polls (drives the backoff)."""
    counters: dict[str, int] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    escalation: Escalation | None = None
    """The engine's: the rules' compensation on the resolutions this feed reports (and
    the parts they require, logged when missing: :mod:`broadcaster.intake.resolution`)."""
    peers: frozenset[str] = frozenset()
    """The other feeds whose items are this feed's when their ids are equal (for a CAP
    feed, every CAP feed: :func:`watchers_for`)."""
    _missing_since: dict[int, datetime] = field(default_factory=dict, init=False)
    _last_snapshot_ids: set[str] | None = field(default=None, init=False)
    _pending_validators: tuple[str | None, str | None] = field(default=(None, None), init=False)
    _index_seen: dict[str, datetime | None] = field(default_factory=dict, init=False)
    _index_pending: list[tuple[str, datetime | None, list[IncidentEvent]]] = field(
        default_factory=list, init=False
    )

    @property
    def name(self) -> str:
        return self.feed.name

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def next_delay(self) -> timedelta:
        """The wait before the next poll: the interval, or the backoff after failures."""
        if self.failures == 0:
            return self.feed.interval
        cap_at = max(self.feed.max_backoff, self.feed.interval)
        exponent = min(self.failures, 30)
        delay: timedelta = self.feed.interval * (2**exponent)
        return min(delay, cap_at)

    async def fetch(self) -> bytes | None:
        """The document, or None when the server says it has not changed (304)."""
        headers = {"User-Agent": USER_AGENT}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        response, content = await self._download(self.feed.url, headers)
        if response.status_code == 304:
            return None
        if response.status_code != 200:
            raise FetchError(f"HTTP {response.status_code} from {shown_url(self.feed.url)}")
        self._pending_validators = (
            response.headers.get("ETag"),
            response.headers.get("Last-Modified"),
        )
        return content

    async def _get(self, url: str) -> bytes:
        response, content = await self._download(url, {"User-Agent": USER_AGENT})
        if response.status_code != 200:
            raise FetchError(f"HTTP {response.status_code} from {shown_url(url)}")
        return content

    async def _download(self, url: str, headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
        """The answer to a GET of ``url`` and, for a 200, its body: read as it comes and
        refused past the mapping's ``max_document_bytes`` (decoded here, a bounded piece at a
        time, so a compressed bomb is refused too: :mod:`broadcaster.intake.body`), the
        whole fetch within :data:`FETCH_DEADLINE` timeouts (the timeout bounds each wait; a
        server trickling bytes would otherwise never time out)."""
        limit = self.feed.mapping.source_mapping().limits.max_document_bytes
        headers = {**headers, "Accept-Encoding": ACCEPT_ENCODING}
        timeout = httpx.Timeout(self.feed.timeout.total_seconds())
        deadline = self.feed.timeout.total_seconds() * FETCH_DEADLINE

        async def read(client: httpx.AsyncClient) -> tuple[httpx.Response, bytes]:
            async with client.stream(
                "GET", url, headers=headers, timeout=timeout, follow_redirects=True
            ) as response:
                if response.status_code != 200:
                    return response, b""
                if response.is_stream_consumed:
                    # An in-memory transport (httpx's MockTransport, as the tests use) hands
                    # over a body it read and decoded already; a network transport never
                    # does, so the bounded decoding below is what a real feed goes through.
                    body = BodyDecoder("", limit, shown_url(url))
                    body.feed(response.content)
                    return response, body.finish()
                body = BodyDecoder(
                    response.headers.get("Content-Encoding", ""), limit, shown_url(url)
                )
                # Raw: httpx would decode each chunk whole (a 1 KiB chunk of a gzip bomb is
                # gigabytes) before the limit could be looked at.
                async for chunk in response.aiter_raw():
                    body.feed(chunk)
                return response, body.finish()

        try:
            async with asyncio.timeout(deadline):
                if self.client is not None:
                    return await read(self.client)
                async with httpx.AsyncClient() as client:
                    return await read(client)
        except BodyError as exc:
            raise FetchError(exc.args[0]) from None
        except TimeoutError as exc:
            raise FetchError(f"the fetch of {shown_url(url)} took over {deadline:g} s") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL: not an HTTPError
            raise FetchError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc

    async def parse_index(self, data: bytes) -> ParseResult:
        """A CAP index: fetch the alerts it links that are new or updated since the last
        poll, and parse each; an alert that cannot be fetched or parsed is skipped.

        An alert counts as seen (not fetched again at that ``updated`` time) only once its
        events are applied (:meth:`_mark_index_seen`): one that the store failed to take
        is fetched and applied again at the next poll."""
        index = await asyncio.to_thread(cap_index.parse_index, data)
        result = ParseResult(events=[], skipped=list(index.skipped))
        self._index_pending = []
        links = sorted(
            index.links, key=lambda link: link.updated or datetime.min.replace(tzinfo=UTC)
        )[-MAX_INDEX_LINKS:]
        mapping = self.feed.mapping.source_mapping()
        for link in links:
            key = link.entry_id or link.url
            if key in self._index_seen and self._index_seen[key] == link.updated:
                continue
            try:
                body = await self._get(link.url)
                alert = await asyncio.to_thread(
                    cap.parse, body, mapping, source=self.name, now=self.clock.now()
                )
            except (FetchError, FeedError) as exc:
                reason = exc.args[0] if isinstance(exc, FetchError) else exc.reason
                result.skipped.append(SkippedItem(f"alert {shown_url(link.url)}: {reason}", key))
                continue
            except Exception as exc:  # one link must not keep the index's other alerts out
                reason = f"{type(exc).__name__}: {exc}"
                result.skipped.append(SkippedItem(f"alert {shown_url(link.url)}: {reason}", key))
                continue
            self._index_pending.append((key, link.updated, alert.events))
            result.events.extend(alert.events)
            result.skipped.extend(alert.skipped)
        return result

    def _mark_index_seen(self, applied: Mapping[int, Applied]) -> None:
        """The CAP index's alerts whose events all applied (by ``id(event)``) are seen."""
        for key, updated, events in self._index_pending:
            if all(id(e) in applied and applied[id(e)].kind != "error" for e in events):
                self._index_seen[key] = updated
        self._index_pending = []

    def parse(self, data: bytes, now: datetime | None = None) -> ParseResult:
        """The document's events and skipped items, as of ``now`` (the clock's, if None)."""
        parser = PARSERS[self.feed.kind]
        result: ParseResult = parser(
            data,
            self.feed.mapping.source_mapping(),
            source=self.name,
            now=now if now is not None else self.clock.now(),
        )
        return result

    async def parse_in_thread(self, data: bytes) -> ParseResult:
        """:meth:`parse` in a worker thread: a large document takes seconds to read, and
        the event loop serves every other feed, the web and the dispatch meanwhile. (The
        parsers keep no state between calls; the time is read here, on the loop.)"""
        return await asyncio.to_thread(self.parse, data, self.clock.now())

    def _fail(self, reason: str) -> None:
        self.failures += 1
        # Whatever put the feed's URL in the reason (an HTTP library's message), not its
        # credentials: the last error is public (/healthz).
        reason = reason.replace(self.feed.url, shown_url(self.feed.url))
        self.last_error = reason
        self._count("failures")
        log.warning(
            "feed poll failed",
            extra={
                "source": self.name,
                "error": reason,
                "retry_in_s": self.next_delay().total_seconds(),
            },
        )

    async def poll_once(self) -> list[Applied]:
        """One fetch-parse-apply cycle; never raises (failures are recorded)."""
        self.last_poll = self.clock.now()
        self._count("polls")
        self._pending_validators = (None, None)
        try:
            data = await self.fetch()
        except FetchError as exc:
            self._fail(exc.args[0])
            return []
        if data is None:
            self._count("not_modified")
            self._succeed()
            if self._last_snapshot_ids is None:
                return []
            vanished = await self._resolve_vanished(self._last_snapshot_ids)
            self._note_errors(vanished)
            return vanished
        try:
            if self.feed.kind == "cap_index":
                result = await self.parse_index(data)
            else:
                result = await self.parse_in_thread(data)
        except FeedError as exc:
            self._fail(f"document refused: {exc.reason}")
            return []
        except Exception as exc:  # a parser bug must not kill the watcher
            self._fail(f"parser error: {type(exc).__name__}: {exc}")
            return []
        for skipped in result.skipped:
            self._count("skipped")
            log.warning(
                "feed item skipped",
                extra={"source": self.name, "item": skipped.item_id, "reason": skipped.reason},
            )
        applied: list[Applied] = []
        by_event: dict[int, Applied] = {}
        for event in result.events:
            outcome = await apply_event(
                self.database,
                self.clock,
                event,
                hold=self.feed.hold,
                reopen_within=self.feed.reopen_within,
                escalation=self.escalation,
                peers=self.peers,
            )
            self._count(outcome.kind)
            if outcome.kind == "error":
                log.warning(
                    "feed event failed",
                    extra={
                        "source": self.name,
                        "item": event.external_id,
                        "reason": outcome.reason,
                    },
                )
            applied.append(outcome)
            by_event[id(event)] = outcome
        self._mark_index_seen(by_event)
        snapshot = result.snapshot if self.feed.snapshot is None else self.feed.snapshot
        if snapshot:
            present = result.present()
            self._last_snapshot_ids = present
            applied.extend(await self._resolve_vanished(present))
        self._succeed()
        if not self._note_errors(applied):
            # Validators only once all is applied: else the next poll fetches again and
            # retries what failed.
            self.etag, self.last_modified = self._pending_validators
        return applied

    def _note_errors(self, applied: list[Applied]) -> bool:
        """Keep the first of the events not applied as the feed's last error; True if any."""
        errors = [a for a in applied if a.kind == "error"]
        if errors:
            self.last_error = f"{len(errors)} event(s) not applied: {errors[0].reason}"
        return bool(errors)

    def _succeed(self) -> None:
        self.failures = 0
        self.last_error = None
        self.last_success = self.clock.now()

    async def _resolve_vanished(self, present: set[str]) -> list[Applied]:
        now = self.clock.now()
        try:
            async with self.database.session() as session:
                rows = (
                    await session.execute(
                        select(Incident.id, Incident.external_id).where(
                            Incident.source == self.name, Incident.status.in_(OPEN_STATUSES)
                        )
                    )
                ).all()
        except Exception as exc:  # the store may be down: the next poll looks again
            self._count("error")
            reason = f"cannot read the feed's open incidents: {type(exc).__name__}: {exc}"
            log.warning("feed event failed", extra={"source": self.name, "reason": reason})
            return [Applied("error", self.name, "", None, reason)]
        open_missing: set[int] = set()
        applied: list[Applied] = []
        for incident_id, external_id in rows:
            if external_id is None or base_external_id(external_id, present) in present:
                continue
            open_missing.add(incident_id)
            since = self._missing_since.setdefault(incident_id, now)
            if now - since >= self.feed.grace:
                outcome = await resolve_vanished(
                    self.database,
                    self.clock,
                    self.name,
                    incident_id,
                    f"missing from the feed since {since:%Y-%m-%d %H:%M:%S}Z",
                    self.escalation,
                )
                self._count(outcome.kind)
                applied.append(outcome)
                open_missing.discard(incident_id)
        self._missing_since = {k: v for k, v in self._missing_since.items() if k in open_missing}
        return applied

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set: at the interval, or backing off after failures."""
        log.info(
            "feed watcher started", extra={"source": self.name, "url": shown_url(self.feed.url)}
        )
        while not stop.is_set():
            try:
                await self.poll_once()
            except Exception as exc:  # poll_once records its failures; this is for its bugs
                log.exception("feed poll raised", extra={"source": self.name})
                self._fail(f"unexpected error: {type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.next_delay().total_seconds())
        log.info("feed watcher stopped", extra={"source": self.name})


def peers_of(feed: FeedSettings, feeds: list[FeedSettings]) -> frozenset[str]:
    """The feeds whose items are ``feed``'s when their ids are equal: for a CAP feed, every
    other CAP feed; for other kinds, none."""
    if feed.kind not in SHARED_ID_KINDS:
        return frozenset()
    return frozenset(f.name for f in feeds if f.kind in SHARED_ID_KINDS and f.name != feed.name)


def watchers_for(
    feeds: list[FeedSettings],
    database: Database,
    clock: Clock,
    client: httpx.AsyncClient | None = None,
    escalation: Escalation | None = None,
) -> list[FeedWatcher]:
    """One watcher per configured feed, each knowing its peers."""
    return [
        FeedWatcher(
            feed, database, clock, client, escalation=escalation, peers=peers_of(feed, feeds)
        )
        for feed in feeds
    ]


def start_watchers(
    feeds: list[FeedSettings],
    database: Database,
    clock: Clock,
    stop: asyncio.Event,
    client: httpx.AsyncClient | None = None,
    escalation: Escalation | None = None,
) -> tuple[list[FeedWatcher], list[asyncio.Task[None]]]:
    """One watcher and one task per configured feed (for the daemon)."""
    watchers = watchers_for(feeds, database, clock, client, escalation)
    tasks = [asyncio.create_task(w.run(stop), name=f"feed:{w.name}") for w in watchers]
    return watchers, tasks
