"""Statuspage v2 JSON: incidents.json and unresolved.json fixtures written from the docs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broadcaster.intake import FeedError, SourceMapping
from broadcaster.intake.statuspage import parse

OURS = Path(__file__).resolve().parents[1] / "fixtures" / "intake"
NOW = datetime(2026, 1, 5, 11, 0, tzinfo=UTC)
MAPPING = SourceMapping(
    components={"Card payments": "payments", "x8c2vq0ry5hd": "checkout-api"},
    regions={"0l2p9nhqnxpd": "eu"},
)


def _document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((OURS / "statuspage-incidents.json").read_bytes())
    return document


def _parse(document: object, mapping: SourceMapping = MAPPING) -> Any:
    return parse(json.dumps(document).encode(), mapping, source="northwind", now=NOW)


def test_incidents_fixture_gives_one_event_per_incident() -> None:
    result = parse(
        (OURS / "statuspage-incidents.json").read_bytes(), MAPPING, source="northwind", now=NOW
    )
    assert result.skipped == []
    assert [(e.external_id, e.status, e.severity) for e in result.events] == [
        ("p31zjtct2jer", "identified", "critical"),
        ("9yqf3c8lwz2r", "monitoring", "minor"),
        ("c2v4b6n8m0qa", "resolved", "major"),  # postmortem counts as resolved
        ("w3e5r7t9y1u2", "resolved", "minor"),  # impact none
    ]
    assert not result.snapshot


def test_open_incident_fields() -> None:
    result = parse(
        (OURS / "statuspage-unresolved.json").read_bytes(), MAPPING, source="northwind", now=NOW
    )
    (event,) = result.events
    assert event.source == "northwind"
    assert event.version == "2026-01-05T10:41:55.902Z"  # updated_at
    assert event.title == "Card payments failing for some customers"
    assert event.message.startswith("We have identified a faulty configuration change")
    assert event.components == ("payments",)
    assert event.regions == ("eu",)
    assert event.starts_at == datetime(2026, 1, 5, 9, 5, tzinfo=UTC)
    assert event.updated_at == datetime(2026, 1, 5, 10, 41, 55, 902000, tzinfo=UTC)
    assert event.ends_at is None
    assert event.url == "https://status.northwind.example/incidents/p31zjtct2jer"
    assert event.labels == {"statuspage.status": "identified", "statuspage.impact": "critical"}


def test_components_come_from_every_update_by_id_and_name() -> None:
    result = _parse(_document())
    assert result.events[0].components == ("payments", "checkout-api")
    everything = _parse(_document(), SourceMapping(components={"*": "*"})).events[0]
    assert everything.components == (
        "0l2p9nhqnxpd",
        "Card payments",
        "x8c2vq0ry5hd",
        "Checkout API",
    )


def test_latest_update_is_the_newest_displayed_whatever_the_order() -> None:
    document = _document()
    incident = document["incidents"][0]
    incident["incident_updates"].reverse()
    assert _parse(document).events[0].message.startswith("We have identified")
    for update in incident["incident_updates"]:
        del update["display_at"], update["created_at"]
    # Without times, the first listed is taken (Statuspage lists newest first).
    latest = _parse(document).events[0]
    assert latest.message == "We are investigating reports of failed card payments."


def test_resolved_incident_has_its_resolution_time() -> None:
    event = _parse(_document()).events[2]
    assert event.ends_at == datetime(2025, 12, 29, 9, 2, 37, tzinfo=UTC)
    assert event.message.startswith("An expired certificate")


def test_an_edit_changes_the_version_and_a_reread_does_not() -> None:
    first = _parse(_document()).events[0]
    assert _parse(_document()).events[0].idempotency_key == first.idempotency_key
    document = _document()
    document["incidents"][0]["updated_at"] = "2026-01-05T10:55:00.000Z"
    assert _parse(document).events[0].version != first.version


def test_severity_overrides_and_default() -> None:
    document = _document()
    document["incidents"][1]["impact"] = None
    mapping = SourceMapping(severities={"critical": "major"}, default_severity="major")
    events = _parse(document, mapping).events
    assert events[0].severity == "major"
    assert events[1].severity == "major"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": None}, "id: missing"),
        ({"id": ["x"]}, "id: expected a string, got list"),
        ({"status": "exploded"}, "status: unknown value 'exploded'"),
        ({"name": {"en": "x"}}, "name: expected a string, got dict"),
        ({"incident_updates": "none"}, "incident_updates: expected a list, got str"),
        ({"components": 7}, "components: expected a list, got int"),
    ],
)
def test_malformed_incidents_are_skipped_with_a_reason(change: dict[str, Any], reason: str) -> None:
    document = _document()
    document["incidents"][1].update(change)
    result = _parse(document)
    assert len(result.events) == 3
    (skipped,) = result.skipped
    assert skipped.reason == reason


def test_non_object_incidents_and_updates() -> None:
    document = _document()
    document["incidents"].append("not an incident")
    document["incidents"][0]["incident_updates"].insert(0, 42)
    result = _parse(document)
    assert len(result.events) == 4
    assert result.skipped[0].reason == "incident: expected an object, got str"
    assert result.events[0].message.startswith("We have identified")


def test_missing_status_falls_back_to_the_latest_update() -> None:
    document = _document()
    del document["incidents"][1]["status"]
    assert _parse(document).events[1].status == "monitoring"


def test_hostile_page_url_and_ids_do_not_make_links() -> None:
    document = _document()
    document["page"]["url"] = "javascript:alert(1)"
    document["incidents"][0]["id"] = "../../admin"
    events = _parse(document).events
    assert events[0].url == "https://stspg.io/nw1a2b3c"  # the shortlink instead
    assert events[1].url is None


@pytest.mark.parametrize(
    "data",
    [b"", b"[]", b'{"incidents": {}}', b'{"page": {}}', b"\xff\xfe", b"[" * 100_000, b"1e999999"],
)
def test_unusable_documents_raise_feed_error(data: bytes) -> None:
    with pytest.raises(FeedError):
        parse(data, MAPPING, source="northwind", now=NOW)


def test_summary_json_incidents_are_read() -> None:
    document = _document()
    document["components"] = []
    document["status"] = {"indicator": "critical", "description": "Major System Outage"}
    document["scheduled_maintenances"] = []
    assert len(_parse(document).events) == 4
