"""Prometheus Alertmanager webhook payloads (version 4), against the shared fixture."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from broadcaster.intake import FeedError, IncidentEvent, ParseResult, SourceMapping
from broadcaster.intake.alertmanager import parse
from tests.conftest import FIXTURES

PAYLOAD = FIXTURES / "alertmanager" / "prom_post_request.json"
NOW = datetime(2018, 3, 7, 12, 0, tzinfo=UTC)
MAPPING = SourceMapping(components={"job=docker_nodes": "docker-hosts", "instance=*": "*"})


def _payload() -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(PAYLOAD.read_bytes())
    return payload


def _parse(payload: object, mapping: SourceMapping = MAPPING) -> ParseResult:
    return parse(json.dumps(payload).encode(), mapping, source="prometheus", now=NOW)


def _event(payload: object, mapping: SourceMapping = MAPPING) -> IncidentEvent:
    result = _parse(payload, mapping)
    assert result.skipped == []
    (event,) = result.events
    return event


def test_fixture_gives_one_event_for_the_group() -> None:
    result = parse(PAYLOAD.read_bytes(), MAPPING, source="prometheus", now=NOW)
    (event,) = result.events
    assert event.external_id == '{}:{alertname="high_memory_load"}'
    assert event.status == "investigating"
    assert event.severity == "minor"  # severity=warning
    assert event.title == "Prometheus Test"  # the common summary
    assert event.message == "10.80.40.11 reported high memory usage with 23.28%."
    assert event.components == ("instance-with-hyphen_and_underscore", "docker-hosts")
    assert event.labels == {
        "alertname": "high_memory_load",
        "monitor": "master",
        "severity": "warning",
        "alertmanager.receiver": "teams_proxy",
    }
    assert event.starts_at == datetime(2018, 3, 7, 11, 33, 21, 873077, tzinfo=UTC)
    assert event.ends_at is None  # Go's zero time
    assert event.url is None  # externalURL is internal
    assert event.version.startswith("h:")


def test_resolution_gives_a_resolved_event_with_a_new_version() -> None:
    firing = _event(_payload())
    payload = _payload()
    payload["status"] = "resolved"
    payload["alerts"][0]["status"] = "resolved"
    payload["alerts"][0]["endsAt"] = "2018-03-07T06:48:21.873Z"
    resolved = _event(payload)
    assert resolved.external_id == firing.external_id
    assert resolved.status == "resolved"
    assert resolved.ends_at == datetime(2018, 3, 7, 6, 48, 21, 873000, tzinfo=UTC)
    assert resolved.version != firing.version


def test_version_depends_on_fingerprints_statuses_and_starts_not_order() -> None:
    payload = _payload()
    second = json.loads(json.dumps(payload["alerts"][0]))
    second["labels"]["instance"] = "other"
    second["fingerprint"] = "0123456789abcdef"
    payload["alerts"].append(second)
    base = _event(payload).version
    payload["alerts"].reverse()
    assert _event(payload).version == base
    payload["alerts"][0]["startsAt"] = "2018-03-07T07:00:00Z"
    assert _event(payload).version != base
    # Annotations are not part of it: a re-worded description is the same notification.
    payload = _payload()
    payload["alerts"][0]["annotations"]["description"] = "changed"
    assert _event(payload).version == _event(_payload()).version


def test_description_falls_back_and_severity_overrides() -> None:
    payload = _payload()
    payload["commonAnnotations"] = {"description": "Memory is high on the Docker hosts."}
    payload["commonLabels"]["severity"] = "critical"
    event = _event(payload)
    assert event.message == "Memory is high on the Docker hosts."
    assert event.title == "high_memory_load"  # no summary: the alert name
    assert event.severity == "critical"
    assert _event(payload, SourceMapping(severities={"critical": "major"})).severity == "major"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"groupKey": None}, "groupKey: missing"),
        ({"status": "pending"}, "status: unknown value 'pending'"),
        ({"commonLabels": ["a"]}, "commonLabels: expected an object, got list"),
        ({"alerts": "many"}, "alerts: expected a list, got str"),
    ],
)
def test_malformed_groups_are_skipped_with_a_reason(change: dict[str, Any], reason: str) -> None:
    payload = _payload()
    payload.update(change)
    result = _parse(payload)
    assert result.events == []
    assert result.skipped[0].reason == reason


def test_wrongly_typed_alert_entries_are_ignored() -> None:
    payload = _payload()
    payload["alerts"] += [None, 3, {"labels": "x"}]
    result = _parse(payload)
    assert result.events == []
    assert result.skipped[0].reason == "labels: expected an object, got str"
    payload["alerts"] = payload["alerts"][:-1]
    assert len(_parse(payload).events) == 1


@pytest.mark.parametrize(
    "data",
    [b"[]", b'{"version": "3"}', b'{"version": 4}', b"not json", b'"string"'],
)
def test_unusable_payloads_raise_feed_error(data: bytes) -> None:
    with pytest.raises(FeedError):
        parse(data, MAPPING, source="prometheus", now=NOW)
