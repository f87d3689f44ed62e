"""Applying intake events to incidents: idempotent upserts keyed by (source, external id, version).

:func:`apply_event` turns one :class:`IncidentEvent` into at most one incident operation
(declare, update, resolve, reopen) through :mod:`broadcaster.incidents.service`, and says
what it did in an :class:`Applied`. :func:`plan_event` computes the same answer from the
store without writing (``feeds check`` uses it).

Where the feed's state lives (no schema change):

* The incident carries ``source`` and ``external_id`` (unique together).
* Every timeline entry written for a feed has the author ``feed:<source>@<version>``,
  followed by `` t=<microseconds since the epoch>`` when the event had an ``updated_at``.
  The latest entry of the incident with that prefix is the last applied version: the same
  version again is *unchanged*; an ``updated_at`` older than the stored one is *ignored*
  (a feed never moves an incident backwards). A version too long for the column (200
  characters) is stored as ``sha256:<40 hex>`` of itself. Entries staff write are skipped
  when looking for the tag, so a manual update does not make the feed re-apply.
* A resolved incident that the feed reports open again within ``reopen_within`` of its
  resolution is *reopened*; later (or once closed) it is a new incident whose external id
  gets a generation suffix: ``<id>#2``, ``<id>#3``… Events for ``<id>`` always go to the
  highest generation.
* The first round of an incident declared from a feed is held ``hold`` (like
  Alertmanager's ``group_wait``, so a flapping alert does not page everyone): the
  declaration writes round 1 due at ``now + hold``, with the incident's source and external
  id, in one transaction; a concurrent duplicate fails on the unique key and changes
  nothing.
* Title and severity changes of an open incident are written to the incident row directly
  (the service has no operation for them); the scope (components, regions) is the one
  the incident was declared with.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.clock import Clock
from broadcaster.incidents import lifecycle, service
from broadcaster.intake.events import IncidentEvent
from broadcaster.store import Database, Incident, IncidentUpdate

log = logging.getLogger("broadcaster.intake")

AppliedKind = Literal["created", "updated", "resolved", "reopened", "unchanged", "ignored", "error"]

AUTHOR_PREFIX: Final = "feed:"
_AUTHOR_MAX: Final = 200
_STAMP: Final = re.compile(r"^(?P<version>.*) t=(?P<t>-?[0-9]{1,20})$", re.DOTALL)
_GENERATION: Final = re.compile(r"[0-9]{1,9}")


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
    if len(feed_prefix(source)) + len(version) + 23 <= _AUTHOR_MAX:
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


def _generation(base: str, external_id: str | None) -> int | None:
    """1 for ``base`` itself, n for ``base#n``; None for anything else."""
    if external_id == base:
        return 1
    if external_id is None or not external_id.startswith(base + "#"):
        return None
    suffix = external_id[len(base) + 1 :]
    return int(suffix) if _GENERATION.fullmatch(suffix) and int(suffix) >= 2 else None


def generation_id(base: str, generation: int) -> str:
    return base if generation <= 1 else f"{base}#{generation}"


def base_external_id(external_id: str, known: set[str]) -> str:
    """The source's id of an incident's external id (drops a ``#n`` generation suffix)."""
    if external_id in known:
        return external_id
    head, sep, tail = external_id.rpartition("#")
    if sep and _GENERATION.fullmatch(tail):
        return head
    return external_id


async def _current(session: AsyncSession, source: str, base: str) -> tuple[Incident | None, int]:
    """The highest-generation incident of ``(source, base)`` and its generation (0: none)."""
    rows = (
        (
            await session.execute(
                select(Incident).where(
                    Incident.source == source,
                    or_(
                        Incident.external_id == base,
                        Incident.external_id.startswith(base + "#", autoescape=True),
                    ),
                )
            )
        )
        .scalars()
        .all()
    )
    best: Incident | None = None
    best_generation = 0
    for row in rows:
        generation = _generation(base, row.external_id)
        if generation is not None and generation > best_generation:
            best, best_generation = row, generation
    return best, best_generation


async def _last_tag(session: AsyncSession, incident_id: int, source: str) -> _Tag | None:
    author = (
        await session.execute(
            select(IncidentUpdate.author)
            .where(
                IncidentUpdate.incident_id == incident_id,
                IncidentUpdate.author.startswith(feed_prefix(source), autoescape=True),
            )
            .order_by(IncidentUpdate.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    return None if author is None else _read_tag(source, author)


@dataclass(frozen=True)
class _Plan:
    applied: Applied
    generation: int = 1
    """For ``created``: the generation of the new incident."""
    last_message: str = ""


async def _plan(
    database: Database, clock: Clock, event: IncidentEvent, reopen_within: timedelta
) -> _Plan:
    def result(kind: AppliedKind, incident_id: int | None = None, reason: str = "") -> Applied:
        return Applied(kind, event.source, event.external_id, incident_id, reason)

    async with database.session() as session:
        incident, generation = await _current(session, event.source, event.external_id)
        if incident is None:
            if event.is_open:
                return _Plan(result("created", reason="new item"), generation=1)
            return _Plan(result("ignored", reason="resolved item that was never open here"))
        tag = await _last_tag(session, incident.id, event.source)
        last = await service.latest_update(session, incident.id)
        last_message = last.message if last is not None else ""

    def plan(kind: AppliedKind, reason: str = "", new_generation: int = 1) -> _Plan:
        return _Plan(result(kind, incident.id, reason), new_generation, last_message)

    if tag is not None and tag.version == _version_token(event.source, event.version):
        return plan("unchanged", "same version")
    if (
        tag is not None
        and tag.updated_micros is not None
        and event.updated_at is not None
        and _micros(event.updated_at) < tag.updated_micros
    ):
        return plan("ignored", "older than the version already applied")
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
    database: Database, clock: Clock, event: IncidentEvent, *, reopen_within: timedelta
) -> Applied:
    """What :func:`apply_event` would do with ``event`` now; writes nothing."""
    try:
        return (await _plan(database, clock, event, reopen_within)).applied
    except Exception as exc:  # one bad event never stops the others
        return Applied("error", event.source, event.external_id, None, _describe(exc))


def _describe(exc: BaseException) -> str:
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
            values["severity"] = event.severity
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
) -> Applied:
    """Apply one event; never raises for a problem with it (``kind="error"`` says why)."""
    try:
        planned = await _plan(database, clock, event, reopen_within)
        applied = planned.applied
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
        if applied.kind == "resolved":
            await service.resolve(database, clock, applied.incident_id, request)
        else:
            await service.post_update(database, clock, applied.incident_id, request)
            await _retitle(database, applied.incident_id, event)
        return applied
    except Exception as exc:  # one bad event never stops the others
        log.warning(
            "intake event not applied",
            extra={"source": event.source, "external_id": event.external_id, "error": str(exc)},
        )
        return Applied("error", event.source, event.external_id, None, _describe(exc))


async def resolve_vanished(
    database: Database, clock: Clock, source: str, incident_id: int, reason: str
) -> Applied:
    """Resolve an open incident of ``source`` that its (snapshot) feed no longer lists;
    never raises (``kind="error"`` says why)."""
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
        await service.resolve(
            database,
            clock,
            incident_id,
            service.UpdateRequest(
                message=(last.message if last else "") or incident.title,
                author=f"{feed_prefix(source)}vanished",
            ),
        )
    except Exception as exc:
        return Applied("error", source, external_id, incident_id, _describe(exc))
    return Applied("resolved", source, external_id, incident_id, reason)
