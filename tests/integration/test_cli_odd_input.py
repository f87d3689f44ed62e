"""The CLI answers odd input with a message and an exit code, never a traceback: ids past
64 bits, a store file that is not a database, an unknown revision, a zero token lifetime."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broadcaster.cli.main import app
from broadcaster.store import migrate

runner = CliRunner()


def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"database:\n  url: sqlite+aiosqlite:///{tmp_path / 'store.db'}\n")
    return path


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "command",
    [
        ["incident", "show"],
        ["incident", "close"],
        ["followups", "claim"],
        ["rules", "explain"],
        ["tokens", "revoke"],
    ],
)
def test_an_id_past_64_bits_is_refused_as_input(tmp_path: Path, command: list[str]) -> None:
    extra = ["--as", "ann"] if command[0] == "followups" else []
    code, out = invoke(*command, "99999999999999999999", *extra, "--config", str(config(tmp_path)))
    assert code == 2
    flat = " ".join(out.replace("│", " ").split())  # the message may wrap in its box
    assert "Invalid value for" in flat and "less than or equal to 9223372036854775807" in flat


def test_a_store_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    path = config(tmp_path)
    (tmp_path / "store.db").write_text("not a database")
    code, out = invoke("incident", "list", "--config", str(path))
    assert code == 2
    assert "cannot open the store" in out and "file is not a database" in out


def test_an_unknown_revision_is_a_message(tmp_path: Path) -> None:
    code, out = invoke("db", "downgrade", "nonexistent", "--config", str(config(tmp_path)))
    assert code == 1
    assert "downgrade failed" in out and "Can't locate revision identified by 'nonexistent'" in out


def test_a_token_lifetime_of_nothing_is_refused(tmp_path: Path) -> None:
    path = config(tmp_path)
    code, out = invoke(
        "tokens",
        "create",
        "--name",
        "z",
        "--role",
        "admin",
        "--expires",
        "0s",
        "--config",
        str(path),
    )
    assert code != 0
    assert "lifetime must be more than 0s" in out
    code, out = invoke("tokens", "list", "--config", str(path))
    assert code == 0 and "z" not in out.split()


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["incident", "list", "--status", "bogus"], "--status"),
        (["followups", "list", "--state", "x"], "--state"),
    ],
)
def test_a_filter_that_names_nothing_is_refused_not_an_empty_list(
    tmp_path: Path, command: list[str], option: str
) -> None:
    code, out = invoke(*command, "--config", str(config(tmp_path)))
    assert code == 2 and f"{option}: " in out and "is not one of" in out


def test_feeds_check_on_a_store_never_upgraded_says_what_to_run(tmp_path: Path) -> None:
    """feeds check never changes the store: on an empty one it read a missing table."""
    path = config(tmp_path)
    path.write_text(
        path.read_text()
        + "feeds:\n  - name: status\n    kind: statuspage\n    url: http://127.0.0.1:9/api\n"
    )
    code, out = invoke("feeds", "check", "--config", str(path))
    assert code == 2, out
    assert "the store is empty (no schema)" in out and "broadcaster db upgrade" in out


def test_upgrade_and_downgrade_say_the_revision_the_store_is_at(tmp_path: Path) -> None:
    path = str(config(tmp_path))
    code, out = invoke("db", "upgrade", "--config", path)
    head = migrate.head_revision()
    assert code == 0 and f"database at revision {head}:" in out
    code, out = invoke("db", "downgrade", "--config", path, "--", "-1")
    assert code == 0, out
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    below = asyncio.run(migrate.current_revision(url))
    assert below is not None and below != head
    assert out.strip() == f"database at revision {below}"
