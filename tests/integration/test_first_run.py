"""The operator guide's first run, in a new working directory with the repository's own
``config.yaml``: ``db upgrade`` makes the store's folder (``./data``) and the schema, the
customers import into it, the rules check. A new checkout has no ``data`` folder."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broadcaster.cli.main import app
from broadcaster.store import migrate

REPO = Path(__file__).resolve().parents[2]


def test_first_run_in_a_new_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "rules" / "examples").mkdir(parents=True)
    shutil.copy(REPO / "rules/examples/default.yaml", tmp_path / "rules/examples/default.yaml")
    (tmp_path / "customers.csv").write_text(
        "id,name,email,components\nK1,Kim,kim@example.org,payments\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    store = tmp_path / "data" / "broadcaster.db"
    head = migrate.head_revision()
    assert f"database at revision {head}: sqlite+aiosqlite:///{store}" in result.output

    result = runner.invoke(app, ["customers", "import", "customers.csv"])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT id, name FROM customers").fetchall() == [("K1", "Kim")]

    result = runner.invoke(app, ["rules", "check"])
    assert result.exit_code == 0, result.output
    assert "ok (2 policies" in result.output
