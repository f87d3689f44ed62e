"""``incident update --no-expected-resolution`` withdraws a time told before, as the API's
explicit null and the console's emptied field do; the time and the flag together are refused."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from broadcaster.cli.main import app
from broadcaster.incidents import service
from broadcaster.store import Database

runner = CliRunner()


def _expected(url: str, incident_id: int) -> datetime | None:
    async def read() -> datetime | None:
        database = Database(url)
        try:
            async with database.session() as session:
                last = await service.latest_update(session, incident_id)
                assert last is not None
                return last.expected_resolution_at
        finally:
            await database.dispose()

    return asyncio.run(read())


def test_the_cli_withdraws_an_expected_resolution(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    config = tmp_path / "config.yaml"
    config.write_text(f"database:\n  url: {url}\n")
    assert runner.invoke(app, ["db", "upgrade", "-c", str(config)]).exit_code == 0
    when = (datetime.now(UTC) + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    declared = runner.invoke(
        app,
        [
            "incident", "declare", "-t", "Payments down", "-m", "Card payments fail.",
            "-s", "major", "--component", "payments", "--expected-resolution", when,
            "-c", str(config),
        ],
    )  # fmt: skip
    assert declared.exit_code == 0, declared.output
    incident_id = int(declared.output.split()[-1])
    assert _expected(url, incident_id) is not None

    kept = runner.invoke(
        app, ["incident", "update", str(incident_id), "-m", "Still on it.", "-c", str(config)]
    )
    assert kept.exit_code == 0, kept.output
    assert _expected(url, incident_id) is not None  # carried over when not given

    both = runner.invoke(
        app,
        [
            "incident", "update", str(incident_id), "-m", "Later.", "--expected-resolution",
            when, "--no-expected-resolution", "-c", str(config),
        ],
    )  # fmt: skip
    assert both.exit_code != 0
    assert "--expected-resolution or --no-expected-resolution, not both" in both.output

    withdrawn = runner.invoke(
        app,
        [
            "incident", "update", str(incident_id), "-m", "No estimate yet.",
            "--no-expected-resolution", "-c", str(config),
        ],
    )  # fmt: skip
    assert withdrawn.exit_code == 0, withdrawn.output
    assert _expected(url, incident_id) is None
