"""GTFS-realtime Service Alerts (protobuf ``FeedMessage``) to events.

One event per alert entity, keyed by the entity id. Decisions:

- **Active periods.** An alert is one disruption from the start of its first active
  period to the end of its last; gaps between periods do not resolve it (a recurring
  night closure would otherwise resolve and reopen every day). So: some period still to
  come or running -> open (``identified``: the agency knows what is happening); every
  period over -> ``resolved``; no period started yet -> skipped ("not active yet"), so no
  one is told before it begins (the feed is polled; it will be read when it starts). No
  active period at all means "always active". ``starts_at`` / ``ends_at`` are the first
  start and the last end (None when open-ended).
- **Ended alerts** mostly just vanish from a full-dataset feed: the result is marked
  ``snapshot=True`` (header ``incrementality`` FULL_DATASET) so the caller resolves the
  incidents of this source that are no longer listed. Deleted entities (``is_deleted``,
  differential feeds) become ``resolved`` events (with empty texts when the entity has
  none: see :class:`~broadcaster.intake.events.IncidentEvent`).
- **Severity**: ``severity_level`` when set (INFO minor, WARNING major, SEVERE critical),
  else the effect (NO_SERVICE, REDUCED_SERVICE, SIGNIFICANT_DELAYS major; others minor).
- **Informed entities** give the keys ``agency:<id>``, ``route:<id>``,
  ``route_type:<n>``, ``stop:<id>``, ``trip:<trip_id>`` (and ``trip_route:<route_id>``)
  for the component and region maps.
- **Texts**: header_text is the title and description_text the message, each in the
  preferred language (else the untagged translation, else the first); every tagged
  language is in ``languages``. ``url`` likewise.
- ``updated_at`` is the feed header's timestamp (GTFS-rt has no per-alert edit time).
- **Version**: a hash of the serialised alert and the derived status, so both an edit
  and the passing of the last period give a new version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Final

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from google.transit import gtfs_realtime_pb2 as gtfs

from broadcaster.intake.events import FeedError, ParseResult, SourceMapping
from broadcaster.intake.normalise import (
    Collector,
    Draft,
    ItemError,
    check_now,
    check_size,
    content_hash,
    from_timestamp,
    resolve_severity,
)

SEVERITY_LEVELS: Final[Mapping[str, str]] = {
    "info": "minor",
    "warning": "major",
    "severe": "critical",
}
EFFECT_SEVERITIES: Final[Mapping[str, str]] = {
    "no_service": "major",
    "reduced_service": "major",
    "significant_delays": "major",
    "detour": "minor",
    "additional_service": "minor",
    "modified_service": "minor",
    "other_effect": "minor",
    "unknown_effect": "minor",
    "stop_moved": "minor",
    "no_effect": "minor",
    "accessibility_issue": "minor",
}
OPEN_STATUS: Final = "identified"


def parse(data: bytes, mapping: SourceMapping, *, source: str, now: datetime) -> ParseResult:
    """Events for the alerts of a GTFS-realtime feed (other entities are ignored).

    :raises FeedError: too large, or not a protobuf ``FeedMessage``.
    """
    now = check_now(now)
    check_size(data, mapping.limits)
    message = gtfs.FeedMessage()
    try:
        message.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise FeedError(f"not a GTFS-realtime FeedMessage: {str(exc)[:200]}") from None
    if not message.header.IsInitialized():
        raise FeedError("not a GTFS-realtime FeedMessage: no header")
    collector = Collector(mapping, source, now=check_now(now))
    fetched = from_timestamp(message.header.timestamp) if message.header.timestamp else None
    for entity in message.entity:
        if not entity.HasField("alert") and not entity.is_deleted:
            continue  # trip updates and vehicle positions are not incidents
        collector.item(_str(entity.id), partial(_alert, entity, mapping, now, fetched))
    full = message.header.incrementality == gtfs.FeedHeader.FULL_DATASET
    return collector.result(snapshot=full)


def _str(value: str | bytes) -> str:
    """A protobuf string; proto2 hands invalid UTF-8 back as bytes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _enum_name(name_of: Callable[[int], str], value: int) -> str:
    try:
        return str(name_of(value))
    except ValueError:
        return str(value)


def _translations(text: gtfs.TranslatedString) -> list[tuple[str, str]]:
    """(language, text) pairs; the language is '' when the feed did not tag it."""
    return [(_str(t.language).strip(), _str(t.text)) for t in text.translation]


def _pick(pairs: Sequence[tuple[str, str]], preferred: Sequence[str]) -> str:
    for wanted in preferred:
        for language, text in pairs:
            if language.lower() == wanted.lower() or language.lower().startswith(
                wanted.lower() + "-"
            ):
                return text
    for language, text in pairs:
        if not language:
            return text
    return pairs[0][1] if pairs else ""


def _languages(
    headers: Sequence[tuple[str, str]], descriptions: Sequence[tuple[str, str]]
) -> dict[str, tuple[str, str]]:
    titles = {language: text for language, text in headers if language}
    texts = {language: text for language, text in descriptions if language}
    return {
        language: (titles.get(language, ""), texts.get(language, ""))
        for language in dict.fromkeys([*titles, *texts])
    }


def _keys(alert: gtfs.Alert) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for informed in alert.informed_entity:
        if informed.agency_id:
            keys.append(("agency:", _str(informed.agency_id)))
        if informed.route_id:
            keys.append(("route:", _str(informed.route_id)))
        if informed.HasField("route_type"):
            keys.append(("route_type:", str(informed.route_type)))
        if informed.stop_id:
            keys.append(("stop:", _str(informed.stop_id)))
        if informed.HasField("trip"):
            if informed.trip.trip_id:
                keys.append(("trip:", _str(informed.trip.trip_id)))
            if informed.trip.route_id:
                keys.append(("trip_route:", _str(informed.trip.route_id)))
    return keys


def _activity(alert: gtfs.Alert, now: datetime) -> tuple[str, datetime | None, datetime | None]:
    """(status, starts_at, ends_at) from the active periods, as the module docstring says."""
    at = int(now.timestamp())
    periods = [
        (p.start if p.HasField("start") else None, p.end if p.HasField("end") else None)
        for p in alert.active_period
    ]
    if not periods:
        return OPEN_STATUS, None, None
    starts = [start for start, _ in periods]
    ends = [end for _, end in periods]
    first_start = None if None in starts else min(s for s in starts if s is not None)
    last_end = None if None in ends else max(e for e in ends if e is not None)
    if first_start is not None and first_start > at:
        begins = from_timestamp(first_start)
        raise ItemError(f"not active yet (starts {begins.isoformat() if begins else 'later'})")
    status = "resolved" if last_end is not None and last_end <= at else OPEN_STATUS
    starts_at = from_timestamp(first_start) if first_start is not None else None
    ends_at = from_timestamp(last_end) if last_end is not None else None
    return status, starts_at, ends_at


def _alert(
    entity: gtfs.FeedEntity, mapping: SourceMapping, now: datetime, fetched: datetime | None
) -> Draft:
    alert = entity.alert
    if entity.is_deleted:
        status, starts_at, ends_at = "resolved", None, None
    else:
        status, starts_at, ends_at = _activity(alert, now)
    preferred = mapping.preferred_languages
    headers = _translations(alert.header_text)
    descriptions = _translations(alert.description_text)
    level = _enum_name(gtfs.Alert.SeverityLevel.Name, alert.severity_level)
    effect = _enum_name(gtfs.Alert.Effect.Name, alert.effect)
    cause = _enum_name(gtfs.Alert.Cause.Name, alert.cause)
    candidates = [effect] if level == "UNKNOWN_SEVERITY" else [level, effect]
    builtin = {**SEVERITY_LEVELS, **EFFECT_SEVERITIES}
    urls = _translations(alert.url)
    return Draft(
        external_id=_str(entity.id),
        version="h:"
        + content_hash(alert.SerializePartialToString(deterministic=True).hex(), status),
        title=_pick(headers, preferred),
        message=_pick(descriptions, preferred),
        status=status,
        severity=resolve_severity(candidates, builtin, mapping),
        keys=_keys(alert),
        labels={"gtfs.cause": cause, "gtfs.effect": effect},
        starts_at=starts_at,
        ends_at=ends_at,
        updated_at=fetched,
        languages=_languages(headers, descriptions),
        url=_pick(urls, preferred) or None,
    )
