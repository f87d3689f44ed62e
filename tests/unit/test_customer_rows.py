"""One customer row: what is accepted, how it is normalised, and how a bad field is reported."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.customers.rows import (
    CSV_COLUMNS,
    LIST_FIELDS,
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
    "push_tokens": "tok-a; tok-b;;tok-a",
    "components": "line-1;line-2",
    "regions": " north ",
}


def rejected(record: dict[str, str]) -> list[Problem]:
    with pytest.raises(RowRejected) as caught:
        from_csv_record(record)
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
        push_tokens=("tok-a", "tok-b"),
        components=("line-1", "line-2"),
        regions=("north",),
    )
    assert row.contact_points() == [
        ("email", "Jane.Doe@example.com"),
        ("sms", "+31612345678"),
        ("push", "tok-a"),
        ("push", "tok-b"),
    ]
    assert row.subscriptions() == [
        ("component", "line-1"),
        ("component", "line-2"),
        ("region", "north"),
    ]


def test_empty_cells_take_the_defaults() -> None:
    row = from_csv_record({column: "" for column in CSV_COLUMNS} | {"id": "c", "name": "N"})
    assert (row.language, row.timezone, row.email, row.phone) == ("en", "UTC", None, None)
    assert row.contact_points() == [] and row.subscriptions() == []


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
        {"id": "c", "name": "N", "push_tokens": "ok;" + "t" * 513, "components": "a;b\x00"}
    )
    assert problems == [
        Problem("push_tokens[1]", "String should have at most 512 characters"),
        Problem("components[1]", "contains a NUL character"),
    ]


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
            "push_tokens": ["t1", "t2"],
            "components": [],
            "regions": ["south"],
        }
    )
    row = from_json_line(line)
    assert row.email is None and row.phone is None
    assert row.push_tokens == ("t1", "t2") and row.regions == ("south",)
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


@given(components=_items, regions=_items, tokens=_items)
def test_accepted_rows_round_trip_through_csv_and_json(
    components: list[str], regions: list[str], tokens: list[str]
) -> None:
    record = {
        "id": "c",
        "name": "N",
        "components": ";".join(components),
        "regions": ";".join(regions),
        "push_tokens": ";".join(tokens),
    }
    try:
        row = from_csv_record(record)
    except RowRejected:
        return  # e.g. a NUL character: rejected, which the property above allows
    expected = tuple(dict.fromkeys(item.strip() for item in components if item.strip()))
    assert row.components == expected
    # Writing the accepted row back out, as CSV or as JSON, reads in as the same row.
    as_csv = {
        name: ";".join(value) if name in LIST_FIELDS else (value or "")
        for name, value in row.model_dump().items()
    }
    assert from_csv_record(as_csv) == row
    assert from_json_line(row.model_dump_json()) == row
