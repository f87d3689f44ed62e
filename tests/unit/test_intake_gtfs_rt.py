"""GTFS-realtime Service Alerts against the real MBTA feed (51 alerts, Dec 2017)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
from google.protobuf import text_format  # type: ignore[import-untyped]
from google.transit import gtfs_realtime_pb2 as gtfs

from broadcaster.intake import FeedError, IncidentEvent, ParseResult, SourceMapping
from broadcaster.intake.gtfs_rt import parse
from tests.conftest import FIXTURES

FEED = FIXTURES / "gtfs-rt" / "mbta-alerts.pb"
FEED_TIME = datetime.fromtimestamp(1514034019, UTC)  # the header timestamp: 2017-12-23 13:00 UTC
MAPPING = SourceMapping(
    components={"route:Red": "red-line", "route:Orange": "orange-line"},
    regions={"stop:70026": "north-station", "agency:1": "greater-boston"},
)


def _parse(now: datetime = FEED_TIME, mapping: SourceMapping = MAPPING) -> ParseResult:
    return parse(FEED.read_bytes(), mapping, source="mbta", now=now)


def _event(result: ParseResult, entity_id: str) -> IncidentEvent:
    return next(e for e in result.events if e.external_id == entity_id)


def test_all_51_alerts_are_accounted_for_at_feed_time() -> None:
    result = _parse()
    assert len(result.events) + len(result.skipped) == 51
    assert len(result.events) == 36
    assert len(result.skipped) == 15
    assert all(s.reason.startswith("not active yet (starts 201") for s in result.skipped)
    wollaston = next(s for s in result.skipped if s.item_id == "219466")
    assert wollaston.reason == "not active yet (starts 2018-01-08T09:30:00+00:00)"
    assert Counter(e.status for e in result.events) == {"identified": 36}
    assert result.snapshot  # a full dataset: alerts that vanish have ended


def test_change_at_braintree() -> None:
    event = _event(_parse(), "169844")
    assert event.title == "Change at Braintree"
    assert event.message.startswith("For access to Braintree Station during this closure")
    assert "\r" not in event.message
    assert event.message.endswith("Middleborough/Lakeville Line\nKingston/Plymouth Line")
    assert event.components == ("red-line",)
    assert event.regions == ("greater-boston",)
    every_route = SourceMapping(components={**MAPPING.components, "route:*": "*"})
    routes = _event(_parse(mapping=every_route), "169844").components
    assert routes == ("red-line", "CR-Kingston", "CR-Middleborough", "210", "230", "236")
    assert event.labels == {"gtfs.cause": "CONSTRUCTION", "gtfs.effect": "UNKNOWN_EFFECT"}
    assert event.severity == "minor"
    assert event.starts_at == datetime(2017, 2, 21, 9, 30, tzinfo=UTC)
    assert event.ends_at is None
    assert event.updated_at == FEED_TIME
    assert event.languages == {"en": (event.title, event.message)}


def test_stop_only_alert_maps_by_stop() -> None:
    event = _event(_parse(), "105025")
    assert event.title == "elevator unavailable"
    assert event.regions == ("north-station",)
    assert event.components == ()


def test_recurring_alert_stays_open_between_periods() -> None:
    result = _parse()
    event = _event(result, "217460")  # 105 periods: the first running, the rest to come
    assert event.status == "identified"
    assert event.severity == "minor"  # DETOUR
    assert event.ends_at is not None and event.ends_at > FEED_TIME


def test_future_alert_is_read_once_its_first_period_starts() -> None:
    assert "219466" not in {e.external_id for e in _parse().events}
    later = _parse(datetime(2018, 1, 8, 9, 30, tzinfo=UTC))
    event = _event(later, "219466")
    assert event.title == "Wollaston closed"
    assert event.severity == "major"  # NO_SERVICE
    assert event.components == ("red-line",)


def test_alerts_whose_periods_are_over_are_resolved_with_a_new_version() -> None:
    now = _parse()
    much_later = _parse(datetime(2030, 1, 1, tzinfo=UTC))
    event = _event(much_later, "219249")  # "Red Line shuttle": four closed periods
    assert event.status == "resolved"
    assert event.ends_at is not None and event.ends_at < datetime(2030, 1, 1, tzinfo=UTC)
    open_ended = _event(much_later, "169844")
    assert open_ended.status == "identified"
    assert open_ended.version == _event(now, "169844").version
    statuses = Counter(e.status for e in much_later.events)
    assert statuses["resolved"] > 0 and statuses["identified"] > 0
    assert len(much_later.events) == 51


def test_reading_twice_gives_the_same_keys() -> None:
    assert [e.idempotency_key for e in _parse().events] == [
        e.idempotency_key for e in _parse().events
    ]


def test_text_format_fixture_is_the_same_feed() -> None:
    message = gtfs.FeedMessage()
    text_format.Parse((FIXTURES / "gtfs-rt" / "mbta-alerts.txtpb").read_text(), message)
    from_text = parse(message.SerializeToString(), MAPPING, source="mbta", now=FEED_TIME)
    assert from_text == _parse()


def _feed(alert: gtfs.Alert, *, entity_id: str = "a1", deleted: bool = False) -> bytes:
    message = gtfs.FeedMessage()
    message.header.gtfs_realtime_version = "2.0"
    message.header.timestamp = int(FEED_TIME.timestamp())
    entity = message.entity.add()
    entity.id = entity_id
    entity.is_deleted = deleted
    entity.alert.CopyFrom(alert)
    return bytes(message.SerializeToString())


def _alert(**texts: list[tuple[str, str]]) -> gtfs.Alert:
    alert = gtfs.Alert()
    for field, pairs in texts.items():
        for language, text in pairs:
            translation = getattr(alert, field).translation.add()
            translation.text = text
            if language:
                translation.language = language
    return alert


def test_severity_level_wins_over_effect_and_can_be_overridden() -> None:
    alert = _alert(header_text=[("", "Signal failure")])
    alert.effect = gtfs.Alert.SIGNIFICANT_DELAYS
    alert.severity_level = gtfs.Alert.SEVERE
    assert parse(_feed(alert), MAPPING, source="t", now=FEED_TIME).events[0].severity == "critical"
    alert.severity_level = gtfs.Alert.INFO
    assert parse(_feed(alert), MAPPING, source="t", now=FEED_TIME).events[0].severity == "minor"
    alert.ClearField("severity_level")
    assert parse(_feed(alert), MAPPING, source="t", now=FEED_TIME).events[0].severity == "major"
    override = SourceMapping(severities={"SIGNIFICANT_DELAYS": "critical"})
    assert parse(_feed(alert), override, source="t", now=FEED_TIME).events[0].severity == "critical"


def test_translations_and_preferred_language() -> None:
    alert = _alert(
        header_text=[("fr", "Ligne fermée"), ("en", "Line closed")],
        description_text=[("fr", "Bus de remplacement."), ("en", "Replacement buses.")],
        url=[("en", "https://transit.example/alerts/1"), ("fr", "javascript:alert(1)")],
    )
    event = parse(_feed(alert), MAPPING, source="t", now=FEED_TIME).events[0]
    assert (event.title, event.message) == ("Line closed", "Replacement buses.")
    assert event.url == "https://transit.example/alerts/1"
    assert event.languages == {
        "fr": ("Ligne fermée", "Bus de remplacement."),
        "en": ("Line closed", "Replacement buses."),
    }
    french = SourceMapping(preferred_languages=("fr",))
    event = parse(_feed(alert), french, source="t", now=FEED_TIME).events[0]
    assert event.title == "Ligne fermée"
    assert event.url is None  # the French URL is not http(s)


def test_untagged_text_is_used_when_the_preferred_language_is_missing() -> None:
    alert = _alert(header_text=[("de", "Gesperrt"), ("", "Closed")])
    assert parse(_feed(alert), MAPPING, source="t", now=FEED_TIME).events[0].title == "Closed"


def test_trip_informed_entities() -> None:
    alert = _alert(header_text=[("", "Train 517 cancelled")])
    informed = alert.informed_entity.add()
    informed.trip.trip_id = "CR-Weekday-517"
    informed.trip.route_id = "CR-Worcester"
    mapping = SourceMapping(components={"trip:*": "*", "trip_route:CR-Worcester": "worcester"})
    event = parse(_feed(alert), mapping, source="t", now=FEED_TIME).events[0]
    assert event.components == ("CR-Weekday-517", "worcester")


def test_deleted_entity_is_a_bare_resolution() -> None:
    result = parse(_feed(gtfs.Alert(), deleted=True), MAPPING, source="t", now=FEED_TIME)
    (event,) = result.events
    assert (event.external_id, event.status) == ("a1", "resolved")
    assert (event.title, event.message) == ("", "")


def test_alert_without_text_is_skipped() -> None:
    result = parse(_feed(gtfs.Alert()), MAPPING, source="t", now=FEED_TIME)
    assert result.events == []
    assert result.skipped[0].reason == "no title and no text"
    assert result.skipped[0].item_id == "a1"


def test_invalid_utf8_in_strings_is_replaced_not_raised() -> None:
    data = _feed(_alert(header_text=[("", "OKAY")]), entity_id="IDID")
    data = data.replace(b"OKAY", b"O\xffAY").replace(b"IDID", b"I\xfeID")
    event = parse(data, MAPPING, source="t", now=FEED_TIME).events[0]
    assert event.title == "O\ufffdAY"
    assert event.external_id == "I\ufffdID"


@pytest.mark.parametrize("data", [b"", b"\x0a\x05garbage", b"not protobuf at all \xff"])
def test_unusable_documents_raise_feed_error(data: bytes) -> None:
    with pytest.raises(FeedError):
        parse(data, MAPPING, source="t", now=FEED_TIME)


def test_an_alert_missing_a_required_text_is_read_and_the_others_too() -> None:
    broken = _alert(header_text=[("en", "Line closed")], description_text=[("en", "Buses.")])
    broken.description_text.translation.add(language="fr")  # no text: a required field
    message = gtfs.FeedMessage()
    message.header.gtfs_realtime_version = "2.0"
    message.header.timestamp = int(FEED_TIME.timestamp())
    for entity_id, alert in (("bad-1", broken), ("good", _alert(header_text=[("", "Fine")]))):
        entity = message.entity.add()
        entity.id = entity_id
        entity.alert.CopyFrom(alert)
    data = bytes(message.SerializePartialToString())  # as a careless producer writes it
    result = parse(data, MAPPING, source="t", now=FEED_TIME)
    assert sorted(e.external_id for e in result.events) == ["bad-1", "good"]
    assert _event(result, "bad-1").title == "Line closed"
