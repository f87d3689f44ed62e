"""Hostile input for every intake parser: whatever arrives, only FeedError may escape.

Arbitrary bytes, mutated real fixtures, JSON documents with arbitrary values in arbitrary
places, CAP alerts and GTFS-rt alerts with arbitrary contents. Every event that does come
out must respect the vocabulary and the limits.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from google.transit import gtfs_realtime_pb2 as gtfs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broadcaster.incidents.lifecycle import SEVERITIES
from broadcaster.intake import (
    EVENT_STATUSES,
    FeedError,
    Limits,
    ParseResult,
    SourceMapping,
    alertmanager,
    cap,
    gtfs_rt,
    rss,
    signed_webhook,
    statuspage,
)
from broadcaster.intake.cap_index import parse_index
from tests.conftest import FIXTURES

OURS = Path(__file__).resolve().parents[1] / "fixtures" / "intake"
NOW = datetime(2026, 1, 5, 11, 0, tzinfo=UTC)
LIMITS = Limits(max_title_chars=80, max_message_chars=400, max_id_chars=64, max_keys=5)
MAPPING = SourceMapping(
    components={"*": "*", "route:*": "*", "service=*": "*", "category:*": "*"},
    regions={"SAME:*": "*", "area:*": "*", "stop:*": "*"},
    limits=LIMITS,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Parser = Callable[..., ParseResult]
PARSERS: dict[str, Parser] = {
    "statuspage": statuspage.parse,
    "rss": rss.parse,
    "gtfs_rt": gtfs_rt.parse,
    "cap": cap.parse,
    "alertmanager": alertmanager.parse,
    "signed_webhook": signed_webhook.parse,
}
SEEDS: dict[str, list[Path]] = {
    "statuspage": [OURS / "statuspage-incidents.json"],
    "rss": [OURS / "status-rss.xml", OURS / "statuspage-history.atom"],
    "gtfs_rt": [FIXTURES / "gtfs-rt" / "mbta-alerts.pb"],
    "cap": sorted((FIXTURES / "cap").glob("*.xml")),
    "alertmanager": [FIXTURES / "alertmanager" / "prom_post_request.json"],
    "signed_webhook": [OURS / "webhook-incident.json"],
}


def check(result: ParseResult) -> None:
    """Every event keeps to the vocabulary, the limits and safe text."""
    for event in result.events:
        assert event.severity in SEVERITIES
        assert event.status in EVENT_STATUSES
        assert 0 < len(event.external_id) <= LIMITS.max_id_chars
        assert 0 < len(event.version) <= LIMITS.max_id_chars
        assert len(event.title) <= LIMITS.max_title_chars
        assert "\n" not in event.title
        assert len(event.message) <= LIMITS.max_message_chars
        assert event.title or event.message or event.status == "resolved"
        assert len(event.components) <= LIMITS.max_keys
        for text in (event.title, event.message, event.external_id, *event.components):
            text.encode("utf-8")  # no lone surrogates
            assert not any(ord(c) < 32 and c not in "\n\t" for c in text)
        for moment in (event.starts_at, event.ends_at, event.expires_at, event.updated_at):
            assert moment is None or moment.utcoffset() is not None
        assert event.url is None or event.url.startswith(("http://", "https://"))
        assert len(event.languages) <= LIMITS.max_languages
    for skipped in result.skipped:
        assert isinstance(skipped.reason, str) and skipped.reason


def run(name: str, data: bytes) -> None:
    try:
        result = PARSERS[name](data, MAPPING, source="fuzz", now=NOW)
    except FeedError as exc:
        assert exc.reason
        return
    check(result)


@pytest.mark.parametrize("name", sorted(PARSERS))
@FUZZ
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes(name: str, data: bytes) -> None:
    run(name, data)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[Path]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)).read_bytes())
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "delete", "insert", "repeat"]))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 256))] * draw(st.integers(1, 4))
    return bytes(data)


@pytest.mark.parametrize("name", sorted(PARSERS))
@FUZZ
@given(data=st.data())
def test_mutated_fixtures(name: str, data: st.DataObject) -> None:
    run(name, data.draw(mutated(SEEDS[name])))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from(["2026-01-05T10:00:00Z", "0001-01-01T00:00:00Z", "resolved", "firing"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            paths += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            paths += _paths(child, (*prefix, index))
    return paths


def _replace(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return document


@pytest.mark.parametrize("name", ["statuspage", "alertmanager", "signed_webhook"])
@FUZZ
@given(data=st.data())
def test_json_with_arbitrary_values_in_arbitrary_places(name: str, data: st.DataObject) -> None:
    document = json.loads(SEEDS[name][0].read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        path = data.draw(st.sampled_from(_paths(document)))
        document = _replace(document, path, data.draw(JSON_VALUES))
    run(name, json.dumps(document).encode())


XML_TEXT = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=60
)
CAP_FIELDS = [
    "identifier", "sender", "sent", "status", "msgType", "references", "headline",
    "description", "severity", "urgency", "expires", "onset", "web", "language", "areaDesc",
]  # fmt: skip


@FUZZ
@given(values=st.fixed_dictionaries({f: XML_TEXT for f in CAP_FIELDS}), infos=st.integers(0, 3))
def test_cap_alerts_with_arbitrary_contents(values: dict[str, str], infos: int) -> None:
    v = {key: escape(text) for key, text in values.items()}
    info = (
        f"<info><language>{v['language']}</language><urgency>{v['urgency']}</urgency>"
        f"<severity>{v['severity']}</severity><expires>{v['expires']}</expires>"
        f"<onset>{v['onset']}</onset><headline>{v['headline']}</headline>"
        f"<description>{v['description']}</description><web>{v['web']}</web>"
        f"<area><areaDesc>{v['areaDesc']}</areaDesc><geocode><valueName>SAME</valueName>"
        f"<value>{v['areaDesc']}</value></geocode></area></info>"
    )
    document = (
        '<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">'
        f"<identifier>{v['identifier']}</identifier><sender>{v['sender']}</sender>"
        f"<sent>{v['sent']}</sent><status>Actual</status><msgType>{v['msgType']}</msgType>"
        f"<references>{v['references']}</references>{info * infos}</alert>"
    )
    run("cap", document.encode())
    run("rss", document.replace("alert", "rss").encode())
    with contextlib.suppress(FeedError):
        parse_index(document.replace("alert", "feed").encode())


TIMES = st.integers(0, 2**64 - 1)
PB_TEXT = st.text(max_size=30)


@FUZZ
@given(
    entities=st.lists(
        st.tuples(
            PB_TEXT,
            st.booleans(),
            st.lists(
                st.tuples(st.one_of(st.none(), TIMES), st.one_of(st.none(), TIMES)), max_size=3
            ),
            st.lists(st.tuples(PB_TEXT, PB_TEXT), max_size=3),
            st.lists(st.tuples(PB_TEXT, PB_TEXT, PB_TEXT), max_size=3),
            st.sampled_from(gtfs.Alert.Effect.values()),
            st.sampled_from(gtfs.Alert.SeverityLevel.values()),
        ),
        max_size=6,
    )
)
def test_gtfs_alerts_with_arbitrary_contents(entities: list[Any]) -> None:
    message = gtfs.FeedMessage()
    message.header.gtfs_realtime_version = "2.0"
    for entity_id, deleted, periods, texts, informed, effect, level in entities:
        entity = message.entity.add()
        entity.id = entity_id
        entity.is_deleted = deleted
        alert = entity.alert
        for start, end in periods:
            period = alert.active_period.add()
            if start is not None:
                period.start = start
            if end is not None:
                period.end = end
        for language, text in texts:
            for field in (alert.header_text, alert.description_text, alert.url):
                translation = field.translation.add()
                translation.text = text
                translation.language = language
        for agency, route, stop in informed:
            selector = alert.informed_entity.add()
            selector.agency_id, selector.route_id, selector.stop_id = agency, route, stop
        alert.effect = effect
        alert.severity_level = level
    run("gtfs_rt", message.SerializeToString())


@FUZZ
@given(
    headers=st.dictionaries(
        st.sampled_from(["X-Broadcaster-Timestamp", "X-Broadcaster-Signature", "Other"]),
        st.text(max_size=80) | st.sampled_from([str(int(NOW.timestamp())), "v1=" + "a" * 64]),
    ),
    body=st.binary(max_size=200),
)
def test_verify_raises_only_signature_errors(headers: dict[str, str], body: bytes) -> None:
    try:
        signed_webhook.verify("secret", headers, body, NOW)
    except signed_webhook.SignatureError as exc:
        assert exc.reason
    else:  # only a correct signature passes, and random input will not forge one
        pytest.fail("an unsigned request was accepted")
