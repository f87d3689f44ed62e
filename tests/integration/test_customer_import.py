"""Customer import against a real store (SQLite and PostgreSQL), and the CLI command around it."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from typer.testing import CliRunner

from broadcaster.cli import customers as customers_cli
from broadcaster.clock import FakeClock
from broadcaster.customers import (
    ImportInputError,
    ImportResult,
    RowError,
    import_customers,
    importer,
)
from broadcaster.store import ContactPoint, Customer, Database, Subscription

HEADER = "id,name,language,timezone,email,phone,push_tokens,components,regions\n"
MIXED = (
    HEADER
    + "c1,Jane Doe,nl,Europe/Amsterdam,jane@example.com,+31612345678,fcm:t1;ntfy:t2,line-1;line-2,"
    + "north\n"
    + 'c2,"Multi\nline name",en,UTC,not-an-email,,,,\n'  # lines 3-4
    + "\n"  # line 5: blank, skipped
    + "c3,Bob,,,,,,line-1,\n"  # line 6
    + "c4,Bad Phone,,,,0612345678,,,\n"  # line 7
    + "c5,Nul\x00Name,,,,,,,\n"  # line 8
    + "c6,Too,many,fields,,,,,,,\n"  # line 9
    + "c7,Ann,en-GB,Mars/Base,,,,,\n"  # line 10
    + "c8,Ann,en-GB,Europe/London,ann@example.org,,,,south\n"  # line 11
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


async def run_import(database: Database, path: Path, **options: Any) -> ImportResult:
    options.setdefault("clock", FakeClock())
    return await import_customers(database, path, **options)


async def customers(database: Database) -> dict[str, tuple[str, str, str]]:
    async with database.engine.connect() as connection:
        rows = await connection.execute(
            select(Customer.id, Customer.name, Customer.language, Customer.timezone)
        )
        return {row.id: (row.name, row.language, row.timezone) for row in rows}


async def contact_points(database: Database) -> dict[tuple[str, str, str], tuple[int, bool, bool]]:
    async with database.engine.connect() as connection:
        rows = await connection.execute(select(ContactPoint))
        return {
            (row.customer_id, row.kind, row.address): (row.id, row.opted_out, row.disabled)
            for row in rows
        }


async def subscriptions(database: Database) -> set[tuple[str, str, str]]:
    async with database.engine.connect() as connection:
        rows = await connection.execute(
            select(Subscription.customer_id, Subscription.kind, Subscription.value)
        )
        return {(row.customer_id, row.kind, row.value) for row in rows}


async def channel_orders(database: Database) -> dict[str, str | None]:
    async with database.engine.connect() as connection:
        rows = await connection.execute(select(Customer.id, Customer.channel_order))
        return {row.id: row.channel_order for row in rows}


def csv_text(*rows: list[str]) -> str:
    """Rows written by the csv module: cells with commas or quotes come out quoted."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


async def count(database: Database, model: Any) -> int:
    async with database.engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(model))).scalar_one())


async def test_bad_rows_are_reported_with_their_line_and_good_rows_kept(
    database: Database, tmp_path: Path
) -> None:
    path = write(tmp_path, "customers.csv", MIXED)
    seen: list[RowError] = []
    result = await run_import(database, path, on_error=seen.append)

    assert (result.imported, result.rejected) == (3, 5)
    assert seen == result.errors
    assert [str(error) for error in result.errors] == [
        f"{path}:3: email: value is not a valid email address: "
        "An email address must have an @-sign.",
        f"{path}:7: phone: '0612345678' must be in international format: + and country code",
        f"{path}:8: name: contains a NUL character",
        f"{path}:9: has 11 fields, the header has 9",
        f"{path}:10: timezone: unknown time zone 'Mars/Base'",
    ]
    assert await customers(database) == {
        "c1": ("Jane Doe", "nl", "Europe/Amsterdam"),
        "c3": ("Bob", "en", "UTC"),
        "c8": ("Ann", "en-GB", "Europe/London"),
    }
    assert set(await contact_points(database)) == {
        ("c1", "email", "jane@example.com"),
        ("c1", "sms", "+31612345678"),
        ("c1", "fcm", "t1"),
        ("c1", "ntfy", "t2"),
        ("c8", "email", "ann@example.org"),
    }
    assert await subscriptions(database) == {
        ("c1", "component", "line-1"),
        ("c1", "component", "line-2"),
        ("c1", "region", "north"),
        ("c3", "component", "line-1"),
        ("c8", "region", "south"),
    }


async def test_reimporting_the_same_file_changes_nothing(
    database: Database, tmp_path: Path
) -> None:
    path = write(tmp_path, "customers.csv", MIXED)
    clock = FakeClock()
    first = await run_import(database, path, clock=clock, batch_size=2)
    points, topics = await contact_points(database), await subscriptions(database)
    clock.advance(timedelta(hours=1))
    again = await run_import(database, path, clock=clock, batch_size=2)

    assert (again.imported, again.rejected) == (first.imported, first.rejected)
    assert await contact_points(database) == points  # same rows, same ids: no duplicates
    assert await subscriptions(database) == topics
    assert await count(database, ContactPoint) == len(points) == 5
    assert await count(database, Subscription) == len(topics) == 5
    async with database.engine.connect() as connection:
        created, updated = (
            await connection.execute(
                select(Customer.created_at, Customer.updated_at).where(Customer.id == "c1")
            )
        ).one()
    assert created == clock.now() - timedelta(hours=1)  # set on first insert only
    assert updated == clock.now()


async def test_flags_survive_and_changed_lists_are_replaced(
    database: Database, tmp_path: Path
) -> None:
    before = (
        HEADER + "c1,Jane,en,UTC,jane@example.com,+31612345678,fcm:t1;fcm:t2,line-1;line-2,north\n"
    )
    await run_import(database, write(tmp_path, "customers.csv", before))
    async with database.engine.begin() as connection:
        await connection.execute(
            update(ContactPoint).where(ContactPoint.kind == "email").values(opted_out=True)
        )
        await connection.execute(
            update(ContactPoint)
            .where(ContactPoint.kind == "sms")
            .values(disabled=True, disabled_reason="invalid number")
        )
    ids = {key: value[0] for key, value in (await contact_points(database)).items()}

    after = (
        HEADER + "c1,Jane Q,de,Europe/Berlin,jane@example.com,+31612345678,fcm:t2;ntfy:t3,line-3,\n"
    )
    result = await run_import(database, write(tmp_path, "customers.csv", after))

    assert (result.imported, result.rejected) == (1, 0)
    assert await customers(database) == {"c1": ("Jane Q", "de", "Europe/Berlin")}
    points = await contact_points(database)
    assert set(points) == {
        ("c1", "email", "jane@example.com"),
        ("c1", "sms", "+31612345678"),
        ("c1", "fcm", "t2"),
        ("c1", "ntfy", "t3"),
    }
    assert points[("c1", "email", "jane@example.com")][1:] == (True, False)  # still opted out
    assert points[("c1", "sms", "+31612345678")][1:] == (False, True)  # still disabled
    for kept in [("c1", "email", "jane@example.com"), ("c1", "fcm", "t2")]:
        assert points[kept][0] == ids[kept]
    assert await subscriptions(database) == {("c1", "component", "line-3")}


async def test_json_lines(database: Database, tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "j1", "name": "Jo", "email": "jo@example.com", "regions": ["east"]}),
        "",
        json.dumps({"id": "j2", "name": "Al", "fax": "+31201234567"}),
        "{not json",
        json.dumps(
            {"id": "j3", "name": "Li", "timezone": "Asia/Tokyo", "push_tokens": ["ntfy:p1"]}
        ),
    ]
    path = write(tmp_path, "customers.ndjson", "\n".join(lines) + "\n")
    result = await run_import(database, path)

    assert (result.imported, result.rejected) == (2, 2)
    assert [(error.line, error.field) for error in result.errors] == [(3, "fax"), (4, None)]
    assert str(result.errors[0]) == f"{path}:3: fax: unknown field"
    assert set(await customers(database)) == {"j1", "j3"}
    assert set(await contact_points(database)) == {
        ("j1", "email", "jo@example.com"),
        ("j3", "ntfy", "p1"),
    }


SUBSCRIPTION = {
    "endpoint": "https://push.example.net/wpush/v2/gAAAAABk",
    "expirationTime": None,
    "keys": {"p256dh": "BNcRdreALRFXTkOOUHK1EtK2", "auth": "tBHItJI5svbpez7KI4CCXg"},
}
STORED_SUBSCRIPTION = (
    '{"endpoint":"https://push.example.net/wpush/v2/gAAAAABk",'
    '"keys":{"p256dh":"BNcRdreALRFXTkOOUHK1EtK2","auth":"tBHItJI5svbpez7KI4CCXg"}}'
)


async def test_push_tokens_are_stored_under_their_provider(
    database: Database, tmp_path: Path
) -> None:
    tokens = [
        "fcm:dKx3:APA91bH-x_y",
        "apns:0123456789ABCDEF",
        "ntfy:alerts_jane",
        "webpush:" + json.dumps(SUBSCRIPTION),  # commas and quotes: the csv module quotes it
    ]
    text = csv_text(
        ["id", "name", "push_tokens", "channels"],
        ["p1", "Pia", ";".join(tokens), "webpush;email"],
        ["p2", "Bad", "fcm:ok;tok-without-provider", ""],
        ["p3", "Bad too", 'webpush:{"endpoint": "https://push.example.net/x"}', ""],
        ["p4", "Ok", "fcm:" + "f" * 2048, ""],  # the longest address the store takes
    )
    path = write(tmp_path, "push.csv", text)
    result = await run_import(database, path)

    assert (result.imported, result.rejected) == (2, 2)
    assert [str(error) for error in result.errors] == [
        f"{path}:3: push_tokens[1]: a push token needs its provider: "
        "fcm:, apns:, webpush: or ntfy:",
        f"{path}:4: push_tokens[0]: a webpush subscription needs its keys (p256dh and auth)",
    ]
    assert set(await contact_points(database)) == {
        ("p1", "fcm", "dKx3:APA91bH-x_y"),
        ("p1", "apns", "0123456789abcdef"),
        ("p1", "ntfy", "alerts_jane"),
        ("p1", "webpush", STORED_SUBSCRIPTION),
        ("p4", "fcm", "f" * 2048),
    }
    assert await channel_orders(database) == {"p1": "webpush,email", "p4": None}


async def test_a_web_push_subscription_written_differently_keeps_its_contact_point(
    database: Database, tmp_path: Path
) -> None:
    compact = json.dumps(
        {"id": "w1", "name": "W", "push_tokens": ["webpush:" + json.dumps(SUBSCRIPTION)]}
    )
    await run_import(database, write(tmp_path, "a.jsonl", compact + "\n"))
    async with database.engine.begin() as connection:
        await connection.execute(update(ContactPoint).values(opted_out=True))
    before = await contact_points(database)

    reordered = dict(reversed(SUBSCRIPTION.items())) | {"expirationTime": 1_700_000_000_000}
    entry = "webpush: " + json.dumps(reordered, indent=2)
    line = json.dumps({"id": "w1", "name": "W", "push_tokens": [entry]})
    result = await run_import(database, write(tmp_path, "b.jsonl", line + "\n"))

    assert (result.imported, result.rejected) == (1, 0)
    assert await contact_points(database) == before  # same row, still opted out
    assert set(before) == {("w1", "webpush", STORED_SUBSCRIPTION)}


async def test_reimport_updates_the_channel_order_and_keeps_flags(
    database: Database, tmp_path: Path
) -> None:
    header = "id,name,email,push_tokens,channels\n"
    first = header + "k1,Kim,kim@example.com,fcm:t1,fcm;email\nk2,Lou,,,\n"
    await run_import(database, write(tmp_path, "k.csv", first))
    assert await channel_orders(database) == {"k1": "fcm,email", "k2": None}
    async with database.engine.begin() as connection:
        await connection.execute(update(ContactPoint).values(disabled=True))
    points = await contact_points(database)

    second = header + "k1,Kim,kim@example.com,fcm:t1, email ;sms;email\nk2,Lou,,,ntfy\n"
    result = await run_import(database, write(tmp_path, "k.csv", second))
    assert (result.imported, result.rejected) == (2, 0)
    assert await channel_orders(database) == {"k1": "email,sms", "k2": "ntfy"}
    assert await contact_points(database) == points  # flags and ids untouched

    third = header + "k1,Kim,kim@example.com,fcm:t1,\nk2,Lou,,,ntfy\n"
    await run_import(database, write(tmp_path, "k.csv", third))
    assert await channel_orders(database) == {"k1": None, "k2": "ntfy"}


async def profiles(database: Database) -> dict[str, tuple[str | None, ...]]:
    """id -> (tier, tags, region, sla, account_manager) as stored."""
    async with database.engine.connect() as connection:
        rows = await connection.execute(
            select(
                Customer.id,
                Customer.tier,
                Customer.tags,
                Customer.region,
                Customer.sla,
                Customer.account_manager,
            )
        )
        return {row.id: tuple(row[1:]) for row in rows}


async def test_profile_columns_are_stored_and_updated_on_reimport(
    database: Database, tmp_path: Path
) -> None:
    header = ["id", "name", "tier", "tags", "region", "sla", "account_manager"]
    first = csv_text(
        header,
        ["t1", "Tia", "gold", "vip; beta;vip", "EU West, Amsterdam", "24x7", "j.doe-42"],
        ["t2", "Tom", "", "", "", "", ""],
        ["t3", "Bad", "Gold", "", "", "", ""],
        ["t4", "Bad", "", "ok;not ok", "", "", ""],
        ["t5", "Bad", "", "", "r" * 201, "", ""],
        ["t6", "Bad", "", "", "", "s" * 65, ""],
        ["t7", "Bad", "", "", "", "", "jane doe"],
        ["t8", "Edge", "t" * 32, "x" * 32, "r" * 200, "s" * 64, "a" * 64],
    )
    path = write(tmp_path, "p.csv", first)
    result = await run_import(database, path)
    assert (result.imported, result.rejected) == (3, 5)
    assert [(error.line, error.field) for error in result.errors] == [
        (4, "tier"),
        (5, "tags[1]"),
        (6, "region"),
        (7, "sla"),
        (8, "account_manager"),
    ]
    assert str(result.errors[0]) == (
        f"{path}:4: tier: 'Gold' is not a tier (1 to 32 of a-z, 0-9, _ and -)"
    )
    assert await profiles(database) == {
        "t1": ("gold", "vip,beta", "EU West, Amsterdam", "24x7", "j.doe-42"),
        "t2": ("standard", None, None, None, None),
        "t8": ("t" * 32, "x" * 32, "r" * 200, "s" * 64, "a" * 64),
    }

    second = csv_text(
        header,
        ["t1", "Tia", "", "", "", "", ""],  # emptied: back to the defaults
        ["t2", "Tom", "silver", "new", "APAC", "business hours", "m.smith"],
    )
    result = await run_import(database, write(tmp_path, "p.csv", second))
    assert (result.imported, result.rejected) == (2, 0)
    assert (await profiles(database))["t1"] == ("standard", None, None, None, None)
    assert (await profiles(database))["t2"] == (
        "silver",
        "new",
        "APAC",
        "business hours",
        "m.smith",
    )

    line = {"id": "t2", "name": "Tom", "tier": "gold", "tags": ["b", "a", "b"], "sla": "24x7"}
    lines = [json.dumps(line), json.dumps({"id": "t9", "name": "N", "tags": "a;b"})]
    path = write(tmp_path, "p.jsonl", "\n".join(lines) + "\n")
    result = await run_import(database, path)
    assert [str(error) for error in result.errors] == [f"{path}:2: tags: must be a list of strings"]
    assert (await profiles(database))["t2"] == ("gold", "b,a", None, "24x7", None)


async def test_channels_in_json_lines(database: Database, tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "n1", "name": "N", "channels": ["sms", "email", "sms"]}),
        json.dumps({"id": "n2", "name": "M", "channels": ["SMS"]}),
        json.dumps({"id": "n3", "name": "O", "channels": "sms;email"}),
        json.dumps({"id": "n4", "name": "P", "channels": []}),
    ]
    path = write(tmp_path, "c.jsonl", "\n".join(lines) + "\n")
    result = await run_import(database, path)
    assert [str(error) for error in result.errors] == [
        f"{path}:2: channels[0]: 'SMS' is not a channel name (1 to 32 of a-z, 0-9, _ and -)",
        f"{path}:3: channels: must be a list of strings",
    ]
    assert await channel_orders(database) == {"n1": "sms,email", "n4": None}


@pytest.mark.parametrize("batch_size", [1, 1000])
async def test_a_repeated_id_takes_its_last_row(
    database: Database, tmp_path: Path, batch_size: int
) -> None:
    text = HEADER + "d1,First,,,a@example.com,,,x,\nd1,Second,,,b@example.com,,,y,\n"
    result = await run_import(database, write(tmp_path, "dupes.csv", text), batch_size=batch_size)
    assert result.imported == 2
    assert await customers(database) == {"d1": ("Second", "en", "UTC")}
    assert set(await contact_points(database)) == {("d1", "email", "b@example.com")}
    assert await subscriptions(database) == {("d1", "component", "y")}


async def test_a_spreadsheet_export_with_bom_crlf_and_quoted_newlines(
    database: Database, tmp_path: Path
) -> None:
    text = (
        "\ufeffID,Name,Email\r\n"
        'x1,"Two\r\nlines",x1@example.com\r\n'  # lines 2-3
        ",,\r\n"  # line 4: an empty spreadsheet row
        "x2,Bad,nope\r\n"  # line 5
        "x3,Fine,x3@example.com"  # line 6, no final newline
    )
    path = tmp_path / "export.csv"
    path.write_bytes(text.encode("utf-8"))
    result = await run_import(database, path)
    assert (result.imported, result.rejected) == (2, 1)
    assert result.errors[0].line == 5
    assert (await customers(database))["x1"] == ("Two\r\nlines", "en", "UTC")


async def test_undecodable_bytes_reject_their_row_only(database: Database, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"id,name\nb1,Caf\xe9\nb2,Cafe\n")
    result = await run_import(database, path)
    assert (result.imported, result.rejected) == (1, 1)
    assert str(result.errors[0]) == f"{path}:2: name: is not valid UTF-8 text"


async def test_progress_counts_bytes_up_to_the_file_size(
    database: Database, tmp_path: Path
) -> None:
    text = HEADER + "".join(f"p{i},Person {i},,,,,,,\n" for i in range(25))
    path = write(tmp_path, "many.csv", text)
    progress: list[int] = []
    result = await run_import(database, path, batch_size=10, on_progress=progress.append)
    assert result.imported == 25
    assert progress == sorted(progress) and len(progress) == 3
    assert progress[-1] == path.stat().st_size


async def test_only_the_first_thousand_errors_are_kept(database: Database, tmp_path: Path) -> None:
    text = HEADER + "".join(f"e{i},,,,,,,,\n" for i in range(1005)) + "ok,Fine,,,,,,,\n"
    result = await run_import(database, write(tmp_path, "bad.csv", text))
    assert (result.imported, result.rejected, len(result.errors)) == (1, 1005, 1000)
    assert result.errors[-1].line == 1001


@pytest.mark.parametrize(
    ("name", "text", "fmt", "message"),
    [
        ("x.csv", "id,name,fone\nc1,N,1\n", None, r"x\.csv:1: unknown column\(s\) 'fone'"),
        ("x.csv", "", None, r"x\.csv:1: the first line must be the header"),
        ("x.txt", "id,name\nc1,N\n", None, "cannot tell the format"),
        ("x.csv", "id,name\n", "xml", "unknown format 'xml'"),
    ],
)
async def test_unusable_input_fails_before_anything_is_written(
    database: Database, tmp_path: Path, name: str, text: str, fmt: str | None, message: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ImportInputError, match=message):
        await run_import(database, path, fmt=fmt)
    with pytest.raises(ImportInputError, match="cannot read"):
        await run_import(database, tmp_path / "missing.csv")
    assert await count(database, Customer) == 0


async def test_format_option_overrides_the_extension(database: Database, tmp_path: Path) -> None:
    path = write(tmp_path, "export.txt", json.dumps({"id": "f1", "name": "F"}) + "\n")
    result = await run_import(database, path, fmt="jsonl")
    assert result.imported == 1


async def test_an_over_long_line_is_a_row_error(database: Database, tmp_path: Path) -> None:
    text = HEADER + "c1,Fine,,,,,,,\n" + "c2," + "x" * (1 << 20) + "\n" + "c3,Also fine,,,,,,,\n"
    result = await run_import(database, write(tmp_path, "long.csv", text))
    assert (result.imported, result.rejected) == (2, 1)
    assert result.errors[0].line == 3


# --- the CLI command ---------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"database: {{url: sqlite+aiosqlite:///{tmp_path}/x.db}}\n", encoding="utf-8")
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(customers_cli.app, list(args))


def test_cli_imports_a_clean_file_and_exits_0(config: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "ok.csv", HEADER + "c1,Jane,,,,,,,\nc2,Joe,,,,,,,\n")
    result = invoke("import", str(path), "--config", str(config))
    assert result.exit_code == 0, result.output
    assert result.stdout == "imported 2 customers, rejected 0 rows\n"
    assert result.stderr == ""


def test_cli_reports_bad_rows_and_exits_1(config: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "customers.csv", MIXED)
    result = invoke("import", str(path), "--config", str(config))
    assert result.exit_code == 1
    assert result.stdout == "imported 3 customers, rejected 5 rows\n"
    assert f"{path}:7: phone: '0612345678' must be in international format" in result.stderr
    assert len(result.stderr.splitlines()) == 5


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.csv", "id,name,mail\n", "unknown column(s) 'mail'"),
        ("none.csv", None, "none.csv: no such file"),
        ("what.xml", "<x/>", "cannot tell the format"),
    ],
)
def test_cli_exits_2_on_unusable_input(
    config: Path, tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    path = write(tmp_path, name, text) if text is not None else tmp_path / name
    result = invoke("import", str(path), "--config", str(config))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr and result.stderr.startswith("error: ")


def test_cli_format_option(config: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "export.txt", json.dumps({"id": "f1", "name": "F"}) + "\n")
    result = invoke("import", str(path), "--format", "jsonl", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert result.stdout == "imported 1 customers, rejected 0 rows\n"


def test_cli_shows_progress_on_a_terminal(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(customers_cli, "stderr_is_terminal", lambda: True)
    path = write(tmp_path, "ok.csv", HEADER + "c1,Jane,,,,,,,\nc2,Joe,,,nope,,,,\n")
    result = invoke("import", str(path), "--config", str(config))
    assert result.exit_code == 1
    assert result.stdout == "imported 1 customers, rejected 1 rows\n"
    assert f"{path}:3: email: value is not a valid email address" in result.stderr
    assert "importing" in result.stderr


async def test_an_import_refreshes_the_planner_statistics_of_what_it_wrote(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refreshed: list[str] = []
    original = database.refresh_statistics

    async def noting(table: str) -> None:
        refreshed.append(table)
        await original(table)

    monkeypatch.setattr(database, "refresh_statistics", noting)
    result = await run_import(database, write(tmp_path, "customers.csv", MIXED))
    assert result.imported == 3
    assert refreshed == ["customers", "contact_points", "subscriptions"]
    if database.dialect == "postgresql":  # ANALYZE counted the rows (-1: never analysed)
        async with database.session() as session:
            counted: dict[str, float] = dict(
                (
                    await session.execute(
                        text(
                            "SELECT relname, reltuples FROM pg_class WHERE relname IN "
                            "('customers', 'contact_points', 'subscriptions')"
                        )
                    )
                ).all()
            )
        assert counted["customers"] == 3
        assert counted["contact_points"] > 0 and counted["subscriptions"] > 0


async def test_an_unclosed_quote_costs_its_row_and_the_lines_after_it_are_read_again(
    database: Database, tmp_path: Path
) -> None:
    two = write(tmp_path, "two.csv", 'id,name\nc1,"Acme\nc2,Bob\nc3,Carol\nc4,Dan\n')
    result = await run_import(database, two)
    assert (result.imported, result.rejected) == (3, 1)
    assert [str(error) for error in result.errors] == [
        f"{two}:2: unreadable CSV: a quote opened on line 2 is never closed (it runs to the "
        "end of the file, line 5): line 2 is skipped and the file read again from line 3"
    ]
    assert set(await customers(database)) == {"c2", "c3", "c4"}
    last = write(tmp_path, "last.csv", 'id,name,tier\nc5,Acme,gold\nc6,"Bob,gold\n')
    result = await run_import(database, last)
    assert (result.imported, result.rejected) == (1, 1)
    assert [str(error) for error in result.errors] == [
        f"{last}:3: unreadable CSV: a quote opened on line 3 is never closed (it is the last "
        "line): line 3 could not be read",
    ]
    assert set(await customers(database)) == {"c2", "c3", "c4", "c5"}
    closed_later = write(tmp_path, "later.csv", 'id,name\nc8,"Acme\nc9,"Bob"\nc10,Carol\n')
    result = await run_import(database, closed_later)
    assert [str(error) for error in result.errors] == [
        f"{closed_later}:2: unreadable CSV: ',' expected after '\"' (something follows a "
        "closing quote: a space, say; quote the whole field); its record runs to line 3: is a "
        "quote opened here and not closed? (lines 2-3 not imported)"
    ]
    assert set(await customers(database)) == {"c2", "c3", "c4", "c5", "c10"}


def test_cli_an_unclosed_quote_keeps_the_rows_around_it_and_says_which_lines(
    config: Path, tmp_path: Path
) -> None:
    """A quote left open: the rows after it were neither imported nor reported."""
    text = (
        "id,name,email\n"
        "R0,Before,r0@example.com\n"
        'R1,"Open quote,r1@example.com\n'
        "R2,Two,r2@example.com\n"
        "R3,Three,r3@example.com\n"
        "R4,Four,r4@example.com\n"
    )
    path = write(tmp_path, "quote.csv", text)
    result = invoke("import", str(path), "--config", str(config))
    assert result.exit_code == 1
    assert result.stdout == "imported 4 customers, rejected 1 rows\n"
    assert result.stderr == (
        f"{path}:3: unreadable CSV: a quote opened on line 3 is never closed (it runs to the "
        "end of the file, line 6): line 3 is skipped and the file read again from line 4\n"
    )


def test_a_quote_that_cannot_be_read_again_names_every_line_lost(tmp_path: Path) -> None:
    """Input that cannot go back (a pipe, say) keeps the minimum: the lines lost, located."""
    path = write(tmp_path, "pipe.csv", 'id,name\nc1,Ann\nc2,"Bob\nc3,Carol\nc4,Dan\n')
    with path.open("rb") as raw:
        unseekable = io.BufferedReader(_Unseekable(raw))
        items = list(importer._open_csv(importer._Lines(unseekable), "pipe.csv", None))
    assert [(item[0], item[1].id) for item in items if not isinstance(item, RowError)] == [
        (2, "c1")
    ]
    assert [str(item) for item in items if isinstance(item, RowError)] == [
        "pipe.csv:3: unreadable CSV: a quote opened on line 3 is never closed (it runs to the "
        "end of the file, line 5): lines 3-5 could not be read"
    ]


class _Unseekable(io.RawIOBase):
    def __init__(self, inner: io.BufferedReader) -> None:
        self.inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


async def test_ids_and_subscriptions_are_one_line(database: Database, tmp_path: Path) -> None:
    path = write(tmp_path, "ids.csv", 'id,name,components\n"c\n1",Ann,x\nc2,Bob,"a\nb"\n')
    result = await run_import(database, path)
    assert [str(error) for error in result.errors] == [
        f"{path}:2: id: contains a line break (in a CSV file: a quote opened here and not "
        "closed takes in the lines after it)",
        f"{path}:4: components[0]: contains a line break (in a CSV file: a quote opened here "
        "and not closed takes in the lines after it)",
    ]


async def test_a_utf16_file_is_named_as_such(database: Database, tmp_path: Path) -> None:
    path = tmp_path / "unicode.csv"
    path.write_bytes("id,name\nc1,Ann\n".encode("utf-16"))
    with pytest.raises(ImportInputError) as refused:
        await run_import(database, path)
    assert str(refused.value) == (
        f"{path}:1: the file is not UTF-8 but looks like UTF-16 (a byte order mark or NUL "
        "bytes between the letters); save it as CSV UTF-8"
    )


async def test_a_row_with_text_after_a_closing_quote_is_reported_and_the_rest_imported(
    database: Database, tmp_path: Path
) -> None:
    path = write(tmp_path, "spaced.csv", 'id,name\nc1,"Doe, Jane" \nc2,Bob\n')
    result = await run_import(database, path)
    assert (result.imported, result.rejected) == (1, 1)
    assert [str(error) for error in result.errors] == [
        f"{path}:2: unreadable CSV: ',' expected after '\"' (something follows a closing "
        "quote: a space, say; quote the whole field)"
    ]
    assert set(await customers(database)) == {"c2"}


async def test_ids_languages_and_channels_are_checked_with_their_line_and_field(
    database: Database, tmp_path: Path
) -> None:
    text = (
        "id,name,language,channels\n"
        "a/b,Slash,,\n"  # 2
        "..,Dots,,\n"  # 3
        "c1,Typo,xx-YY-ZZ,\n"  # 4
        "c2,Pigeon,,email;pigeon\n"  # 5
        "c3,Good,fy,email;console\n"  # 6: no templates for fy: the default language is used
    )
    path = write(tmp_path, "checked.csv", text)
    result = await run_import(database, path, channels=["console", "email"])
    assert [str(error) for error in result.errors] == [
        f"{path}:2: id: must not contain '/' (ids are used in URL paths)",
        f"{path}:3: id: must not be '..' (ids are used in URL paths)",
        f"{path}:4: language: 'xx-YY-ZZ' is not a language tag like en, nl or en-GB",
        f"{path}:5: channels: 'pigeon' is not a configured channel (configured: console, email)",
    ]
    assert [error.field for error in result.errors] == ["id", "id", "language", "channels"]
    assert await customers(database) == {"c3": ("Good", "fy", "UTC")}
    lines = write(
        tmp_path,
        "checked.jsonl",
        json.dumps({"id": "x/y", "name": "Slash"})
        + "\n"
        + json.dumps({"id": "c4", "name": "Pigeon", "channels": ["pigeon"]})
        + "\n",
    )
    result = await run_import(database, lines, channels=["console", "email"])
    assert [str(error) for error in result.errors] == [
        f"{lines}:1: id: must not contain '/' (ids are used in URL paths)",
        f"{lines}:2: channels: 'pigeon' is not a configured channel (configured: console, email)",
    ]


def test_cli_checks_channels_against_the_configuration(config: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "channels.csv", "id,name,channels\nc1,Ann,console\nc2,Bob,sms\n")
    result = invoke("import", str(path), "--config", str(config))
    assert result.exit_code == 1
    assert result.stdout == "imported 1 customers, rejected 1 rows\n"
    assert result.stderr == (
        f"{path}:3: channels: 'sms' is not a configured channel (configured: console)\n"
    )


@pytest.mark.parametrize("name", ["managers.csv", "managers.jsonl"])
async def test_account_managers_not_in_the_staff_directory_are_warned_of(
    database: Database, tmp_path: Path, name: str
) -> None:
    rows = [("c1", "ann"), ("c2", "bob"), ("c3", None)]
    if name.endswith(".csv"):
        text = "id,name,account_manager\n" + "".join(f"{i},N,{m or ''}\n" for i, m in rows)
        lines = [3]
    else:
        text = "".join(
            json.dumps({"id": i, "name": "N", "account_manager": m}) + "\n" for i, m in rows
        )
        lines = [2]
    path = write(tmp_path, name, text)
    seen: list[RowError] = []
    result = await run_import(database, path, staff={"ann"}, on_error=seen.append)
    assert (result.imported, result.rejected, result.warned) == (3, 0, 1)
    assert [w.line for w in result.warnings] == lines
    assert seen == result.warnings
    assert str(result.warnings[0]).startswith(
        f"{path}:{lines[0]}: account_manager: 'bob' is not in the staff directory"
    )
    unchecked = await run_import(database, path)
    assert (unchecked.imported, unchecked.warned) == (3, 0)


def test_cli_warns_of_an_account_manager_who_is_not_staff(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"database: {{url: sqlite+aiosqlite:///{tmp_path}/x.db}}\n"
        "staff: {people: {ann: {name: Ann}}}\n",
        encoding="utf-8",
    )
    path = write(tmp_path, "m.csv", "id,name,account_manager\nc1,A,ann\nc2,B,bob\n")
    result = invoke("import", str(path), "--config", str(config))
    assert result.exit_code == 0, result.output
    assert result.stdout == "imported 2 customers, 1 with warnings, rejected 0 rows\n"
    assert result.stderr.startswith(
        f"warning: {path}:3: account_manager: 'bob' is not in the staff directory"
    )


async def _points(database: Database) -> list[tuple[str, str, str, bool]]:
    async with database.engine.connect() as connection:
        rows = await connection.execute(
            select(
                ContactPoint.customer_id,
                ContactPoint.kind,
                ContactPoint.address,
                ContactPoint.opted_out,
            )
        )
        return sorted((row[0], row[1], row[2], row[3]) for row in rows)


async def test_a_customer_who_stopped_everything_stays_stopped_on_new_addresses(
    database: Database, tmp_path: Path
) -> None:
    """One-click unsubscribe opts out every address the customer has; the next import added
    their rotated push token, or their email with its case changed, opted in: the messages
    they had stopped came back."""
    header = "id,name,email,push_tokens\n"
    path = write(tmp_path, "c.csv", header + "c1,Jane,Jane.Doe@example.org,fcm:tokenA\n")
    path2 = write(tmp_path, "d.csv", header + "c2,Joe,joe@example.org,fcm:tokenC\n")
    await run_import(database, path)
    await run_import(database, path2)
    async with database.session() as session, session.begin():
        await session.execute(
            update(ContactPoint).where(ContactPoint.customer_id == "c1").values(opted_out=True)
        )
        await session.execute(  # c2 stopped email only: push stays theirs to change
            update(ContactPoint)
            .where(ContactPoint.customer_id == "c2", ContactPoint.kind == "email")
            .values(opted_out=True)
        )
    write(tmp_path, "c.csv", header + "c1,Jane,jane.doe@example.org,fcm:tokenB\n")
    write(tmp_path, "d.csv", header + "c2,Joe,Joe@example.org,fcm:tokenD\n")
    await run_import(database, path)
    await run_import(database, path2)
    assert await _points(database) == [
        ("c1", "email", "jane.doe@example.org", True),
        ("c1", "fcm", "tokenB", True),
        ("c2", "email", "Joe@example.org", True),  # its own opt-out, whatever the case
        ("c2", "fcm", "tokenD", False),
    ]


def test_cli_says_so_when_a_file_lists_no_customers(config: Path, tmp_path: Path) -> None:
    """A header and nothing else (an export that failed half-way) looked like success."""
    path = write(tmp_path, "empty.csv", "id,name\n")
    result = invoke("import", str(path), "--config", str(config))
    assert result.exit_code == 0
    assert result.stdout == "imported 0 customers, rejected 0 rows\n"
    assert result.stderr == f"warning: {path} lists no customers (nothing was changed)\n"


async def postal_addresses(database: Database) -> dict[str, str | None]:
    async with database.engine.connect() as connection:
        rows = await connection.execute(select(Customer.id, Customer.postal_address))
        return {row.id: row.postal_address for row in rows}


async def test_a_postal_address_is_kept_when_a_file_leaves_it_out_and_cleared_when_empty(
    database: Database, tmp_path: Path
) -> None:
    """A visit goes to the address on file: a file of the CRM's without the column (or a
    JSON line without the key) must not wipe the addresses another file or the API gave;
    an empty value says there is none."""
    first = csv_text(
        ["id", "name", "postal_address"],
        ["a1", "Ann", "Keizersgracht 123\n1015 CJ Amsterdam"],
        ["a2", "Bob", "Dorpsstraat 1\r\n1234 AB Ergens"],
        ["a3", "Cas", ""],
        ["a4", "Dirk", "x" * 501],  # line 7: the first three records take lines 2-6
        ["a5", "Eva", "Markt 5"],
    )
    path = write(tmp_path, "addresses.csv", first)
    result = await run_import(database, path)
    assert (result.imported, result.rejected) == (4, 1)
    assert [str(error) for error in result.errors] == [
        f"{path}:7: postal_address: is 501 characters long; at most 500"
    ]
    assert await postal_addresses(database) == {
        "a1": "Keizersgracht 123\n1015 CJ Amsterdam",
        "a2": "Dorpsstraat 1\n1234 AB Ergens",
        "a3": None,
        "a5": "Markt 5",
    }

    # Without the column: every address stays as it was, whatever else the file changes.
    without = csv_text(
        ["id", "name", "email"], ["a1", "Ann B.", "ann@example.org"], ["a6", "F", ""]
    )
    result = await run_import(database, write(tmp_path, "crm.csv", without))
    assert (result.imported, result.rejected) == (2, 0)
    stored = await postal_addresses(database)
    assert stored["a1"] == "Keizersgracht 123\n1015 CJ Amsterdam" and stored["a6"] is None
    assert (await customers(database))["a1"][0] == "Ann B."

    # JSON Lines: a missing key keeps it, null or "" clears it, a value replaces it.
    lines = [
        json.dumps({"id": "a1", "name": "Ann"}),
        json.dumps({"id": "a2", "name": "Bob", "postal_address": None}),
        json.dumps({"id": "a5", "name": "Eva", "postal_address": ""}),
        json.dumps({"id": "a3", "name": "Cas", "postal_address": "Plein 2\n9999 ZZ Stad"}),
        json.dumps({"id": "a6", "name": "F", "postal_address": ["not", "text"]}),
    ]
    path = write(tmp_path, "addresses.jsonl", "\n".join(lines) + "\n")
    result = await run_import(database, path)
    assert [str(error) for error in result.errors] == [
        f"{path}:5: postal_address: must be a string"
    ]
    assert await postal_addresses(database) == {
        "a1": "Keizersgracht 123\n1015 CJ Amsterdam",
        "a2": None,
        "a3": "Plein 2\n9999 ZZ Stad",
        "a5": None,
        "a6": None,
    }


@pytest.mark.parametrize("batch_size", [1, 1000])
async def test_a_repeated_id_keeps_the_last_postal_address_given(
    database: Database, tmp_path: Path, batch_size: int
) -> None:
    """The rows are applied one after another: a later row without the key keeps what an
    earlier one of the same file gave, in one batch or across two."""
    lines = [
        json.dumps({"id": "r1", "name": "First", "postal_address": "Markt 1"}),
        json.dumps({"id": "r1", "name": "Second"}),
    ]
    path = write(tmp_path, "repeat.jsonl", "\n".join(lines) + "\n")
    result = await run_import(database, path, batch_size=batch_size)
    assert result.imported == 2
    assert await postal_addresses(database) == {"r1": "Markt 1"}
    assert (await customers(database))["r1"][0] == "Second"
