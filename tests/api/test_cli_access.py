"""``broadcaster tokens|accounts|audit``, and CLI actions in the audit log."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broadcaster.access import audit
from broadcaster.access.credentials import Principal
from broadcaster.cli.main import app
from broadcaster.clock import RealClock
from broadcaster.store import Database

runner = CliRunner()


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """``broadcaster run`` points the root logger at the runner's stderr, which closes after
    the call: give later tests the logging they had."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
database: {{url: "sqlite+aiosqlite:///{tmp_path / "data" / "s.db"}"}}
delivery: {{channels: [email]}}
channels:
  email: {{type: console, contact: email, path: "{tmp_path / "out.jsonl"}"}}
staff:
  people:
    alice: {{name: Alice}}
"""
    )
    return config


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_tokens_are_created_listed_and_revoked(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    code, out, err = invoke("tokens", "create", "--role", "operator", "--name", "ci", "-c", config)
    assert code == 0, err
    secret = out.strip()
    assert secret.startswith("bct_") and len(secret) > 40
    assert "shown once" in err
    code, out, _ = invoke("tokens", "list", "-c", config)
    assert "ci" in out and "operator" in out and "active" in out
    assert secret not in out and secret[:10] in out  # only the prefix is ever shown
    code, out, _ = invoke("tokens", "revoke", "1", "-c", config)
    assert code == 0
    assert "revoked" in invoke("tokens", "list", "-c", config)[1]
    code, _, err = invoke("tokens", "create", "--role", "root", "--name", "x", "-c", config)
    assert code == 2 and "role" in err and "viewer, operator, admin" in err
    code, _, err = invoke("tokens", "revoke", "42", "-c", config)
    assert code == 1 and "no token with id 42" in err


def test_a_token_expires_in_90_days_unless_told_otherwise(tmp_path: Path) -> None:
    """A token created without --expires lasted for ever: one forgotten in a script or a
    leaked log worked until someone revoked it."""
    config = str(_config(tmp_path))
    before = datetime.now(UTC)
    code, _, err = invoke("tokens", "create", "--role", "viewer", "--name", "a", "-c", config)
    assert code == 0, err
    expires = datetime.strptime(err.split("expires ")[1][:16], "%Y-%m-%d %H:%M")
    lifetime = expires.replace(tzinfo=UTC) - before
    assert timedelta(days=89, hours=23) <= lifetime <= timedelta(days=90, minutes=1)
    code, _, err = invoke(
        "tokens", "create", "--role", "viewer", "--name", "b", "--expires", "never", "-c", config
    )
    assert code == 0 and "never expires" in err


def test_accounts_need_a_long_password_and_actions_are_audited(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    short = invoke(
        "accounts",
        "set",
        "alice",
        "--role",
        "operator",
        "--password-stdin",
        "-c",
        config,
        stdin="short\n",
    )
    assert short[0] == 2 and "12 characters" in short[2]
    code, out, err = invoke(
        "accounts",
        "set",
        "alice",
        "--role",
        "operator",
        "--password-stdin",
        "-c",
        config,
        stdin="a long enough password\n",
    )
    assert code == 0, err
    assert "alice" in invoke("accounts", "list", "-c", config)[1]
    code, out, err = invoke(
        "incident",
        "declare",
        "-t",
        "Outage",
        "-s",
        "minor",
        "-m",
        "Down.",
        "--component",
        "api",
        "--author",
        "alice",
        "-c",
        config,
    )
    assert code == 0, err
    code, out, _ = invoke("audit", "list", "--json", "-c", config)
    entries = [json.loads(line) for line in out.splitlines()]
    assert [(e["action"], e["actor"]) for e in entries][:2] == [
        ("incident.declare", "cli:alice"),
        ("account.set", entries[1]["actor"]),
    ]
    assert entries[0]["source"].startswith("cli")
    assert entries[0]["target"] == "incident:1"
    assert all("password" not in json.dumps(e) for e in entries)


def test_audit_list_escapes_what_is_not_printable(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    assert invoke("tokens", "list", "-c", config)[0] == 0  # creates the store
    forged = "2026-03-02T08:59:59+00:00  account:root  console.login  account:root  ok"

    async def write() -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 's.db'}")
        try:
            await audit.record(
                db,
                RealClock(),
                Principal("token", "\x1b[2J\x1b]0;owned\x07ci", "operator"),
                "incident.declare",
                f"incident:1\n{forged}",
                "10.0.0.7\u202e\\n",
            )
        finally:
            await db.dispose()

    asyncio.run(write())
    code, out, err = invoke("audit", "list", "-c", config)
    assert code == 0, err
    [line] = out.splitlines()
    assert "\x1b" not in out and "\u202e" not in out and forged not in out.splitlines()
    assert "token:\\x1b[2J\\x1b]0;owned\\x07ci" in line
    assert f"incident:1\\n{forged}" in line
    assert line.endswith("from 10.0.0.7\\u202e\\\\n")


def test_an_account_name_must_be_printable_and_fit(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    for name in ("alice\nroot", "\x1b[31malice", "a" * 65):
        code, _, err = invoke(
            "accounts",
            "set",
            name,
            "--role",
            "viewer",
            "--password-stdin",
            "-c",
            config,
            stdin="a long enough password\n",
        )
        assert code == 2 and "name: " in err, err
    assert invoke("accounts", "list", "-c", config)[1] == ""


def test_a_customer_import_is_audited(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    people = tmp_path / "people.txt"
    people.write_text(
        "id,name,email,account_manager\n"
        "c1,Carol,carol@example.org,alice\n"
        "c2,Dan,dan@example.org,nobody\n"
        ",No id,x@example.org,\n"
    )
    code, out, err = invoke("customers", "import", str(people), "--format", "csv", "-c", config)
    assert code == 1 and "imported 2 customers" in out, err
    code, out, _ = invoke("audit", "list", "--json", "-c", config)
    [entry] = [json.loads(line) for line in out.splitlines()]
    assert (entry["action"], entry["target"], entry["source"]) == (
        "customer.import",
        "customers",
        "cli",
    )
    assert entry["actor"].startswith("cli:") and entry["role"] == "admin"
    assert entry["detail"] == {"imported": 2, "rejected": 1, "warned": 1, "format": "csv"}


def test_an_unopenable_store_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = tmp_path / "config.yaml"
    config.write_text(f'database: {{url: "sqlite+aiosqlite:///{blocker / "sub" / "s.db"}"}}\n')
    code, _, err = invoke("tokens", "list", "-c", str(config))
    assert code == 2
    assert err.startswith("error: cannot open the store sqlite+aiosqlite:///")
    assert "Traceback" not in err


def test_the_daemon_refuses_an_unopenable_store_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = tmp_path / "config.yaml"
    config.write_text(
        f'database: {{url: "sqlite+aiosqlite:///{blocker / "sub" / "s.db"}"}}\nhttp: {{port: 0}}\n'
    )
    code, _, err = invoke("run", "-c", str(config))
    assert code == 2
    assert err.startswith("error: cannot open the store sqlite+aiosqlite:///")
    assert "Traceback" not in err
