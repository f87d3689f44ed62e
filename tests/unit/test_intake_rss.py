"""RSS 2.0 and Atom status feeds, against fixtures written from the format specifications."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from broadcaster.intake import FeedError, SourceMapping
from broadcaster.intake.rss import parse
from broadcaster.intake.xmlsafe import ENTITY_REFUSED

OURS = Path(__file__).resolve().parents[1] / "fixtures" / "intake"
NOW = datetime(2026, 1, 5, 11, 0, tzinfo=UTC)
MAPPING = SourceMapping(regions={"category:*": "*"})


def _rss(items: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>t</title>'
        f"<link>https://example.com/</link><description>d</description>{items}</channel></rss>"
    ).encode()


def test_rss_fixture_statuses_from_categories_and_titles() -> None:
    result = parse((OURS / "status-rss.xml").read_bytes(), MAPPING, source="water", now=NOW)
    assert result.skipped == []
    assert [(e.external_id, e.status, e.severity) for e in result.events] == [
        ("rw-incident-4711", "investigating", "major"),  # no keyword; category "major"
        ("rw-incident-4702", "resolved", "minor"),  # "[Resolved]" in the title
        ("https://status.riverside-water.example/works/hs-valve", "resolved", "minor"),  # category
        ("rw-incident-4690", "monitoring", "minor"),  # trailing "- monitoring"
    ]


def test_rss_item_fields_and_html_stripping() -> None:
    result = parse((OURS / "status-rss.xml").read_bytes(), MAPPING, source="water", now=NOW)
    event = result.events[0]
    assert event.title == "Burst main: no water in Eastfield"
    assert event.message == (
        "A burst water main on Mill Lane has cut the supply to around 1,200 homes in Eastfield."
        "\n\nBottled water is available at the community centre, 9 Church Street."
    )
    assert "alert" not in event.message  # the <script> is gone, not shown as text
    assert event.regions == ("Eastfield", "major")
    assert event.url == "https://status.riverside-water.example/incidents/2026-0105-eastfield"
    assert event.starts_at == datetime(2026, 1, 5, 8, 15, tzinfo=UTC)
    assert event.updated_at == event.starts_at
    assert event.version.startswith("2026-01-05T08:15:00+00:00/")
    assert event.labels == {"rss.categories": "Eastfield, major"}


def test_statuspage_atom_history_takes_the_newest_status_line() -> None:
    result = parse(
        (OURS / "statuspage-history.atom").read_bytes(), SourceMapping(), source="nw", now=NOW
    )
    assert [(e.status, e.title) for e in result.events] == [
        ("identified", "Card payments failing for some customers"),
        ("resolved", "Login errors on the merchant dashboard"),
    ]
    first = result.events[0]
    assert first.external_id == "tag:status.northwind.example,2005:Incident/24511873"
    assert first.message.splitlines()[:2] == [
        "Jan 5, 10:41 UTC",
        "Identified - We have identified a faulty configuration change at our card processor "
        "integration and are rolling it back.",
    ]
    assert first.updated_at == datetime(2026, 1, 5, 10, 41, 55, tzinfo=UTC)
    assert first.starts_at == datetime(2026, 1, 5, 9, 12, 3, tzinfo=UTC)


def test_an_edit_without_a_new_date_still_changes_the_version() -> None:
    item = "<item><guid>a</guid><title>T</title><description>{}</description></item>"
    first = parse(_rss(item.format("one")), MAPPING, source="s", now=NOW).events[0]
    again = parse(_rss(item.format("one")), MAPPING, source="s", now=NOW).events[0]
    edited = parse(_rss(item.format("two")), MAPPING, source="s", now=NOW).events[0]
    assert first.version == again.version
    assert first.version != edited.version
    assert first.version.startswith("undated/")


@pytest.mark.parametrize(
    ("title", "status"),
    [
        ("Resolved: database latency", "resolved"),
        ("[RESOLVED] database latency", "resolved"),
        ("Database latency (Monitoring)", "monitoring"),
        ("Database latency - Identified", "identified"),
        ("Unresolved database latency", "investigating"),
        ("Station closed", "investigating"),
        ("Monitoring service down", "investigating"),
    ],
)
def test_title_keywords(title: str, status: str) -> None:
    data = _rss(f"<item><guid>g</guid><title>{title}</title></item>")
    assert parse(data, MAPPING, source="s", now=NOW).events[0].status == status


def test_keywords_are_configurable() -> None:
    mapping = SourceMapping(status_keywords={"behoben": "resolved", "störung": "investigating"})
    data = _rss("<item><guid>g</guid><title>[Behoben] Störung im Netz</title></item>")
    assert parse(data, mapping, source="s", now=NOW).events[0].status == "resolved"
    assert parse(data, MAPPING, source="s", now=NOW).events[0].status == "investigating"


def test_no_keywords_means_every_item_is_investigating() -> None:
    data = _rss("<item><guid>g</guid><title>[Resolved] x</title></item>")
    event = parse(data, SourceMapping(status_keywords={}), source="s", now=NOW).events[0]
    assert event.status == "investigating"


def test_items_without_guid_use_the_link_and_without_either_are_skipped() -> None:
    data = _rss(
        "<item><title>A</title><link>https://example.com/a</link></item>"
        "<item><title>B</title></item>"
    )
    result = parse(data, MAPPING, source="s", now=NOW)
    assert [e.external_id for e in result.events] == ["https://example.com/a"]
    assert result.skipped[0].reason == "no guid/id and no link"


def test_hostile_links_are_dropped() -> None:
    data = _rss("<item><guid>g</guid><title>A</title><link>javascript:alert(1)</link></item>")
    assert parse(data, MAPPING, source="s", now=NOW).events[0].url is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"just text",
        b"{}",
        b"/etc/passwd",  # feedparser would open a path given as bytes: we pass a stream
        b"\x00\x01\x02",
    ],
)
def test_non_feeds_raise_feed_error(data: bytes) -> None:
    with pytest.raises(FeedError):
        parse(data, MAPPING, source="s", now=NOW)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE rss [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<rss version="2.0"><channel><item><guid>g</guid><title>&lol3;</title></item></channel></rss>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<rss version="2.0"><channel><item><guid>g</guid><title>&xxe;</title></item></channel></rss>"""


@pytest.mark.parametrize(
    "data",
    [
        BILLION_LAUGHS,
        EXTERNAL_ENTITY,
        EXTERNAL_ENTITY.decode().encode("utf-16"),
        b'<?xml version="1.0"?><!DOCTYPE rss SYSTEM "http://attacker.example/x.dtd" [ ]><rss/>',
    ],
)
def test_entity_declarations_are_refused(data: bytes) -> None:
    with pytest.raises(FeedError, match=ENTITY_REFUSED):
        parse(data, MAPPING, source="s", now=NOW)


def test_a_plain_rss091_doctype_is_tolerated() -> None:
    data = (
        b'<?xml version="1.0"?><!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN"'
        b' "http://my.netscape.com/publish/formats/rss-0.91.dtd">'
        b'<rss version="0.91"><channel><title>t</title><link>https://e.com/</link>'
        b"<description>d</description><item><title>A</title><link>https://e.com/a</link>"
        b"</item></channel></rss>"
    )
    assert len(parse(data, MAPPING, source="s", now=NOW).events) == 1


@pytest.mark.parametrize("name", ["status-rss.xml", "statuspage-history.atom"])
def test_a_document_cut_short_is_refused_whole(name: str) -> None:
    """A partial download or a file half written: its last item, read by a lenient parser
    without its categories and text, was applied as an edit and never put right."""
    data = (OURS / name).read_bytes()
    cut = data[
        : data.index(b"</title>", data.index(b"<item>" if b"<item>" in data else b"<entry>"))
    ]
    with pytest.raises(FeedError, match=r"not well-formed XML \(line \d+, column \d+: .*"):
        parse(cut, MAPPING, source="s", now=NOW)


def test_a_whole_document_with_an_html_entity_is_read() -> None:
    """``&nbsp;`` is not XML's, but the document is whole: the lenient parser reads it."""
    data = _rss("<item><guid>g1</guid><title>Line 5&nbsp;disrupted</title></item>")
    [event] = parse(data, MAPPING, source="s", now=NOW).events
    assert event.external_id == "g1" and "disrupted" in event.title


def test_a_document_cut_short_after_an_html_entity_is_refused_whole() -> None:
    """feedparser stops looking at its first error: a tolerated ``&nbsp;`` hid the cut
    after it, and the last item, half read, was applied as an edit."""
    data = _rss(
        "<item><guid>a</guid><title>Payments&nbsp;down</title></item>"
        "<item><guid>b</guid><title>Database overloaded</title>"
        "<category>Critical</category><description>Identified - failing over</description>"
        "</item>"
    )
    cut = data[: data.index(b"<category>")]
    with pytest.raises(FeedError, match=r"not well-formed XML \(line 1, column \d+: .*\)"):
        parse(cut, MAPPING, source="s", now=NOW)
    assert len(parse(data, MAPPING, source="s", now=NOW).events) == 2
