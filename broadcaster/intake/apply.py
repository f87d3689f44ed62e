"""Applying intake events to incidents: idempotent upserts keyed by (source, external id, version).

:func:`apply_event` turns one :class:`IncidentEvent` into at most one incident operation
(declare, update, resolve, reopen) through :mod:`broadcaster.incidents.service`, and says
what it did in an :class:`Applied`. :func:`plan_event` computes the same answer from the
store without writing (``feeds check`` uses it).

Where the feed's state lives (no schema change):

* The incident carries ``source`` and ``external_id`` (unique together).
* Every timeline entry written for a feed has the author ``feed:<source>@<version>``,
  followed by `` t=<microseconds since the epoch>`` when the event had an ``updated_at``.
  Those entries, on every generation of the item, are the versions already applied: a
  version among them is *unchanged* (never applied twice, so a replayed webhook or a
  re-read item cannot reopen, roll back or re-create an incident), and an ``updated_at``
  older than the newest stored one is *ignored* (a feed never moves an incident
  backwards). Only a snapshot feed's own resolution (``feed:<source>@vanished``: the item
  left the feed) starts the count again, so an item that comes back to the feed unchanged
  is open again. A version too long for the column (200 characters) is stored as
  ``sha256:<40 hex>`` of itself. Entries staff write are skipped when looking for the
  tags, so a manual update does not make the feed re-apply.
* A resolved incident that the feed reports open again, in a version not applied yet,
  within ``reopen_within`` of its resolution is *reopened*; later (or once closed) it is a
  new incident whose external id gets a generation suffix: ``<id>\t#2``, ``<id>\t#3``…
  (a tab, which no source can send in an id: the intake folds every whitespace in one into
  a space, so an item whose own id is ``<id>#2`` is never taken for a generation of
  ``<id>``). Events for ``<id>`` always go to the highest generation. Generations stored
  by earlier builds as ``<id>#2`` are still read as such when the previous generation had
  ended before that row was made (as a generation's always had; :func:`_generations`).
* An event may name earlier versions of its item (``references``: a CAP Update's or
  Cancel's, by their identifiers): when its own external id has no incident yet, the
  incident that applied one of those versions is its item's.
* Sources whose ids mean the same item (``peers``: every configured CAP feed, since a CAP
  alert's ``sender,identifier`` is unique worldwide) share their items: an event is looked
  up among the incidents of its source and of its peers, the versions any of them applied
  count as applied, and a new incident is made under the source that brought the item
  first. An incident of the event's own source wins over a peer's of the same generation
  (two made for one alert before items were shared: each feed keeps its own). Events of a
  source with peers are applied one at a time (in the process, and on PostgreSQL under a
  transaction-scoped advisory lock per item), so two feeds bringing one alert at the same
  moment cannot both find it new.
* A resolution goes through the engine's escalation when one is given, as staff's does:
  the rules' compensation is attached. What the rules require of a resolution (cause,
  remedy, prevention, …) cannot be asked of a feed, so it is not enforced: the incident
  resolves, and the missing parts are logged (``feed resolution lacks what the rules
  require``) and named in the result's reason, for staff to follow up.
* The first round of an incident declared from a feed is held ``hold`` (like
  Alertmanager's ``group_wait``, so a flapping alert does not page everyone): the
  declaration writes round 1 due at ``now + hold``, with the incident's source and external
  id, in one transaction; a concurrent duplicate fails on the unique key and changes
  nothing.
* Title and severity changes of an open incident are written to the incident row directly
  after the update that carried them; a new severity takes the escalation plan again at the
  next round, as staff's does (:func:`~broadcaster.incidents.service.severity_changed`).
  The scope (components, regions) is the one the incident was declared with.
* The plan is made from the store outside the transaction that writes; that transaction,
  once it holds the incident's row, checks that no timeline entry came in since (the
  same event delivered twice at once: an Alertmanager HA pair). If one did, nothing is
  written and the event is planned again (a duplicate is then *unchanged*); a resolution
  of an incident resolved meanwhile likewise.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal

from sqlalchemy import and_, or_, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.clock import Clock
from broadcaster.incidents import lifecycle, service
from broadcaster.intake.events import IncidentEvent
from broadcaster.store import Also, Database, Incident, IncidentUpdate

if TYPE_CHECKING:
    from broadcaster.escalation.plan import Escalation

log = logging.getLogger("broadcaster.intake")

AppliedKind = Literal["created", "updated", "resolved", "reopened", "unchanged", "ignored", "error"]

AUTHOR_PREFIX: Final = "feed:"
_AUTHOR_MAX: Final = 200
_STAMP: Final = re.compile(r"^(?P<version>.*) t=(?P<t>-?[0-9]{1,20})$", re.DOTALL)
_GENERATION: Final = re.compile(r"[0-9]{1,9}")
GENERATION_SEPARATOR: Final = "\t#"
"""Between an item's id and its generation number: a tab, which no cleaned id contains."""
_LEGACY_SEPARATOR: Final = "#"
"""The separator of generations stored before: ``<id>#2`` (ambiguous with a real id)."""
_MAX_REFERENCES: Final = 50
_ATTEMPTS: Final = 3
"""Plans made for one event at most, when the incident changed under the first ones."""
SHARED_ITEM_LOCKS: Final = 0x63617020
"""The first key of the transaction-scoped advisory locks (PostgreSQL) under which an event
of a source with peers is applied: two daemons applying one alert from two feeds at once
queue on it instead of both declaring it."""
VANISHED: Final = "vanished"
"""The version of a snapshot feed's own resolution (the item left the feed); an item whose
own version is this word is stored by its hash, so the two never meet."""


@dataclass(frozen=True)
class Applied:
    """What one event did (or, from :func:`plan_event`, would do)."""

    kind: AppliedKind
    source: str
    external_id: str
    incident_id: int | None = None
    reason: str = ""

    def __str__(self) -> str:
        target = f" incident #{self.incident_id}" if self.incident_id is not None else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{self.kind}{target} ({self.source} {self.external_id}){why}"


def feed_prefix(source: str) -> str:
    return f"{AUTHOR_PREFIX}{source}@"


def _version_token(source: str, version: str) -> str:
    # Room for the prefix and a " t=<20 digits>" stamp.
    if version != VANISHED and len(feed_prefix(source)) + len(version) + 23 <= _AUTHOR_MAX:
        return version
    return "sha256:" + hashlib.sha256(version.encode()).hexdigest()[:40]


def _micros(when: datetime) -> int:
    delta = when.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def author_tag(event: IncidentEvent) -> str:
    """``feed:<source>@<version>[ t=<micros>]``: what the timeline entry's author says."""
    tag = feed_prefix(event.source) + _version_token(event.source, event.version)
    if event.updated_at is not None:
        tag += f" t={_micros(event.updated_at)}"
    return tag


@dataclass(frozen=True)
class _Tag:
    version: str
    updated_micros: int | None


def _read_tag(source: str, author: str) -> _Tag | None:
    prefix = feed_prefix(source)
    if not author.startswith(prefix):
        return None
    rest = author[len(prefix) :]
    match = _STAMP.match(rest)
    if match:
        return _Tag(match.group("version"), int(match.group("t")))
    return _Tag(rest, None)


def _suffix(base: str, external_id: str, separator: str) -> int | None:
    if not external_id.startswith(base + separator):
        return None
    suffix = external_id[len(base) + len(separator) :]
    return int(suffix) if _GENERATION.fullmatch(suffix) and int(suffix) >= 2 else None


def _generation(base: str, external_id: str | None) -> int | None:
    """1 for ``base`` itself, n for ``base<tab>#n`` (or the old ``base#n``); else None."""
    if external_id == base:
        return 1
    if external_id is None:
        return None
    return _suffix(base, external_id, GENERATION_SEPARATOR) or _suffix(
        base, external_id, _LEGACY_SEPARATOR
    )


def generation_id(base: str, generation: int) -> str:
    return base if generation <= 1 else f"{base}{GENERATION_SEPARATOR}{generation}"


def base_external_id(external_id: str, known: set[str]) -> str:
    """The source's id of an incident's external id (drops a generation suffix)."""
    if external_id in known:
        return external_id
    for separator in (GENERATION_SEPARATOR, _LEGACY_SEPARATOR):
        head, sep, tail = external_id.rpartition(separator)
        if sep and _GENERATION.fullmatch(tail):
            return head
    return external_id


def _made_after(previous: Incident, row: Incident) -> bool:
    """Whether ``row`` was made after ``previous`` had ended, as a generation is."""
    if previous.id >= row.id or previous.status in lifecycle.OPEN_STATUSES:
        return False
    ended = previous.resolved_at or previous.updated_at
    return ended is not None and ended < row.created_at


async def _generations(session: AsyncSession, sources: Sequence[str], base: str) -> list[Incident]:
    """Every incident of item ``base`` of ``sources[0]`` or its peers (the rest), lowest
    generation first; of two of one generation, the first source's, else the earliest.

    A row of the old form ``<base>#n`` counts only when the generation before it had ended
    before it was made: else it is an item whose own id is ``<base>#n``."""
    rows = (
        (
            await session.execute(
                select(Incident).where(
                    Incident.source.in_(sources),
                    or_(
                        Incident.external_id == base,
                        Incident.external_id.startswith(
                            base + GENERATION_SEPARATOR, autoescape=True
                        ),
                        Incident.external_id.startswith(base + _LEGACY_SEPARATOR, autoescape=True),
                    ),
                )
            )
        )
        .scalars()
        .all()
    )
    ranked: list[tuple[int, Incident]] = []
    legacy: list[tuple[int, Incident]] = []
    for row in rows:
        if row.external_id == base:
            ranked.append((1, row))
        elif (n := _suffix(base, row.external_id or "", GENERATION_SEPARATOR)) is not None:
            ranked.append((n, row))
        elif (n := _suffix(base, row.external_id or "", _LEGACY_SEPARATOR)) is not None:
            legacy.append((n, row))

    def rank(row: Incident) -> tuple[bool, int]:
        # Of two incidents of one generation (made by two peers before they shared items),
        # the source's own, else the earliest: where each source's events went before.
        return (row.source != sources[0], row.id)

    chosen: dict[int, Incident] = {}
    for n, row in ranked:
        if n not in chosen or rank(row) < rank(chosen[n]):
            chosen[n] = row
    previous = chosen.get(1)
    for n, row in sorted(legacy, key=lambda pair: (pair[0], rank(pair[1]))):
        if n in chosen and rank(chosen[n]) <= rank(row):
            continue
        if previous is not None and _made_after(previous, row):
            chosen[n] = row
            previous = row
    return [chosen[n] for n in sorted(chosen)]


async def _referenced(
    session: AsyncSession, event: IncidentEvent, sources: Sequence[str]
) -> str | None:
    """The item (base external id) of the newest incident of ``sources`` (the event's and
    its peers) that applied one of the versions ``event.references`` names, on an item
    whose external id begins as that reference says (a CAP identifier is another sender's
    alert under another sender); None if none did."""
    references = event.references[:_MAX_REFERENCES]
    if not references:
        return None
    applied = []
    for begins, version in references:
        for source in sources:
            tag = feed_prefix(source) + _version_token(source, version)
            applied.append(
                and_(
                    Incident.source == source,
                    Incident.external_id.startswith(begins, autoescape=True),
                    or_(
                        IncidentUpdate.author == tag,
                        IncidentUpdate.author.startswith(tag + " t=", autoescape=True),
                    ),
                )
            )
    found = (
        await session.execute(
            select(Incident.external_id)
            .join(IncidentUpdate, IncidentUpdate.incident_id == Incident.id)
            .where(Incident.source.in_(sources), or_(*applied))
            .order_by(Incident.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if found is None:
        return None
    return base_external_id(found, set())


async def _item(
    session: AsyncSession, event: IncidentEvent, sources: Sequence[str]
) -> IncidentEvent:
    """``event``, its external id made its item's when it names earlier versions of an item
    stored under another id (a CAP Update of an Update, naming only the one it replaces)."""
    if not event.references or await _generations(session, sources, event.external_id):
        return event
    item = await _referenced(session, event, sources)
    return event if item is None or item == event.external_id else replace(event, external_id=item)


@dataclass(frozen=True)
class _History:
    """What a source has applied to one item, over all its generations."""

    versions: frozenset[str]
    """Version tokens applied since the item last vanished from its (snapshot) feed."""
    newest_micros: int | None
    """The newest ``updated_at`` of any version applied, in microseconds."""
    latest: str | None = None
    """The version token applied last (None once the item vanished from its feed)."""


async def _history(
    session: AsyncSession, incidents: list[Incident], sources: Sequence[str]
) -> _History:
    """What ``sources`` (a source and its peers) applied to these incidents; a version
    token as each source wrote it (see :func:`_version_token`)."""
    authors = (
        (
            await session.execute(
                select(IncidentUpdate.author)
                .where(
                    IncidentUpdate.incident_id.in_([row.id for row in incidents]),
                    or_(
                        *(
                            IncidentUpdate.author.startswith(feed_prefix(s), autoescape=True)
                            for s in sources
                        )
                    ),
                )
                .order_by(IncidentUpdate.id)
            )
        )
        .scalars()
        .all()
    )
    versions: set[str] = set()
    newest: int | None = None
    latest: str | None = None
    for author in authors:
        tag = next(filter(None, (_read_tag(s, author) for s in sources)), None)
        if tag is None:
            continue
        if tag.version == VANISHED and tag.updated_micros is None:
            # The feed stopped listing the item: it ended there; seen again, it is open
            # again, even in a version applied before.
            versions.clear()
            latest = None
            continue
        versions.add(tag.version)
        latest = tag.version
        if tag.updated_micros is not None:
            newest = max(newest, tag.updated_micros) if newest is not None else tag.updated_micros
    return _History(frozenset(versions), newest, latest)


@dataclass(frozen=True)
class _Plan:
    applied: Applied
    event: IncidentEvent
    """The event planned, with its item's external id (see :func:`_item`)."""
    generation: int = 1
    """For ``created``: the generation of the new incident."""
    last_message: str = ""
    last_update_id: int | None = None
    """The incident's newest timeline entry when planned (see :func:`_unraced`)."""


def _sources(event: IncidentEvent, peers: Collection[str]) -> tuple[str, ...]:
    """The event's source, then its peers: the sources whose incidents may be its item's."""
    return (event.source, *sorted(set(peers) - {event.source}))


async def _plan(
    database: Database,
    clock: Clock,
    event: IncidentEvent,
    reopen_within: timedelta,
    peers: Collection[str] = (),
) -> _Plan:
    if "\t" in event.external_id:
        raise ValueError("external id: contains a tab (it separates an item's generations)")

    def result(kind: AppliedKind, incident_id: int | None = None, reason: str = "") -> Applied:
        return Applied(kind, event.source, event.external_id, incident_id, reason)

    sources = _sources(event, peers)
    async with database.session() as session:
        event = await _item(session, event, sources)
        generations = await _generations(session, sources, event.external_id)
        if not generations:
            if event.is_open:
                return _Plan(result("created", reason="new item"), event, generation=1)
            return _Plan(result("ignored", reason="resolved item that was never open here"), event)
        incident = generations[-1]
        generation = _generation(event.external_id, incident.external_id) or 1
        # The newest entry before the versions applied: each read sees what was committed
        # when it ran (PostgreSQL's read committed), so an entry written by a concurrent
        # apply between the two is either in the versions (this plan says "unchanged") or
        # newer than the entry planned on (the write sees it and plans again: _unraced).
        # Read the other way round, it could be in neither, and the event applied twice.
        last = await service.latest_update(session, incident.id)
        history = await _history(session, generations, sources)
        last_message = last.message if last is not None else ""
        last_id = last.id if last is not None else None

    def plan(kind: AppliedKind, reason: str = "", new_generation: int = 1) -> _Plan:
        return _Plan(
            result(kind, incident.id, reason), event, new_generation, last_message, last_id
        )

    newer = (
        history.newest_micros is not None
        and event.updated_at is not None
        and _micros(event.updated_at) > history.newest_micros
    )
    # The event's version as each source would have written it (a long one is hashed,
    # depending on the length of the source's name).
    tokens = {_version_token(source, event.version) for source in sources}
    if history.latest in tokens or (not newer and tokens & history.versions):
        # The same version again: a re-read item, a retried or replayed webhook. Applying
        # it again could only reopen, roll back or re-create what a later version changed.
        # A version whose content hash was seen before but that says it is newer than
        # anything applied (open, resolved, open again) is a change, not a replay; unless
        # it is the version applied last, whatever its time says: a GTFS-rt feed stamps
        # every alert with the time of each fetch, and each fetch had sent customers the
        # same update again.
        return plan("unchanged", "version already applied")
    if (
        history.newest_micros is not None
        and event.updated_at is not None
        and _micros(event.updated_at) < history.newest_micros
    ):
        return plan("ignored", "older than a version already applied")
    if incident.status == "closed":
        if event.is_open:
            return plan("created", "reported again after the incident was closed", generation + 1)
        return plan("unchanged", "the incident is closed")
    if incident.status == "resolved":
        if not event.is_open:
            return plan("unchanged", "already resolved")
        resolved_at = incident.resolved_at or incident.updated_at
        if clock.now() - resolved_at <= reopen_within:
            return plan("reopened", f"open again within {reopen_within} of its resolution")
        return plan(
            "created", f"open again more than {reopen_within} after resolution", generation + 1
        )
    if not event.is_open:
        return plan("resolved")
    return plan("updated")


async def plan_event(
    database: Database,
    clock: Clock,
    event: IncidentEvent,
    *,
    reopen_within: timedelta,
    peers: Collection[str] = (),
) -> Applied:
    """What :func:`apply_event` would do with ``event`` now; writes nothing."""
    try:
        return (await _plan(database, clock, event, reopen_within, peers)).applied
    except Exception as exc:  # one bad event never stops the others
        return Applied("error", event.source, event.external_id, None, _describe(exc))


def _describe(exc: BaseException) -> str:
    """Why an event was not applied, for its sender and ``/healthz``: a store error's text
    (its SQL, its parameters: the item's own fields, a customer's) goes to the log only."""
    if isinstance(exc, SQLAlchemyError):
        log.error("intake event not applied: the store failed", exc_info=exc)
        cause = type(getattr(exc, "orig", None) or exc).__name__
        return f"the store failed ({cause}); the daemon's log has the details"
    return f"{type(exc).__name__}: {exc}"


def _scope(event: IncidentEvent) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if event.components or event.regions:
        return event.components, event.regions
    return (event.source,), ()


def _title(event: IncidentEvent) -> str:
    for text in (event.title, event.message, event.external_id):
        line = text.strip().splitlines()[0].strip() if text.strip() else ""
        if line:
            return line[:300]
    return event.source


async def _create(
    database: Database, clock: Clock, event: IncidentEvent, generation: int, hold: timedelta
) -> Applied:
    components, regions = _scope(event)
    title = _title(event)
    external_id = generation_id(event.external_id, generation)
    try:
        incident = await service.declare(
            database,
            clock,
            service.Declaration(
                title=title,
                severity=event.severity,
                message=event.message.strip() or title,
                components=components,
                regions=regions,
                status=event.status,
                author=author_tag(event),
                source=event.source,
                external_id=external_id,
                hold=max(hold, timedelta(0)),
                labels=event.labels,
            ),
        )
    except IntegrityError:
        # Another writer declared the same item first (unique source + external id).
        return Applied(
            "unchanged", event.source, event.external_id, None, "declared concurrently elsewhere"
        )
    reason = f"held {hold}" if hold > timedelta(0) else ""
    if generation > 1:
        reason = ", ".join(filter(None, [f"as {external_id}", reason]))
    return Applied("created", event.source, event.external_id, incident.id, reason)


async def _retitle(database: Database, incident_id: int, event: IncidentEvent) -> None:
    values: dict[str, object] = {}
    async with database.session() as session, session.begin():
        incident = await session.get(Incident, incident_id)
        if incident is None:
            return
        title = event.title.strip()
        if title and title != incident.title:
            values["title"] = title[:300]
        if event.severity != incident.severity:
            values.update(service.severity_changed(event.severity))
        if dict(event.labels) != (incident.labels or {}):
            values["labels"] = dict(event.labels) or None
        if values:
            await session.execute(
                update(Incident).where(Incident.id == incident_id).values(**values)
            )


async def apply_event(
    database: Database,
    clock: Clock,
    event: IncidentEvent,
    *,
    hold: timedelta,
    reopen_within: timedelta,
    escalation: Escalation | None = None,
    peers: Collection[str] = (),
) -> Applied:
    """Apply one event; never raises for a problem with it (``kind="error"`` says why).

    ``escalation`` (the engine's) brings the rules to a resolution: their compensation,
    and the parts they require, which a feed cannot give, named in the reason
    (:mod:`broadcaster.intake.resolution`). ``peers`` are the sources whose items are this
    source's when their ids are equal (every configured CAP feed, for a CAP feed's
    events): the event lands on the incident any of them made for its item."""
    try:
        async with _one_at_a_time(database, event, peers):
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    return await _apply_once(
                        database, clock, event, hold, reopen_within, escalation, peers
                    )
                except (_Raced, lifecycle.TransitionError):
                    # The incident changed after the plan: plan again (a duplicate delivered
                    # at the same time is then unchanged; an incident resolved meanwhile, too).
                    if attempt == _ATTEMPTS:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover
    except Exception as exc:  # one bad event never stops the others
        log.warning(
            "intake event not applied",
            extra={"source": event.source, "external_id": event.external_id, "error": str(exc)},
        )
        return Applied("error", event.source, event.external_id, None, _describe(exc))


_shared_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}


@asynccontextmanager
async def _one_at_a_time(
    database: Database, event: IncidentEvent, peers: Collection[str]
) -> AsyncIterator[None]:
    """For an event of a source with peers: the plan and the write with no other such event
    applied meanwhile, so that two peers bringing one item at once do not both find it new
    (their incidents differ in source: the store's unique key does not stop the second).
    In the process, one at a time; on PostgreSQL, also under an advisory lock on the item,
    held by a transaction of its own for as long (other daemons)."""
    if not set(peers) - {event.source}:
        yield
        return
    loop = asyncio.get_running_loop()
    lock = _shared_locks.get(loop)
    if lock is None:
        _shared_locks.clear()  # a loop of the past is done with
        lock = _shared_locks[loop] = asyncio.Lock()
    async with lock:
        if database.dialect != "postgresql":
            yield
            return
        async with database.session() as session, session.begin():
            await session.execute(
                sql_text("SELECT pg_advisory_xact_lock(:space, hashtext(:item))"),
                {"space": SHARED_ITEM_LOCKS, "item": event.external_id},
            )
            yield


class _Raced(Exception):
    """A timeline entry came in between the plan and the write: the write is undone."""

    def __str__(self) -> str:
        return "the incident kept changing while this event was applied"


def _unraced(incident_id: int, planned_last: int | None) -> Also:
    """Run in the writing transaction, the incident's row locked (``also``): raise
    :class:`_Raced` if the incident has a timeline entry newer than the plan saw. The
    operations read the incident's latest entry after taking the lock (to carry its
    fields over): it is in the session, and no entry can come in after it."""

    def check(session: AsyncSession, written: object) -> None:
        for entry in session.identity_map.values():
            if (
                isinstance(entry, IncidentUpdate)
                and entry is not written
                and entry.incident_id == incident_id
                and (planned_last is None or entry.id > planned_last)
            ):
                raise _Raced()

    return check


async def _apply_once(
    database: Database,
    clock: Clock,
    event: IncidentEvent,
    hold: timedelta,
    reopen_within: timedelta,
    escalation: Escalation | None,
    peers: Collection[str],
) -> Applied:
    planned = await _plan(database, clock, event, reopen_within, peers)
    applied, event = planned.applied, planned.event
    if applied.kind == "created":
        return await _create(database, clock, event, planned.generation, hold)
    if applied.kind in ("unchanged", "ignored") or applied.incident_id is None:
        return applied
    message = event.message.strip() or planned.last_message or _title(event)
    request = service.UpdateRequest(
        message=message,
        status=None if applied.kind == "resolved" else event.status,
        author=author_tag(event),
    )
    also = _unraced(applied.incident_id, planned.last_update_id)
    if applied.kind == "resolved":
        missing = await _resolve(
            database, clock, applied.incident_id, request, escalation, event.source, also
        )
        return _lacking(applied, missing)
    await service.post_update(database, clock, applied.incident_id, request, also=also)
    await _retitle(database, applied.incident_id, event)
    return applied


async def _resolve(
    database: Database,
    clock: Clock,
    incident_id: int,
    request: service.UpdateRequest,
    escalation: Escalation | None,
    source: str,
    also: Also | None = None,
) -> list[str]:
    from broadcaster.intake import resolution  # imports the escalation, which imports us

    return await resolution.resolve(
        database, clock, incident_id, request, escalation, source=source, also=also
    )


def _lacking(applied: Applied, missing: list[str]) -> Applied:
    if not missing:
        return applied
    note = f"resolved without {', '.join(missing)}, which the rules require: staff, follow up"
    reason = "; ".join(filter(None, [applied.reason, note]))
    return Applied(applied.kind, applied.source, applied.external_id, applied.incident_id, reason)


async def resolve_vanished(
    database: Database,
    clock: Clock,
    source: str,
    incident_id: int,
    reason: str,
    escalation: Escalation | None = None,
) -> Applied:
    """Resolve an open incident of ``source`` that its (snapshot) feed no longer lists,
    under the rules as :func:`apply_event` does; never raises (``kind="error"`` says why)."""
    try:
        async with database.session() as session:
            incident = await session.get(Incident, incident_id)
            last = await service.latest_update(session, incident_id)
    except Exception as exc:  # the store may be down: the next poll tries again
        return Applied("error", source, "", incident_id, _describe(exc))
    external_id = (incident.external_id if incident else None) or ""
    if incident is None or not lifecycle.is_open(incident.status):
        return Applied("unchanged", source, external_id, incident_id, "no longer open")
    try:
        missing = await _resolve(
            database,
            clock,
            incident_id,
            service.UpdateRequest(
                message=(last.message if last else "") or incident.title,
                author=feed_prefix(source) + VANISHED,
            ),
            escalation,
            source,
        )
    except Exception as exc:
        return Applied("error", source, external_id, incident_id, _describe(exc))
    return _lacking(Applied("resolved", source, external_id, incident_id, reason), missing)
