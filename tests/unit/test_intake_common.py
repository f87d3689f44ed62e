"""The intake's shared parts: events, mappings, limits, text cleaning, key lookup."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.incidents.lifecycle import MAX_SCOPE_CHARS
from broadcaster.intake import (
    FeedError,
    IncidentEvent,
    Limits,
    SourceMapping,
    alertmanager,
    signed_webhook,
    statuspage,
)
from broadcaster.intake.events import ParseResult, SkippedItem
from broadcaster.intake.normalise import (
    Collector,
    Draft,
    map_keys,
    parse_datetime,
    resolve_severity,
)
from broadcaster.intake.text import clean_text, html_to_text, plain_text, safe_url, truncate

NOW = datetime(2026, 1, 5, 11, 0, tzinfo=UTC)


def _webhook(**fields: object) -> bytes:
    body: dict[str, object] = {
        "id": "inc-1",
        "title": "Title",
        "message": "Message",
        "status": "investigating",
    }
    body.update(fields)
    return json.dumps(body).encode()


# -- events and mappings --------------------------------------------------------------------


def test_event_is_immutable_hashable_and_keyed() -> None:
    event = IncidentEvent(
        source="s",
        external_id="1",
        version="v",
        title="t",
        severity="minor",
        status="investigating",
        message="m",
        labels={"a": "b"},
    )
    assert event.idempotency_key == ("s", "1", "v")
    assert event.is_open
    assert hash(event) == hash(event)
    with pytest.raises(TypeError):
        event.labels["a"] = "c"  # type: ignore[index]


@pytest.mark.parametrize(
    ("field", "value"),
    [("severity", "huge"), ("status", "closed"), ("starts_at", datetime(2026, 1, 1))],
)
def test_event_refuses_values_outside_the_vocabulary(field: str, value: object) -> None:
    fields: dict[str, object] = {
        "source": "s",
        "external_id": "1",
        "version": "v",
        "title": "t",
        "severity": "minor",
        "status": "resolved",
        "message": "m",
        field: value,
    }
    with pytest.raises(ValueError, match=field):
        IncidentEvent(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"default_severity": "urgent"},
        {"severities": {"high": "urgent"}},
        {"status_keywords": {"done": "closed"}},
        {"status_keywords": {"Done": "resolved"}},
        {"limits": "big"},
        {"preferred_languages": "en"},
    ],
)
def test_mapping_refuses_bad_configuration(kwargs: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        SourceMapping(**kwargs)  # type: ignore[arg-type]


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_items"):
        Limits(max_items=0)


def test_mapping_copies_its_tables() -> None:
    table = {"a": "b"}
    mapping = SourceMapping(components=table)
    table["a"] = "changed"
    assert mapping.components["a"] == "b"


def test_map_keys_exact_then_wildcard_then_dropped() -> None:
    table = {"route:Red": "red-line", "stop:*": "*", "agency:*": "all-agencies"}
    keys = [
        ("route:", "Red"),
        ("route:", "Blue"),
        ("stop:", "70026"),
        ("agency:", "1"),
        ("agency:", "2"),
        ("route:", "Red"),
    ]
    assert map_keys(keys, table, Limits()) == ("red-line", "70026", "all-agencies")
    assert map_keys([("", "x")], {}, Limits(), pass_through=True) == ("x",)
    many = [("", str(i)) for i in range(50)]
    assert len(map_keys(many, {"*": "*"}, Limits(max_keys=10))) == 10


def test_severity_resolution_prefers_overrides_then_builtin_then_default() -> None:
    builtin = {"warning": "minor"}
    mapping = SourceMapping(severities={"Warning": "major"}, default_severity="critical")
    assert resolve_severity(["warning"], builtin, mapping) == "major"
    assert resolve_severity(["warning"], builtin, SourceMapping()) == "minor"
    assert resolve_severity(["unheard-of"], builtin, mapping) == "critical"
    assert resolve_severity([], builtin, SourceMapping()) == "minor"


# -- text ------------------------------------------------------------------------------------


def test_clean_text_removes_controls_bidi_overrides_and_surrogates() -> None:
    hostile = "Pay\x00ment\x1b[31m \u202eelbaliava\u202c ok\ud800\r\nnext\u2028line"
    assert clean_text(hostile) == "Payment[31m elbaliava ok\nnext\nline"
    assert clean_text("  a \n\n\n\n b  ", single_line=True) == "a b"
    assert clean_text("e\u0301") == "é"  # NFC


def test_html_to_text_keeps_text_drops_markup_and_scripts() -> None:
    markup = (
        "<p>Line <b>one</b>&nbsp;&amp; more</p><script>alert(1)</script>"
        "<ul><li>first</li><li>second</li></ul><style>p{}</style><img src=x onerror=y>"
        "<a href='javascript:evil()'>link text</a>"
    )
    assert html_to_text(markup, limit=500) == "Line one & more\n\n- first\n\n- second\n\nlink text"
    assert html_to_text("<p>" + "x" * 100 + "</p>", limit=10) == "x" * 9 + "…"


def test_truncate_marks_the_cut() -> None:
    assert truncate("abcdef", 6) == "abcdef"
    assert truncate("abcdef", 4) == "abc…"
    assert len(plain_text("y" * 10_000, limit=50)) == 50


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://status.example.com/incidents/1", True),
        ("http://example.com", True),
        ("javascript:alert(1)", False),
        ("data:text/html,<script>", False),
        ("/relative/path", False),
        ("https://", False),
        ("https://exa mple.com", False),
        ("https://example.com:99999/", False),
        ("ftp://example.com/file", False),
        ("https://example.com/" + "a" * 3000, False),
    ],
)
def test_safe_url_keeps_only_absolute_http_urls(url: str, kept: bool) -> None:
    assert (safe_url(url, limit=2048) is not None) is kept


def test_safe_url_writes_the_scheme_in_lower_case() -> None:
    # Found by the fuzzer: schemes are case-insensitive, links should not vary with them.
    assert safe_url("HTTPS://Example.com/A", limit=100) == "https://Example.com/A"
    assert safe_url("Http://x.org", limit=100) == "http://x.org"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2018-03-07T06:33:21.873077559-05:00", datetime(2018, 3, 7, 11, 33, 21, 873077, UTC)),
        ("2014-05-14T14:22:39.441-06:00", datetime(2014, 5, 14, 20, 22, 39, 441000, UTC)),
        ("2026-01-05T10:00:00Z", datetime(2026, 1, 5, 10, 0, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", None),  # Go's zero time: "not set"
        ("2026-01-05T10:00:00", None),  # no offset: would be a guess
        ("2026-01-05", None),
        ("yesterday", None),
        (12345, None),
        ("0001-01-01T00:00:00+05:00", None),
    ],
)
def test_parse_datetime(value: object, expected: datetime | None) -> None:
    assert parse_datetime(value) == expected


@given(st.text())
def test_clean_text_output_is_always_encodable(text: str) -> None:
    cleaned = clean_text(text)
    cleaned.encode("utf-8")
    assert all(c in "\n\t" or c.isprintable() or c.isspace() or ord(c) > 127 for c in cleaned)


# -- limits ----------------------------------------------------------------------------------


def test_every_json_parser_refuses_oversized_documents() -> None:
    mapping = SourceMapping(limits=Limits(max_document_bytes=100))
    big = b'{"incidents": [' + b" " * 200 + b"]}"
    for parse in (statuspage.parse, alertmanager.parse, signed_webhook.parse):
        with pytest.raises(FeedError, match="over the limit"):
            parse(big, mapping, source="s", now=NOW)


def test_over_long_fields_are_truncated_and_over_long_ids_skipped() -> None:
    mapping = SourceMapping(limits=Limits(max_title_chars=20, max_message_chars=30))
    result = signed_webhook.parse(
        _webhook(title="T" * 100, message="M" * 100), mapping, source="s", now=NOW
    )
    event = result.events[0]
    assert event.title == "T" * 19 + "…"
    assert event.message == "M" * 29 + "…"
    long_id = signed_webhook.parse(
        _webhook(id="x" * 200), SourceMapping(limits=Limits(max_id_chars=100)), source="s", now=NOW
    )
    assert long_id.events == []
    assert "longer than 100" in long_id.skipped[0].reason


def test_items_over_the_item_limit_are_counted_not_read() -> None:
    incidents = [
        {"id": f"i{n}", "name": "x", "status": "investigating", "incident_updates": []}
        for n in range(7)
    ]
    data = json.dumps({"incidents": incidents}).encode()
    result = statuspage.parse(data, SourceMapping(limits=Limits(max_items=5)), source="s", now=NOW)
    assert len(result.events) == 5
    assert result.skipped[-1].reason == "2 item(s) over the limit of 5"


def test_duplicate_ids_keep_the_first() -> None:
    incidents = [
        {"id": "same", "name": "first", "status": "investigating"},
        {"id": "same", "name": "second", "status": "investigating"},
    ]
    result = statuspage.parse(
        json.dumps({"incidents": incidents}).encode(), SourceMapping(), source="s", now=NOW
    )
    assert [e.title for e in result.events] == ["first"]
    assert result.skipped[0].reason.startswith("duplicate id")


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        naive = datetime(2026, 1, 1)
        statuspage.parse(b'{"incidents": []}', SourceMapping(), source="s", now=naive)


def test_datetimes_are_normalised_to_utc() -> None:
    result = signed_webhook.parse(
        _webhook(starts_at="2026-01-05T10:00:00+02:00"), SourceMapping(), source="s", now=NOW
    )
    starts_at = result.events[0].starts_at
    assert starts_at == datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    assert starts_at is not None and starts_at.utcoffset() == timedelta(0)
    assert starts_at.tzinfo is UTC


def test_html_the_standard_parser_gives_up_on_keeps_its_text() -> None:
    # Atom's default summary type is text; one with "<![" was read as HTML, and
    # html.parser raised on the unknown marked section.
    text = html_to_text("Resignalling <![phase 2] starts <b>Monday</b> &amp; runs", limit=300)
    assert text == "Resignalling <![phase 2] starts Monday & runs"
    # Scripts and styles are dropped on that path too, as the parser drops them.
    text = html_to_text("<p>a</p><![x]> b <script>evil()</script> c <STYLE>p{}</style>", limit=300)
    assert text == "a b c"


def test_an_item_that_raises_is_skipped_by_name_and_the_others_are_kept() -> None:
    collector = Collector(SourceMapping(), "s", now=datetime(2026, 1, 5, tzinfo=UTC))
    good = Draft(
        external_id="good",
        version="1",
        title="Fine",
        message="",
        status="investigating",
        severity="minor",
        keys=[("", "lifts")],
        pass_through=True,
    )

    def broken() -> Draft:
        raise AssertionError("unknown status keyword 'phase ' in marked section")

    collector.item("bad-1", broken)
    collector.item("good", lambda: good)
    result = collector.result()
    assert [e.external_id for e in result.events] == ["good"]
    assert [(s.item_id, s.reason) for s in result.skipped] == [
        ("bad-1", "unreadable: AssertionError: unknown status keyword 'phase ' in marked section")
    ]


def test_an_item_dated_far_ahead_of_the_clock_is_skipped_saying_so() -> None:
    """Applied, a date years ahead stands as the item's newest version, and its later
    edits and its resolution are ignored as older for good."""
    now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    collector = Collector(SourceMapping(), "s", now=now)

    def item(name: str, updated: datetime) -> Draft:
        return Draft(
            external_id=name,
            version="1",
            title="Signal fault",
            message="",
            status="investigating",
            severity="minor",
            keys=[("", "lifts")],
            pass_through=True,
            updated_at=updated,
        )

    collector.item("far", lambda: item("far", datetime(9999, 12, 31, 23, 59, tzinfo=UTC)))
    collector.item("skewed", lambda: item("skewed", now + timedelta(hours=14)))
    result = collector.result()
    assert [e.external_id for e in result.events] == ["skewed"]  # a clock hours out passes
    assert [(s.item_id, s.reason) for s in result.skipped] == [
        (
            "far",
            "updated_at 9999-12-31T23:59:00+00:00 is more than 1 day ahead of this host's clock",
        )
    ]


def test_scope_names_are_cut_to_what_the_store_keeps() -> None:
    long_name = "Lift " + "x" * 240
    (name,) = map_keys([("", long_name)], {}, Limits(), pass_through=True)
    assert len(name) == MAX_SCOPE_CHARS and name.startswith("Lift xxx")


def test_a_snapshot_lists_skipped_items_by_their_whole_id() -> None:
    """The daemon and `feeds check` both read what a snapshot still lists from here: a
    skipped item's id shown in the log is cut short, its key is whole."""
    whole = "alert-" + "x" * 200
    result = ParseResult(
        events=[],
        skipped=[
            SkippedItem("not active yet", item_id=whole[:120] + "…", key=whole),
            SkippedItem("no id", item_id="short"),
            SkippedItem("unreadable"),
        ],
        snapshot=True,
    )
    assert result.present() == {whole, "short"}
