"""``broadcaster tokens|accounts|audit``, and CLI actions in the audit log."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broadcaster.cli.main import app

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
