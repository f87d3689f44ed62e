"""One customer row: what is accepted, how it is normalised, and how a bad field is reported."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.customers.rows import (
    CSV_COLUMNS,
    LIST_FIELDS,
    MAX_ADDRESS,
    CustomerRow,
    HeaderError,
    Problem,
    RowError,
    RowRejected,
    check_csv_header,
    from_csv_record,
    from_json_line,
    split_list,
)

GOOD = {
    "id": " c-1 ",
    "name": "Jane Doe",
    "language": "en_gb",
    "timezone": "Europe/Amsterdam",
    "email": "Jane.Doe@EXAMPLE.com",
    "phone": "+31 6 1234 5678",
    "push_tokens": "fcm:tok-a; apns: ABCDEF0123 ;;fcm:tok-a;apns:abcdef0123",
    "components": "line-1;line-2",
    "regions": " north ",
    "channels": " sms ; email;;sms",
    "tier": " gold ",
    "tags": "vip; beta;;vip",
    "region": " EU West ",
    "sla": "24x7, 1 h response",
    "account_manager": "j.doe-42",
}
SUBSCRIPTION = {
    "endpoint": "https://push.example.net/wpush/v2/gAAAAABk",
    "expirationTime": None,
    "keys": {
        "p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u",
        "auth": "tBHItJI5svbpez7KI4CCXg",
    },
}
CANONICAL_SUBSCRIPTION = json.dumps(
    {"endpoint": SUBSCRIPTION["endpoint"], "keys": SUBSCRIPTION["keys"]}, separators=(",", ":")
)


def rejected(record: dict[str, str]) -> list[Problem]:
    with pytest.raises(RowRejected) as caught:
        from_csv_record(record)
    return list(caught.value.problems)


def json_rejected(record: dict[str, object]) -> list[Problem]:
    with pytest.raises(RowRejected) as caught:
        from_json_line(json.dumps(record))
    return list(caught.value.problems)


def test_a_good_csv_row_is_normalised() -> None:
    row = from_csv_record(GOOD)
    assert row == CustomerRow(
        id="c-1",
        name="Jane Doe",
        language="en-GB",
        timezone="Europe/Amsterdam",
        email="Jane.Doe@example.com",
        phone="+31612345678",
        push_tokens=("fcm:tok-a", "apns:abcdef0123"),
        components=("line-1", "line-2"),
        regions=("north",),
        channels=("sms", "email"),
        tier="gold",
        tags=("vip", "beta"),
        region="EU West",
        sla="24x7, 1 h response",
        account_manager="j.doe-42",
    )
    assert row.stored_tags() == "vip,beta"
    assert row.contact_points() == [
        ("email", "Jane.Doe@example.com"),
        ("sms", "+31612345678"),
        ("fcm", "tok-a"),
        ("apns", "abcdef0123"),
    ]
    assert row.channel_order() == "sms,email"
    assert row.subscriptions() == [
        ("component", "line-1"),
        ("component", "line-2"),
        ("region", "north"),
    ]


def test_empty_cells_take_the_defaults() -> None:
    row = from_csv_record({column: "" for column in CSV_COLUMNS} | {"id": "c", "name": "N"})
    assert (row.language, row.timezone, row.email, row.phone) == ("en", "UTC", None, None)
    assert row.contact_points() == [] and row.subscriptions() == []
    assert row.channels == () and row.channel_order() is None
    assert (row.tier, row.tags, row.stored_tags()) == ("standard", (), None)
    assert (row.region, row.sla, row.account_manager) == (None, None, None)


@pytest.mark.parametrize(
    ("language", "canonical"),
    [
        ("EN", "en"),
        ("nl", "nl"),
        ("en-gb", "en-GB"),
        ("zh_hant_tw", "zh-Hant-TW"),
        ("es-419", "es-419"),
    ],
)
def test_language_tags_are_written_canonically(language: str, canonical: str) -> None:
    assert from_csv_record({"id": "c", "name": "N", "language": language}).language == canonical


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("id", "x" * 65, "String should have at most 64 characters"),
        ("name", "   ", "is required"),
        ("language", "english", "'english' is not a language tag like en, nl or en-GB"),
        ("language", "e", "'e' is not a language tag like en, nl or en-GB"),
        ("timezone", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        (
            "timezone",
            "europe/amsterdam",
            "unknown time zone 'europe/amsterdam' (did you mean 'Europe/Amsterdam'?)",
        ),
        ("email", "not-an-email", "value is not a valid email address: "),
        ("email", "a@b@c.com", "value is not a valid email address: "),
        ("phone", "0612345678", "'0612345678' must be in international format: + and country code"),
        ("phone", "+1 555", "'+1 555' is not a valid phone number"),
        ("phone", "+abc", "'+abc' is not a phone number: "),
        ("name", "bad\x00name", "contains a NUL character"),
        ("name", "bad\udcffbytes", "is not valid UTF-8 text"),
        ("tier", "Gold", "'Gold' is not a tier (1 to 32 of a-z, 0-9, _ and -)"),
        ("tier", "t" * 33, f"'{'t' * 33}' is not a tier"),
        ("region", "r" * 201, "String should have at most 200 characters"),
        ("region", "a\x00b", "contains a NUL character"),
        ("sla", "s" * 65, "String should have at most 64 characters"),
        (
            "account_manager",
            "j doe",
            "'j doe' is not a staff id (1 to 64 of A-Z, a-z, 0-9, _, . and -)",
        ),
        ("account_manager", "a" * 65, f"'{'a' * 65}' is not a staff id"),
        ("account_manager", "jane@example.com", "'jane@example.com' is not a staff id"),
    ],
)
def test_each_bad_field_is_named_with_its_reason(field: str, value: str, message: str) -> None:
    record = {"id": "c", "name": "N", field: value}
    if field == "name" and not value.strip():
        record = {"id": "c", "name": value}
    [problem] = rejected(record)
    assert problem.field == field
    assert problem.message.startswith(message), problem.message


def test_list_items_are_named_by_position() -> None:
    problems = rejected(
        {
            "id": "c",
            "name": "N",
            "push_tokens": "fcm:ok;fcm:" + "t" * (MAX_ADDRESS + 1),
            "components": "a;b\x00",
            "channels": "sms;SMS",
            "tags": "vip;has space",
        }
    )
    assert problems == [
        Problem("push_tokens[1]", "an fcm token is at most 2048 characters"),
        Problem("components[1]", "contains a NUL character"),
        Problem("channels[1]", "'SMS' is not a channel name (1 to 32 of a-z, 0-9, _ and -)"),
        Problem("tags[1]", "'has space' is not a tag (1 to 32 of a-z, 0-9, _ and -)"),
    ]


# --- push tokens: provider:token ------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "point"),
    [
        ("fcm:dKx3:APA91bH-x_y", ("fcm", "dKx3:APA91bH-x_y")),  # FCM tokens contain colons
        ("fcm: spaced ", ("fcm", "spaced")),
        ("fcm:" + "f" * MAX_ADDRESS, ("fcm", "f" * MAX_ADDRESS)),
        ("apns:0123456789ABCDEF", ("apns", "0123456789abcdef")),  # lower case: re-imports match
        ("apns:" + "a" * 8, ("apns", "a" * 8)),
        ("apns:" + "F" * 400, ("apns", "f" * 400)),
        ("ntfy:alerts_Jane-42", ("ntfy", "alerts_Jane-42")),
        ("ntfy:" + "t" * 64, ("ntfy", "t" * 64)),
        ("webpush:" + json.dumps(SUBSCRIPTION), ("webpush", CANONICAL_SUBSCRIPTION)),
        (
            "webpush:" + json.dumps(SUBSCRIPTION, indent=2).replace('"https', '"http'),
            ("webpush", CANONICAL_SUBSCRIPTION.replace('"https', '"http')),  # a local test service
        ),
    ],
)
def test_each_push_provider_is_its_own_contact_kind(entry: str, point: tuple[str, str]) -> None:
    row = from_json_line(json.dumps({"id": "c", "name": "N", "push_tokens": [entry]}))
    assert row.contact_points() == [point]
    assert from_csv_record({"id": "c", "name": "N", "push_tokens": entry}) == row


def test_one_web_push_subscription_written_two_ways_is_one_contact_point() -> None:
    compact = "webpush:" + json.dumps(SUBSCRIPTION, separators=(",", ":"))
    spaced = "webpush: " + json.dumps(dict(reversed(SUBSCRIPTION.items())), indent=1)
    row = from_json_line(json.dumps({"id": "c", "name": "N", "push_tokens": [compact, spaced]}))
    assert row.contact_points() == [("webpush", CANONICAL_SUBSCRIPTION)]


def _subscription(**changes: object) -> str:
    """``SUBSCRIPTION`` with some keys changed (``...`` leaves the key out), as an entry."""
    document = json.loads(json.dumps(SUBSCRIPTION)) | changes
    return "webpush:" + json.dumps({k: v for k, v in document.items() if v is not ...})


_NEEDS_PROVIDER = "a push token needs its provider: fcm:, apns:, webpush: or ntfy:"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("tok-a", _NEEDS_PROVIDER),
        ("dKx3:APA91bH", _NEEDS_PROVIDER),  # a bare FCM token: its colon is no provider
        ("gcm:tok", _NEEDS_PROVIDER),
        ("push:tok", _NEEDS_PROVIDER),
        ("FCM:tok", _NEEDS_PROVIDER + " (in lower case)"),
        ("fcm:", "nothing follows 'fcm:'"),
        ("ntfy:  ", "nothing follows 'ntfy:'"),
        ("fcm:two words", "an fcm token is printable ASCII without spaces"),
        ("fcm:tökén", "an fcm token is printable ASCII without spaces"),
        ("fcm:" + "t" * (MAX_ADDRESS + 1), "an fcm token is at most 2048 characters"),
        ("apns:abcdefg1", "an apns device token is 8 to 400 hexadecimal digits"),
        ("apns:abcdef1", "an apns device token is 8 to 400 hexadecimal digits"),
        ("apns:" + "a" * 401, "an apns device token is 8 to 400 hexadecimal digits"),
        ("ntfy:alerts/jane", "an ntfy topic is 1 to 64 of A-Z, a-z, 0-9, _ and -"),
        ("ntfy:" + "t" * 65, "an ntfy topic is 1 to 64 of A-Z, a-z, 0-9, _ and -"),
        ("webpush:https://push.example.net/x", "a webpush subscription must be the browser's"),
        ("webpush:{'endpoint': 'https://x'}", "a webpush subscription must be the browser's"),
        ('webpush:["https://push.example.net/x"]', "a webpush subscription must be a JSON object"),
        (_subscription(keys=...), "a webpush subscription needs its keys (p256dh and auth)"),
        (_subscription(keys="abc"), "a webpush subscription needs its keys (p256dh and auth)"),
        (
            _subscription(keys={"p256dh": "BNcR"}),
            "a webpush subscription needs keys.auth (base64url text)",
        ),
        (
            _subscription(keys={"auth": "tBHI", "p256dh": 7}),
            "a webpush subscription needs keys.p256dh (base64url text)",
        ),
        (
            _subscription(keys={"auth": "not base64!", "p256dh": "BNcR"}),
            "a webpush subscription needs keys.auth (base64url text)",
        ),
        (_subscription(endpoint=...), "a webpush subscription needs its endpoint URL"),
        (_subscription(endpoint="push.example.net"), "a webpush subscription needs its endpoint"),
        (_subscription(endpoint="https://a b"), "a webpush subscription needs its endpoint URL"),
        (
            _subscription(endpoint="https://push.example.net/" + "x" * MAX_ADDRESS),
            "a webpush subscription is at most 2048 characters (as compact JSON)",
        ),
    ],
)
def test_bad_push_tokens_are_named_with_their_reason(entry: str, message: str) -> None:
    for problems in (
        rejected({"id": "c", "name": "N", "push_tokens": "fcm:ok;" + entry}),
        json_rejected({"id": "c", "name": "N", "push_tokens": ["fcm:ok", entry]}),
    ):
        [problem] = problems
        assert problem.field == "push_tokens[1]"
        assert problem.message.startswith(message), problem.message


def test_a_web_push_subscription_in_a_csv_cell_needs_the_usual_quoting() -> None:
    entry = "webpush:" + json.dumps(SUBSCRIPTION)
    buffer = io.StringIO()
    csv.writer(buffer).writerows([["id", "name", "push_tokens"], ["c", "N", f"fcm:a;{entry}"]])
    header, cells = csv.reader(io.StringIO(buffer.getvalue()))
    row = from_csv_record(dict(zip(check_csv_header(header), cells, strict=True)))
    assert row.contact_points() == [("fcm", "a"), ("webpush", CANONICAL_SUBSCRIPTION)]


# --- channels: the preferred order ----------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "channels"),
    [
        ({"channels": "sms;email"}, ("sms", "email")),
        ({"channels": " push-fcm ; email ;sms;email;"}, ("push-fcm", "email", "sms")),
        ({"channels": "a_1;" + "x" * 32}, ("a_1", "x" * 32)),
        ({"channels": ";"}, ()),
    ],
)
def test_channels_are_an_ordered_list_of_names(
    record: dict[str, str], channels: tuple[str, ...]
) -> None:
    row = from_csv_record({"id": "c", "name": "N"} | record)
    assert row.channels == channels
    assert row.channel_order() == (",".join(channels) or None)
    line = json.dumps({"id": "c", "name": "N", "channels": list(channels)})
    assert from_json_line(line) == row


@pytest.mark.parametrize(
    ("channels", "problem"),
    [
        (["Email"], Problem("channels[0]", "'Email' is not a channel name")),
        (["sms", "e mail"], Problem("channels[1]", "'e mail' is not a channel name")),
        (["x" * 33], Problem("channels[0]", "'" + "x" * 33 + "' is not a channel name")),
        (["sms,email"], Problem("channels[0]", "'sms,email' is not a channel name")),
        ("sms;email", Problem("channels", "must be a list of strings")),
        ([1], Problem("channels[0]", "must be a string")),
    ],
)
def test_bad_channel_names_are_named_by_position(channels: object, problem: Problem) -> None:
    [found] = json_rejected({"id": "c", "name": "N", "channels": channels})
    assert found.field == problem.field
    assert found.message.startswith(problem.message), found.message


def test_every_bad_field_of_a_row_is_reported_at_once() -> None:
    problems = rejected({"id": "", "name": "", "email": "x"})
    assert [problem.field for problem in problems] == ["id", "name", "email"]


@pytest.mark.parametrize(
    ("cell", "items"),
    [
        ("a;b;c", ["a", "b", "c"]),
        (" a ; b ", ["a", "b"]),
        ("a;;b;", ["a", "b"]),
        (";", []),
        ("", []),
        ("one", ["one"]),
    ],
)
def test_csv_lists_are_split_on_semicolons(cell: str, items: list[str]) -> None:
    assert split_list(cell) == items


def test_repeated_list_items_are_kept_once_in_order() -> None:
    row = from_csv_record({"id": "c", "name": "N", "regions": "b;a;b;a"})
    assert row.regions == ("b", "a")


def test_header_is_trimmed_and_case_insensitive() -> None:
    assert check_csv_header([" ID", "Name ", "EMAIL"]) == ["id", "name", "email"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (["id", "name", "mail", "fone"], "unknown column(s) 'mail', 'fone'"),
        (["id", "email"], "missing required column(s) 'name'"),
        (["id", "name", "id"], "repeated column(s) 'id'"),
    ],
)
def test_unusable_headers_are_refused(header: list[str], message: str) -> None:
    with pytest.raises(HeaderError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_csv_header(header)


def test_a_good_json_line() -> None:
    line = json.dumps(
        {
            "id": "c-2",
            "name": "Jan",
            "language": "nl",
            "email": None,
            "phone": "",
            "push_tokens": ["fcm:t1", "ntfy:t2"],
            "components": [],
            "regions": ["south"],
            "channels": ["ntfy", "email"],
            "tier": "enterprise",
            "tags": ["vip", "eu-only", "vip"],
            "region": "Benelux",
            "sla": "",
            "account_manager": None,
        }
    )
    row = from_json_line(line)
    assert (row.tier, row.tags, row.stored_tags()) == (
        "enterprise",
        ("vip", "eu-only"),
        "vip,eu-only",
    )
    assert (row.region, row.sla, row.account_manager) == ("Benelux", None, None)
    assert row.email is None and row.phone is None
    assert row.push_tokens == ("fcm:t1", "ntfy:t2") and row.regions == ("south",)
    assert row.contact_points() == [("fcm", "t1"), ("ntfy", "t2")]
    assert row.channels == ("ntfy", "email")
    assert from_json_line(line.encode()) == row


@pytest.mark.parametrize(
    ("line", "problems"),
    [
        ('{"id": "c", "name": "N", "fax": "1"}', [Problem("fax", "unknown field")]),
        (
            '{"id": "c", "name": "N", "regions": "a;b"}',
            [Problem("regions", "must be a list of strings")],
        ),
        (
            '{"id": "c", "name": "N", "regions": ["a", 1]}',
            [Problem("regions[1]", "must be a string")],
        ),
        ('{"id": 7, "name": "N"}', [Problem("id", "must be a string")]),
        (
            '{"id": "c", "name": "N", "tags": "vip;beta"}',
            [Problem("tags", "must be a list of strings")],
        ),
        (
            '{"id": "c", "name": "N", "tags": ["vip", "VIP"], "tier": 2}',
            [Problem("tier", "must be a string"), Problem("tags[1]", "'VIP' is not a tag")],
        ),
        ('{"id": "c", "name": "N", "sla": 24}', [Problem("sla", "must be a string")]),
        ('{"name": "N"}', [Problem("id", "is required")]),
        ('["c", "N"]', [Problem(None, "expected a JSON object")]),
        (
            '{"id": "c",',
            [
                Problem(
                    None,
                    "not valid JSON: Expecting property name enclosed in double quotes at column",
                )
            ],
        ),
        (b'{"id": "\xff", "name": "N"}', [Problem(None, "the line is not valid UTF-8")]),
        ('{"id": "c", "name": "\\ud800"}', [Problem("name", "is not valid UTF-8 text")]),
        ("[" * 100_000, [Problem(None, "not valid JSON: maximum recursion depth exceeded")]),
    ],
)
def test_bad_json_lines(line: str | bytes, problems: list[Problem]) -> None:
    with pytest.raises(RowRejected) as caught:
        from_json_line(line)
    found = list(caught.value.problems)
    assert [p.field for p in found] == [p.field for p in problems]
    for got, want in zip(found, problems, strict=True):
        assert got.message.startswith(want.message), got.message


def test_row_error_reads_like_a_compiler_message() -> None:
    error = RowError(
        "customers.csv",
        7,
        (Problem("email", "value is not a valid email address"), Problem(None, "whole row")),
    )
    assert str(error) == "customers.csv:7: email: value is not a valid email address; whole row"
    assert error.field == "email"


# --- properties -------------------------------------------------------------------------------

_cells = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["", "en", "nl-BE", "UTC", "Asia/Tokyo", "a@example.com", "+31612345678"]),
    st.sampled_from(["fcm:t", "apns:0123abcd", "ntfy:t;fcm:", "sms;email", "webpush:{}"]),
)


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_a_json_line_either_parses_or_is_a_row_error(line: str | bytes) -> None:
    try:
        from_json_line(line)
    except RowRejected as exc:
        assert exc.problems


@given(st.dictionaries(st.sampled_from(CSV_COLUMNS), _cells))
def test_a_csv_record_either_parses_or_is_a_row_error(record: dict[str, str]) -> None:
    try:
        from_csv_record(record)
    except RowRejected as exc:
        assert exc.problems and all(isinstance(p, Problem) for p in exc.problems)


_items = st.lists(st.text(min_size=1, max_size=30).filter(lambda s: ";" not in s), max_size=6)


def _web_push_entry(path: str, p256dh: str, auth: str) -> str:
    keys = {"p256dh": p256dh, "auth": auth}
    return "webpush:" + json.dumps({"endpoint": f"https://push.example.net/{path}", "keys": keys})


_base64url = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)
_push_tokens = st.lists(  # valid ones: rejection is the property above
    st.one_of(
        st.builds("fcm:{}".format, st.from_regex(r"[!-:<-~]{1,30}", fullmatch=True)),  # no ;
        st.builds("apns:{}".format, st.from_regex(r"[0-9A-Fa-f]{8,40}", fullmatch=True)),
        st.builds("ntfy:{}".format, st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)),
        st.builds(_web_push_entry, _base64url, _base64url, _base64url),
    ),
    max_size=6,
)
_channels = st.lists(st.from_regex(r"[a-z0-9_-]{1,32}", fullmatch=True), max_size=4)


@given(components=_items, regions=_items, tokens=_push_tokens, channels=_channels, tags=_channels)
def test_accepted_rows_round_trip_through_csv_and_json(
    components: list[str],
    regions: list[str],
    tokens: list[str],
    channels: list[str],
    tags: list[str],
) -> None:
    record = {
        "id": "c",
        "name": "N",
        "components": ";".join(components),
        "regions": ";".join(regions),
        "push_tokens": ";".join(tokens),
        "channels": ";".join(channels),
        "tags": ";".join(tags),
    }
    try:
        row = from_csv_record(record)
    except RowRejected:
        return  # e.g. a NUL character: rejected, which the property above allows
    expected = tuple(dict.fromkeys(item.strip() for item in components if item.strip()))
    assert row.components == expected
    assert row.channels == tuple(dict.fromkeys(channels))
    assert row.tags == tuple(dict.fromkeys(tags))
    assert [kind for kind, _ in row.contact_points()] == [t.split(":")[0] for t in row.push_tokens]
    # Writing the accepted row back out, as CSV or as JSON, reads in as the same row.
    as_csv = {
        name: ";".join(value) if name in LIST_FIELDS else (value or "")
        for name, value in row.model_dump().items()
    }
    assert from_csv_record(as_csv) == row
    assert from_json_line(row.model_dump_json()) == row


# --- ids are URL path segments; languages are BCP 47; channels are the configured ones --------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a/b", "must not contain '/' (ids are used in URL paths)"),
        ("/", "must not contain '/' (ids are used in URL paths)"),
        (".", "must not be '.' (ids are used in URL paths)"),
        ("..", "must not be '..' (ids are used in URL paths)"),
        ("a\x07b", "must not contain control characters"),
        ("a\tb", "must not contain control characters"),
        ("a\x85b", "must not contain control characters"),
        ("   ", "is required"),  # a blank cell is no value; the API says "must not be empty"
    ],
)
def test_an_id_that_cannot_be_a_url_path_segment_is_refused(value: str, message: str) -> None:
    assert rejected({"id": value, "name": "N"}) == [Problem("id", message)]
    assert json_rejected({"id": value, "name": "N"}) == [Problem("id", message)]


@pytest.mark.parametrize("value", ["c-1", "C001", "a.b", "...", "x?y#z", "100%", "a b", "Zoë"])
def test_ids_a_url_can_carry_are_kept(value: str) -> None:
    assert from_csv_record({"id": value, "name": "N"}).id == value


@pytest.mark.parametrize(
    ("language", "canonical"),
    [
        ("fy", "fy"),  # shipped or not: messages fall back to the default language
        ("zh-yue", "zh-yue"),
        ("sr_latn_rs", "sr-Latn-RS"),
        ("de-CH-1901", "de-CH-1901"),
        ("sl-rozaj", "sl-rozaj"),
        ("th-TH-u-nu-thai", "th-TH-u-nu-thai"),
        ("en-US-x-twain", "en-US-x-twain"),
    ],
)
def test_well_formed_language_tags_are_kept(language: str, canonical: str) -> None:
    assert from_csv_record({"id": "c", "name": "N", "language": language}).language == canonical


@pytest.mark.parametrize(
    "language", ["xx-YY-ZZ", "en-GB-GB", "en-", "en--GB", "en-Latn-Latn", "en-u", "e1", "en-x"]
)
def test_a_language_that_is_no_bcp47_tag_is_refused(language: str) -> None:
    problem = Problem("language", f"'{language}' is not a language tag like en, nl or en-GB")
    assert rejected({"id": "c", "name": "N", "language": language}) == [problem]


def test_a_channel_that_is_not_configured_is_refused_naming_the_configured_ones() -> None:
    record = {"id": "c", "name": "N", "channels": "email;pigeon"}
    configured = {"console", "email"}
    with pytest.raises(RowRejected) as caught:
        from_csv_record(record, configured)
    assert caught.value.problems == (
        Problem("channels", "'pigeon' is not a configured channel (configured: console, email)"),
    )
    with pytest.raises(RowRejected) as caught:
        from_json_line(json.dumps({"id": "c", "name": "N", "channels": ["pigeon"]}), {"sms"})
    assert str(caught.value) == "channels: 'pigeon' is not a configured channel (configured: sms)"
    assert from_csv_record(record, {"email", "pigeon"}).channels == ("email", "pigeon")
    assert from_csv_record(record).channels == ("email", "pigeon")  # no configuration: form only


# --- the postal address: kept when left out, cleared when given empty ----------------------


def test_a_postal_address_spans_lines_in_one_quoted_csv_cell() -> None:
    text = 'id,name,postal_address\nc1,Jane,"  Keizersgracht 123 \r\n\r\n1015 CJ  Amsterdam\n"\n'
    header, record = list(csv.reader(io.StringIO(text, newline="")))
    row = from_csv_record(dict(zip(check_csv_header(header), record, strict=True)))
    assert row.postal_address == "Keizersgracht 123\n1015 CJ  Amsterdam"
    assert row.gives_postal_address


@pytest.mark.parametrize(
    ("record", "gives"),
    [
        ({"id": "c1", "name": "N"}, False),  # the file has no such column or key
        ({"id": "c1", "name": "N", "postal_address": ""}, True),  # given empty: none on file
        ({"id": "c1", "name": "N", "postal_address": " \n "}, True),
    ],
)
def test_a_csv_row_left_without_a_postal_address_says_so(
    record: dict[str, str], gives: bool
) -> None:
    row = from_csv_record(record)
    assert row.postal_address is None and row.gives_postal_address is gives


@pytest.mark.parametrize(
    ("value", "stored", "gives"),
    [
        ("Dorpsstraat 1\n1234 AB Ergens", "Dorpsstraat 1\n1234 AB Ergens", True),
        (None, None, True),
        ("", None, True),
        ("   ", None, True),
    ],
)
def test_a_json_line_s_postal_address_null_or_empty_clears_it(
    value: str | None, stored: str | None, gives: bool
) -> None:
    row = from_json_line(json.dumps({"id": "c1", "name": "N", "postal_address": value}))
    assert (row.postal_address, row.gives_postal_address) == (stored, gives)
    assert not from_json_line(json.dumps({"id": "c1", "name": "N"})).gives_postal_address


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a" * 501, "is 501 characters long; at most 500"),
        ("\n".join(["line"] * 11), "has 11 lines; at most 10"),
        ("Dorpsstraat\t1", "contains a control character (only line breaks may separate lines)"),
        ("Dorps\x00straat", "contains a control character (only line breaks may separate lines)"),
        (12, "must be a string"),
        (["Dorpsstraat 1", "Ergens"], "must be a string"),
    ],
)
def test_a_bad_postal_address_is_named_with_its_reason(value: object, message: str) -> None:
    assert json_rejected({"id": "c1", "name": "N", "postal_address": value}) == [
        Problem("postal_address", message)
    ]


def test_the_longest_postal_address_is_kept() -> None:
    longest = "\n".join(["a" * 49] * 10)  # 10 lines, 499 characters with the line breaks
    row = from_json_line(json.dumps({"id": "c1", "name": "N", "postal_address": longest}))
    assert row.postal_address == longest
    assert "postal_address" in CSV_COLUMNS
