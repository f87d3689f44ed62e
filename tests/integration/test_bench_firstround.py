"""The first-round benchmark still runs: a tiny round through ``python -m bench``'s entry point
(sinks process, two daemon processes on PostgreSQL, table, JSON), every delivery handed over
exactly once and every figure present. Behaviour only: no timing is asserted."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from bench import firstround
from bench.__main__ import main
from bench.store import POSTGRES_ENV, postgres_available
from tests.conftest import POSTGRES_ENV as TEST_POSTGRES_ENV
from tests.conftest import postgres_admin_url

CUSTOMERS = 300


@pytest.mark.postgres
def test_firstround_hands_every_delivery_over_once_and_reports_the_phases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres_admin_url()
    if url is None:
        pytest.skip(f"the first-round benchmark needs PostgreSQL: set {TEST_POSTGRES_ENV}")
    monkeypatch.setenv(POSTGRES_ENV, url)
    if not asyncio.run(postgres_available()):
        reason = f"PostgreSQL at {TEST_POSTGRES_ENV} is not reachable"
        if os.environ.get("CI"):  # CI sets the URL on purpose: a skip would hide a failure
            pytest.fail(reason)
        pytest.skip(reason)
    argv = ["firstround", "--size", str(CUSTOMERS), "--daemons", "2", "--out", str(tmp_path)]
    argv += ["--event-loop", "uvloop"]
    cpus = sorted(os.sched_getaffinity(0))
    pinned = len(cpus) >= 2
    if pinned:  # each daemon on a CPU of its own (the placement is not what is timed here)
        argv.append("--pin-daemons")
    assert main(argv) == 0

    result = json.loads((tmp_path / "firstround.json").read_text(encoding="utf-8"))
    assert result["scenario"] == "firstround" and result["store"] == "postgresql"
    assert "skipped" not in result
    (run,) = result["runs"]
    assert run["customers"] == CUSTOMERS and run["daemons"] == 2
    # exactly once, seen three ways
    assert run["deliveries"] == run["deliveries_distinct_customers"] == CUSTOMERS
    assert run["states"] == {"sent": CUSTOMERS}
    assert run["sink_requests"] == run["sink_distinct_keys"] == CUSTOMERS
    assert run["sink_duplicates"] == 0
    # every phase measured, in order
    at = run["seconds_from_declaration"]
    assert all(value is not None for value in at.values()), at
    assert 0 <= at["round_started"] <= at["materialised"]
    assert at["round_started"] <= at["first_at_sink"] <= at["all_at_sink"]
    assert at["first_recorded_sent"] <= at["all_recorded_sent"]
    assert run["materialise_seconds"] is not None
    # the share: what the sink saw per daemon is what each daemon's dispatcher recorded
    daemons = run["per_daemon"]
    assert [d["daemon"] for d in daemons] == [0, 1]
    if pinned:
        assert run["daemon_cpus"] == cpus[:2]
        assert [d["cpus"] for d in daemons] == [[cpus[0]], [cpus[1]]]  # as each saw itself
    assert sum(d["handed_to_sink"] for d in daemons) == CUSTOMERS
    assert all(d["handed_to_sink"] == d["sent_by_dispatcher"] for d in daemons)
    assert sum(d["leader"] for d in daemons) == 1, "exactly one daemon scheduled the round"
    assert all(d["exit_code"] == 0 and d["peak_rss_mib"] > 0 for d in daemons)
    assert all(d["cpu_seconds"] > 0 for d in daemons) and run["sink_cpu_seconds"] > 0
    # The test's PostgreSQL runs on this host: its server's CPU for the round is read too.
    assert run["postgresql_cpu_seconds"] is not None and run["postgresql_cpu_seconds"] > 0
    # on the loop asked for, as `broadcaster run` with event_loop: uvloop
    assert [d["event_loop"] for d in daemons] == ["uvloop", "uvloop"]
    assert run["load_average_before"] and run["load_average_after"]
    (target,) = [row for row in result["rows"] if row["limit"] == firstround.TARGET_SECONDS]
    assert target["value"] == at["all_at_sink"] and target["note"] == "exactly once"
    assert "declaration → all handed to the sink" in capsys.readouterr().out


async def test_firstround_without_postgresql_is_skipped_and_says_so(tmp_path: Path) -> None:
    result = await firstround.run(tmp_path, backends=["sqlite"], customers=10, daemons=2)
    assert result["runs"] == [] and "PostgreSQL" in result["skipped"]
    (row,) = result["rows"]
    assert row["value"] is None and row["met"] is None
