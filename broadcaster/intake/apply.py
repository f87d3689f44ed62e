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
  new incident whose external id gets a generation suffix: ``<id>#2``, ``<id>#3``… Events
  for ``<id>`` always go to the highest generation.
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
  (the service has no operation for them); the scope (components, regions) is the one
  the incident was declared with.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.clock import Clock
from broadcaster.incidents import lifecycle, service
from broadcaster.intake.events import IncidentEvent
from broadcaster.store import Database, Incident, IncidentUpdate

if TYPE_CHECKING:
    from broadcaster.escalation.plan import Escalation

log = logging.getLogger("broadcaster.intake")

AppliedKind = Literal["created", "updated", "resolved", "reopened", "unchanged", "ignored", "error"]

AUTHOR_PREFIX: Final = "feed:"
_AUTHOR_MAX: Final = 200
_STAMP: Final = re.compile(r"^(?P<version>.*) t=(?P<t>-?[0-9]{1,20})$", re.DOTALL)
_GENERATION: Final = re.compile(r"[0-9]{1,9}")
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


async def _generations(session: AsyncSession, source: str, base: str) -> list[Incident]:
    """Every incident of ``(source, base)``, lowest generation first."""
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
    ranked = [(g, row) for row in rows if (g := _generation(base, row.external_id)) is not None]
    return [row for _, row in sorted(ranked, key=lambda pair: pair[0])]


@dataclass(frozen=True)
class _History:
    """What a source has applied to one item, over all its generations."""

    versions: frozenset[str]
    """Version tokens applied since the item last vanished from its (snapshot) feed."""
    newest_micros: int | None
    """The newest ``updated_at`` of any version applied, in microseconds."""
    latest: str | None = None
    """The version token applied last (None once the item vanished from its feed)."""


async def _history(session: AsyncSession, incidents: list[Incident], source: str) -> _History:
    authors = (
        (
            await session.execute(
                select(IncidentUpdate.author)
                .where(
                    IncidentUpdate.incident_id.in_([row.id for row in incidents]),
                    IncidentUpdate.author.startswith(feed_prefix(source), autoescape=True),
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
        tag = _read_tag(source, author)
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
    generation: int = 1
    """For ``created``: the generation of the new incident."""
    last_message: str = ""


async def _plan(
    database: Database, clock: Clock, event: IncidentEvent, reopen_within: timedelta
) -> _Plan:
    def result(kind: AppliedKind, incident_id: int | None = None, reason: str = "") -> Applied:
        return Applied(kind, event.source, event.external_id, incident_id, reason)

    async with database.session() as session:
        generations = await _generations(session, event.source, event.external_id)
        if not generations:
            if event.is_open:
                return _Plan(result("created", reason="new item"), generation=1)
            return _Plan(result("ignored", reason="resolved item that was never open here"))
        incident = generations[-1]
        generation = _generation(event.external_id, incident.external_id) or 1
        history = await _history(session, generations, event.source)
        last = await service.latest_update(session, incident.id)
        last_message = last.message if last is not None else ""

    def plan(kind: AppliedKind, reason: str = "", new_generation: int = 1) -> _Plan:
        return _Plan(result(kind, incident.id, reason), new_generation, last_message)

    newer = (
        history.newest_micros is not None
        and event.updated_at is not None
        and _micros(event.updated_at) > history.newest_micros
    )
    token = _version_token(event.source, event.version)
    if token == history.latest or (not newer and token in history.versions):
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
    database: Database, clock: Clock, event: IncidentEvent, *, reopen_within: timedelta
) -> Applied:
    """What :func:`apply_event` would do with ``event`` now; writes nothing."""
    try:
        return (await _plan(database, clock, event, reopen_within)).applied
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
    escalation: Escalation | None = None,
) -> Applied:
    """Apply one event; never raises for a problem with it (``kind="error"`` says why).

    ``escalation`` (the engine's) brings the rules to a resolution: their compensation,
    and the parts they require, which a feed cannot give, named in the reason
    (:mod:`broadcaster.intake.resolution`)."""
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
            missing = await _resolve(
                database, clock, applied.incident_id, request, escalation, event.source
            )
            return _lacking(applied, missing)
        await service.post_update(database, clock, applied.incident_id, request)
        await _retitle(database, applied.incident_id, event)
        return applied
    except Exception as exc:  # one bad event never stops the others
        log.warning(
            "intake event not applied",
            extra={"source": event.source, "external_id": event.external_id, "error": str(exc)},
        )
        return Applied("error", event.source, event.external_id, None, _describe(exc))


async def _resolve(
    database: Database,
    clock: Clock,
    incident_id: int,
    request: service.UpdateRequest,
    escalation: Escalation | None,
    source: str,
) -> list[str]:
    from broadcaster.intake import resolution  # imports the escalation, which imports us

    return await resolution.resolve(
        database, clock, incident_id, request, escalation, source=source
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
