"""Statuspage v2 JSON (``/api/v2/incidents.json``, ``incidents/unresolved.json``) to events.

One event per incident, keyed by the incident id, versioned by its ``updated_at``. The
message is the body of the latest update (Statuspage writes it for customers); the status
is the incident's, with ``postmortem`` counted as resolved; ``impact`` gives the severity.
Components come from the incident's ``components`` and every update's
``affected_components``, looked up by id (``code``) and by name. ``summary.json`` works
too: only its ``incidents`` are read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from functools import partial
from typing import Final

from broadcaster.intake.events import FeedError, ParseResult, SourceMapping
from broadcaster.intake.normalise import (
    Collector,
    Draft,
    ItemError,
    check_now,
    content_hash,
    get_list,
    get_str,
    load_json,
    parse_datetime,
    resolve_severity,
)

IMPACT_SEVERITIES: Final[Mapping[str, str]] = {
    "none": "minor",
    "minor": "minor",
    "maintenance": "minor",
    "major": "major",
    "critical": "critical",
}
STATUSES: Final[Mapping[str, str]] = {
    "investigating": "investigating",
    "identified": "identified",
    "monitoring": "monitoring",
    "resolved": "resolved",
    "postmortem": "resolved",
}
_PLAIN_ID: Final = re.compile(r"[A-Za-z0-9]{1,64}")


def parse(data: bytes, mapping: SourceMapping, *, source: str, now: datetime) -> ParseResult:
    """Events for the incidents of a Statuspage v2 JSON document.

    :raises FeedError: too large, not JSON, or no ``incidents`` list.
    """
    check_now(now)
    document = load_json(data, mapping.limits)
    if not isinstance(document, dict) or not isinstance(document.get("incidents"), list):
        raise FeedError("not a Statuspage v2 document: no 'incidents' list")
    page = document.get("page")
    page_url = page.get("url") if isinstance(page, dict) else None
    collector = Collector(mapping, source, now=check_now(now))
    for raw in document["incidents"]:
        item_id = raw.get("id") if isinstance(raw, dict) else None
        collector.item(item_id, partial(_incident, raw, page_url, mapping))
    return collector.result()


def _update_time(update: Mapping[str, object]) -> datetime | None:
    return parse_datetime(update.get("display_at")) or parse_datetime(update.get("created_at"))


def _latest_update(updates: list[dict[str, object]]) -> dict[str, object] | None:
    """The newest update: by display time when every update has one, else the first listed
    (Statuspage lists them newest first)."""
    if not updates:
        return None
    times = [_update_time(update) for update in updates]
    if any(t is None for t in times):
        return updates[0]
    newest = max(range(len(updates)), key=lambda i: (times[i], -i))
    return updates[newest]


def _component_keys(
    incident: Mapping[str, object], updates: list[dict[str, object]]
) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for component in get_list(incident, "components"):
        if isinstance(component, dict):
            for field in ("id", "name"):
                value = component.get(field)
                if isinstance(value, str):
                    keys.append(("", value))
    for update in updates:
        for component in get_list(update, "affected_components"):
            if isinstance(component, dict):
                for field in ("code", "name"):
                    value = component.get(field)
                    if isinstance(value, str):
                        keys.append(("", value))
    return keys


def _incident(raw: object, page_url: object, mapping: SourceMapping) -> Draft:
    if not isinstance(raw, dict):
        raise ItemError(f"incident: expected an object, got {type(raw).__name__}")
    incident_id = get_str(raw, "id", required=True) or ""
    updates = [u for u in get_list(raw, "incident_updates") if isinstance(u, dict)]
    latest = _latest_update(updates)
    raw_status = get_str(raw, "status") or (get_str(latest, "status") if latest else None)
    if raw_status is None:
        raise ItemError("status: missing")
    status = STATUSES.get(raw_status.lower())
    if status is None:
        raise ItemError(f"status: unknown value {raw_status[:40]!r}")
    impact = get_str(raw, "impact") or ""
    updated_raw = get_str(raw, "updated_at")
    updated_at = parse_datetime(updated_raw) or (_update_time(latest) if latest else None)
    body = (get_str(latest, "body") if latest else None) or ""
    labels = {"statuspage.status": raw_status}
    if impact:
        labels["statuspage.impact"] = impact
    return Draft(
        external_id=incident_id,
        version=updated_raw or "h:" + content_hash(raw),
        title=get_str(raw, "name") or "",
        message=body,
        status=status,
        severity=_severity(impact, mapping),
        keys=_component_keys(raw, updates),
        labels=labels,
        starts_at=parse_datetime(raw.get("started_at")) or parse_datetime(raw.get("created_at")),
        ends_at=parse_datetime(raw.get("resolved_at")) if status == "resolved" else None,
        updated_at=updated_at,
        url=_incident_url(incident_id, page_url, get_str(raw, "shortlink")),
    )


def _severity(impact: str, mapping: SourceMapping) -> str:
    return resolve_severity([impact] if impact else [], IMPACT_SEVERITIES, mapping)


def _incident_url(incident_id: str, page_url: object, shortlink: str | None) -> str | None:
    if isinstance(page_url, str) and page_url and _PLAIN_ID.fullmatch(incident_id):
        return f"{page_url.rstrip('/')}/incidents/{incident_id}"
    return shortlink
