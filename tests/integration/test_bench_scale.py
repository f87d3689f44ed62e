"""The scale benchmark still runs, on a tiny store, and counts what it wrote right.
Behaviour only: no timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import scale
from bench.store import POSTGRES_ENV
from tests.conftest import postgres_admin_url


def _on(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the benchmark at the test PostgreSQL (skip without one)."""
    if backend == "postgresql":
        url = postgres_admin_url()
        if url is None:
            pytest.skip("PostgreSQL tests need BROADCASTER_TEST_POSTGRES_URL")
        monkeypatch.setenv(POSTGRES_ENV, url)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_scale_materialises_every_customer_and_reports_the_count(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _on(backend, monkeypatch)
    result = await scale.run(tmp_path, backends=[backend], customers=120, batches=[50])

    (run,) = result["runs"]
    assert run["backend"] == backend and run["audience_batch"] == 50
    assert run["audience"] == 120 and run["first_page"] == 50
    assert run["deliveries"] == 120
    assert run["inserted_reported"] == 120  # was 0 on PostgreSQL (executemany's rowcount)
    notes = {row["what"]: row.get("note", "") for row in result["rows"]}
    assert notes[f"scale materialisation 120 customers, {backend}, audience_batch 50"] == (
        "for comparison: no target (not the default batch)"
    )


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_with_the_default_batch_the_round_is_then_purged_whole(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _on(backend, monkeypatch)
    result = await scale.run(
        tmp_path, backends=[backend], customers=120, batches=[scale.DEFAULT_BATCH]
    )
    (run,) = result["runs"]
    assert (run["purged_deliveries"], run["purged_events"], run["deliveries_left"]) == (
        120,
        120,
        0,
    )
    rows = {row["what"]: row for row in result["rows"]}
    purge_row = rows[f"scale purge (retention) of the round, 120 customers, {backend}"]
    assert purge_row["note"].startswith("120 deliveries and 120 history lines")
    # Before the purge, who was not reached was counted both ways, everyone (all pending),
    # with writes going on beside the count.
    for how in ("reading", "session"):
        assert run[f"unreached_{how}_counted"] == 120
        assert run[f"unreached_{how}_writes"] >= 1
        counted = rows[f"scale who was not reached, counted 120 customers, {backend}, {how}"]
        assert counted["met"] is None and counted["note"].endswith("120 counted")
        assert (
            f"scale writer's longest wait during that count, 120 customers, {backend}, {how}"
            in (rows)
        )
