"""Prometheus Alertmanager webhook payloads (``"version": "4"``) to events.

One event per notification group: the ``groupKey`` is the external id, so every
notification about the group updates one incident. Decisions:

- **Status**: ``firing`` -> ``investigating`` (an automated signal, nobody has diagnosed
  it yet), ``resolved`` -> ``resolved``.
- **Texts**: title = common ``summary`` annotation, else the ``alertname`` label;
  message = common ``description`` annotation, else the distinct ``description``
  annotations of the alerts (one per line), else the summary. Alertmanager's URLs
  (``externalURL``, ``generatorURL``, runbooks) are internal and are not kept.
- **Severity**: the ``severity`` label (common, else group): critical/page/emergency ->
  critical, error/high/major -> major, warning/info/low/minor -> minor; else default.
- **Keys** for the maps: ``<label>=<value>`` for every label of the group and its
  alerts (e.g. ``service=payments``; wildcard ``service=*``). ``labels`` = commonLabels.
- **Version**: a hash of the alerts' fingerprints (else their label sets), statuses and
  ``startsAt``, so a re-sent notification is idempotent and a changed group is new.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final

from broadcaster.intake.events import FeedError, ParseResult, SourceMapping
from broadcaster.intake.normalise import (
    Collector,
    Draft,
    ItemError,
    check_now,
    content_hash,
    get_dict,
    get_list,
    get_str,
    load_json,
    parse_datetime,
    resolve_severity,
    string_pairs,
)

LABEL_SEVERITIES: Final[Mapping[str, str]] = {
    "critical": "critical",
    "page": "critical",
    "emergency": "critical",
    "error": "major",
    "high": "major",
    "major": "major",
    "warning": "minor",
    "warn": "minor",
    "info": "minor",
    "low": "minor",
    "minor": "minor",
}
STATUSES: Final[Mapping[str, str]] = {"firing": "investigating", "resolved": "resolved"}


def parse(data: bytes, mapping: SourceMapping, *, source: str, now: datetime) -> ParseResult:
    """The event of one Alertmanager webhook notification (one group).

    :raises FeedError: too large, not JSON, not an object or not payload version 4.
    """
    now = check_now(now)
    payload = load_json(data, mapping.limits)
    if not isinstance(payload, dict):
        raise FeedError("not an Alertmanager webhook payload: not a JSON object")
    if payload.get("version") != "4":
        raise FeedError("not an Alertmanager webhook payload of version 4")
    collector = Collector(mapping, source, now=check_now(now))
    collector.item(payload.get("groupKey"), lambda: _group(payload, mapping, now))
    return collector.result()


def _alerts(payload: Mapping[str, object], limit: int) -> list[dict[str, object]]:
    return [a for a in get_list(payload, "alerts")[:limit] if isinstance(a, dict)]


def _fingerprint(alert: Mapping[str, object]) -> str:
    fingerprint = alert.get("fingerprint")
    if isinstance(fingerprint, str) and fingerprint:
        return fingerprint
    return "labels:" + content_hash(sorted(string_pairs(get_dict(alert, "labels")).items()))


def _message(annotations: Mapping[str, str], alerts: list[dict[str, object]]) -> str:
    if annotations.get("description"):
        return annotations["description"]
    descriptions: dict[str, None] = {}
    for alert in alerts:
        text = string_pairs(get_dict(alert, "annotations")).get("description")
        if text:
            descriptions[text] = None
    return "\n".join(descriptions) or annotations.get("summary", "")


def _group(payload: Mapping[str, object], mapping: SourceMapping, now: datetime) -> Draft:
    group_key = get_str(payload, "groupKey", required=True) or ""
    raw_status = get_str(payload, "status", required=True) or ""
    status = STATUSES.get(raw_status)
    if status is None:
        raise ItemError(f"status: unknown value {raw_status[:40]!r}")
    common_labels = string_pairs(get_dict(payload, "commonLabels"))
    group_labels = string_pairs(get_dict(payload, "groupLabels"))
    annotations = string_pairs(get_dict(payload, "commonAnnotations"))
    alerts = _alerts(payload, mapping.limits.max_items)
    keys = [(f"{k}=", v) for k, v in common_labels.items()]
    starts: list[datetime] = []
    ends: list[datetime] = []
    state: list[tuple[str, str, str]] = []
    for alert in alerts:
        keys += [(f"{k}=", v) for k, v in string_pairs(get_dict(alert, "labels")).items()]
        started = parse_datetime(alert.get("startsAt"))
        ended = parse_datetime(alert.get("endsAt"))
        alert_status = alert.get("status") if isinstance(alert.get("status"), str) else ""
        if started:
            starts.append(started)
        if ended and alert_status == "resolved":
            ends.append(ended)
        state.append((_fingerprint(alert), str(alert_status), str(alert.get("startsAt"))))
    severity_label = common_labels.get("severity") or group_labels.get("severity")
    labels = dict(common_labels)
    receiver = get_str(payload, "receiver")
    if receiver:
        labels["alertmanager.receiver"] = receiver
    times = starts + ends
    return Draft(
        external_id=group_key,
        version="h:" + content_hash(raw_status, sorted(state)),
        title=annotations.get("summary")
        or common_labels.get("alertname")
        or group_labels.get("alertname", ""),
        message=_message(annotations, alerts),
        status=status,
        severity=resolve_severity(
            [severity_label] if severity_label else [], LABEL_SEVERITIES, mapping
        ),
        keys=keys,
        labels=labels,
        starts_at=min(starts) if starts else None,
        ends_at=max(ends) if ends and status == "resolved" else None,
        updated_at=max(times) if times else now,
    )
