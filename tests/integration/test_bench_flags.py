"""The benchmark suite's verdicts: a target is not met when the work it measures was not all
done, a dead daemon still leaves a result, skipped backends are said, each figure says
what it covers. Behaviour only: no timing is asserted."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import fanout, firstround, latency, scale, summary
from bench.__main__ import main
from bench.baselines import Timed
from bench.procfs import thread_cpu_seconds, threads_per_delivery_us
from bench.report import Row, table, write
from channels.webhook import WebhookSettings


@pytest.mark.parametrize(
    ("row", "met"),
    [
        (Row("time", None, "s", limit=1.0), False),  # the work never finished
        (Row("ratio", None, "msg/s", target=0.8), False),
        (Row("share", None, "%", at_least=100.0), False),
        (Row("time", 0.5, "s", limit=1.0, complete=False), False),  # part of it not done
        (Row("time", 0.5, "s", limit=1.0), True),
        (Row("time", None, "s", limit=1.0, skipped=True), None),  # did not run here
        (Row("figure", None, "s"), None),  # no target
    ],
)
def test_a_target_is_not_met_by_missing_work(row: Row, met: bool | None) -> None:
    assert row.met is met and row.as_dict()["met"] is met
    printed = table([row.as_dict()]).splitlines()[-1]
    assert ("NO" in printed.split()) is (met is False)


def test_incidents_never_sent_count_as_infinitely_late() -> None:
    seen = [0.1] * 198
    two_unseen = latency.figures(seen, 2)  # 1 % unseen: p99 is still a time
    assert two_unseen["never_sent"] == 2 and two_unseen["p99"] == 0.1
    assert two_unseen["max"] is None and two_unseen["mean_of_seen"] == 0.1
    three_unseen = latency.figures(seen[:-1], 3)  # 1.5 %: p99 is beyond the wait
    assert three_unseen["p99"] is None and three_unseen["p50"] == 0.1
    assert latency.figures([], 5)["p50"] is None
    json.dumps(three_unseen, allow_nan=False)  # valid JSON: no Infinity


async def test_only_the_default_sweep_carries_the_latency_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def measure(
        backend: str, workdir: Path, incidents: int, audience: int, sweep: str
    ) -> dict[str, Any]:
        seen = [0.2] * (incidents - 3) if sweep == latency.DEFAULT_SWEEP else [1.5] * incidents
        unseen = incidents - len(seen)
        return {"backend": backend, "sweep_interval": sweep, **latency.figures(seen, unseen)}

    monkeypatch.setattr(latency, "measure", measure)
    result = await latency.run(tmp_path, backends=["sqlite"], incidents=100, audience=5)

    p99 = {row["what"]: row for row in result["rows"] if "p99" in row["what"]}
    default = p99[f"latency p99 sqlite, sweep {latency.DEFAULT_SWEEP} (default)"]
    assert default["limit"] == 1.0 and default["value"] is None and default["met"] is False
    assert default["note"].startswith("3 of 100 incidents never sent within 30 s")
    other = p99["latency p99 sqlite, sweep 1s"]
    assert other["limit"] is None and other["met"] is None and other["value"] == 1.5
    assert other["note"] == "for comparison: no target"
    assert "NO" not in table([other]).split()


async def test_scale_fails_a_short_materialisation_and_limits_peak_rss_in_mb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def phase(
        phase: str, url: str, customers: int, batch: int = scale.DEFAULT_BATCH
    ) -> dict[str, float]:
        if phase == "populate":
            return {"populate_seconds": 1.0, "rows": float(customers), "peak_rss_mib": 50.0}
        if phase == "unreached":
            return {
                f"unreached_{how}_{what}": value
                for how in ("reading", "session")
                for what, value in (
                    ("seconds", 0.5),
                    ("counted", float(customers - 10)),
                    ("writer_longest_wait_seconds", 0.01),
                    ("writes", 3.0),
                )
            }
        if phase == "purge":  # 5 of the 90 left behind: not a whole purge
            return {
                "purge_seconds": 1.0,
                "purged_deliveries": float(customers - 15),
                "purged_events": float(customers - 15),
                "deliveries_left": 5.0,
                "purge_peak_rss_mib": 60.0,
            }
        return {
            "resolve_seconds": 0.1,
            "materialise_seconds": 2.0,
            "deliveries": float(customers - 10),
            "inserted_reported": float(customers - 10),
            "peak_rss_mib": 390.0,  # 408.9 MB: over the 400 MB
        }

    monkeypatch.setattr(scale, "_phase", phase)
    batches = [scale.DEFAULT_BATCH, 50]  # the targets are the default's
    result = await scale.run(tmp_path, backends=["sqlite"], customers=100, batches=batches)

    rows = {
        row["what"].split(" 100 customers")[0]: row
        for row in result["rows"]
        if "audience_batch" not in row["what"]
    }
    assert set(rows) == {
        "scale populate (Core executemany)",
        "scale audience resolution",
        "scale materialisation",
        "scale resolution + materialisation",
        "scale peak RSS (VmHWM) materialising",
        "scale who was not reached, counted",
        "scale writer's longest wait during that count,",
        "scale purge (retention) of the round,",
    }, "no row for the first round: the firstround scenario measures it"
    for what in ("scale materialisation", "scale resolution + materialisation"):
        assert rows[what]["met"] is False and "90 of 100 deliveries written" in rows[what]["note"]
    peak = rows["scale peak RSS (VmHWM) materialising"]
    assert peak["unit"] == "MB" and peak["limit"] == 400.0
    other = [row for row in result["rows"] if "audience_batch 50" in row["what"]]
    assert other and all(row.get("limit") is None for row in other)  # for comparison only
    assert peak["value"] == pytest.approx(390 * 1024 * 1024 / 1e6) and peak["met"] is False
    assert result["runs"][0]["peak_rss_mb"] == 408.9
    purge = rows["scale purge (retention) of the round,"]
    assert purge["complete"] is False and purge["note"].endswith("; 5 left")
    assert purge["limit"] is None and purge["met"] is None  # a figure, no target


async def test_scale_phases_report_their_own_peak_not_the_parents(tmp_path: Path) -> None:
    """``ru_maxrss`` would carry this process's size into the phase processes it starts."""
    ballast = bytearray(b"\1") * (300 * 1024 * 1024)  # every page written: resident
    ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert ours > 300
    result = await scale.run(tmp_path, backends=["sqlite"], customers=50, batches=[20])
    del ballast
    (run,) = result["runs"]
    assert 0 < run["peak_rss_mib"] < 300 < ours


def _dead_daemon_result() -> dict[str, Any]:
    daemon: dict[str, Any] = {
        "daemon": 1,
        "leader": False,
        "handed_to_sink": 40,
        "sent_by_dispatcher": None,
        "retried": None,
        "failed": None,
        "reclaimed": None,
        "peak_rss_mib": None,
        "cpu_seconds": None,
        "event_loop": None,
        "cpus": None,
        "exit_code": -9,
        "exited_during_round": True,
    }
    live = {**daemon, "daemon": 0, "leader": True, "handed_to_sink": 60, "exit_code": 0}
    live.update(sent_by_dispatcher=60, peak_rss_mib=120.0, cpu_seconds=3.0)
    live["exited_during_round"] = False
    return {
        "customers": 200,
        "sink_requests": 100,
        "sink_distinct_keys": 100,
        "sent": 100,
        "deliveries": 200,
        "seconds_from_declaration": {
            "round_started": 0.1,
            "first_at_sink": 0.5,
            "all_at_sink": None,
            "all_recorded_sent": None,
        },
        "materialise_seconds": 0.2,
        "after_materialised_seconds": None,
        "sink_duplicates": 0,
        "daemon_died": True,
        "per_daemon": [live, daemon],
        "sink_cpu_seconds": 1.0,
        "postgresql_cpu_seconds": None,
        "populate_seconds": 1.0,
    }


def test_a_dead_daemon_still_leaves_a_table_and_a_json_file(tmp_path: Path) -> None:
    result = _dead_daemon_result()
    rows = [row.as_dict() for row in firstround._rows(result, "200 customers, 2 daemons")]
    target = rows[0]
    assert target["met"] is False
    assert target["note"].startswith("daemon exited during the round: daemon 1 (exit code -9)")
    printed = table(rows)
    assert "n/a recorded by its dispatcher" in printed
    assert "60 recorded by its dispatcher" in printed
    notes = firstround._notes(result, [0.1], [0.2])
    assert any("daemon 1 (exit code -9)" in note for note in notes)
    write(tmp_path / "firstround.json", "firstround", True, {"runs": [result], "rows": rows})
    assert json.loads((tmp_path / "firstround.json").read_text())["rows"][0]["met"] is False


def test_skipped_backends_are_printed_and_summarised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def unreachable() -> bool:
        return False

    monkeypatch.setattr("bench.__main__.postgres_available", unreachable)
    assert main(["firstround", "--quick", "--out", str(tmp_path)]) == 0  # skipped at once
    printed = capsys.readouterr().out
    assert "skipped: postgresql (not reachable)" in printed.splitlines()
    document = json.loads((tmp_path / "firstround.json").read_text(encoding="utf-8"))
    assert document["rows"][0]["met"] is None  # a skipped scenario fails no target

    monkeypatch.setattr(sys, "argv", ["bench.summary", str(tmp_path)])
    summary.main()
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("- ")]
    assert "(firstround): quick sizes" in line
    assert "skipped backends: postgresql (not reachable)" in line
    assert "placement: unpinned" in line


def test_fanout_says_what_its_cpu_covers_and_pools_like_the_channels() -> None:
    assert (
        fanout.channel_connections("push")
        == WebhookSettings.model_fields["max_connections"].default
    )
    assert fanout.channel_connections("sms") == 100  # set in the Twilio channel's client
    result = {
        "cpu_per_delivery_us": 250.0,
        "cpu_scope": fanout._cpu_scope("postgresql", 1),
        "postgresql_cpu_per_delivery_us": 120.0,
    }
    note = fanout._cpu_note(result)
    assert "250 µs CPU per delivery (this process only, not the PostgreSQL server's)" in note
    assert note.endswith("PostgreSQL server 120 µs per delivery")
    assert fanout._cpu_scope("sqlite", 1) == "this process, SQLite's work included"


def test_thread_cpu_is_read_per_thread_name_and_shared_per_delivery() -> None:
    seen = thread_cpu_seconds()
    assert seen and all(seconds >= 0 for seconds in seen.values())
    before = {"python": 1.0, "tokio-runtime-w": 0.5, "gone": 0.2}
    after = {"python": 1.5, "tokio-runtime-w": 0.7, "idle": 0.0}
    assert threads_per_delivery_us(before, after, 1000) == {
        "python": 500.0,
        "tokio-runtime-w": 200.0,
    }
    assert threads_per_delivery_us(before, after, 0) == {}


async def test_repeated_fanout_takes_turns_and_reports_the_median_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``repeat``, the pipeline's rounds and the baselines' take turns, each figure is
    the median round (an actual round, with its own CPU figures), every round is kept, and a
    round left unfinished marks the figure incomplete. The rounds are faked: no sink, no
    store, no timing."""
    order: list[str] = []
    rates = iter([900.0, 1500.0, 1200.0, 1000.0, 1000.0, 1000.0])  # sqlite, postgresql, ...

    class FakeSinks:
        hook_port = 1

        def __enter__(self) -> FakeSinks:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        async def sample(self, kind: str) -> dict[str, Any]:
            return {"body": json.dumps({"subject": "s", "text": "t"}).encode()}

    async def pipeline_run(sinks: Any, backend: str, channel: str, n: int, *_: Any) -> Any:
        order.append(f"pipeline {backend}")
        rate = next(rates)
        sent = n - 1 if rate == 1500.0 else n  # one postgresql round left one unsent
        return {
            "backend": backend,
            "channel": channel,
            "customers": n,
            "sent": sent,
            "rate": rate,
            "processes": 1,
            "cpu_per_delivery_us": rate / 10,
            "cpu_scope": fanout._cpu_scope(backend, 1),
        }

    async def raw_runs(sinks: Any, channel: str, n: int) -> dict[str, Timed]:
        order.append("baselines")
        seconds = 1.0 + len(order) / 100
        return {
            fanout.STACK: Timed(n, n, seconds),
            "aiohttp": Timed(n, n, seconds * 2),
        }

    def apprise_json(url: str, subject: str, text: str, n: int) -> Timed:
        order.append("apprise")
        return Timed(n, n, 10.0 + len(order))

    monkeypatch.setattr(fanout, "Sinks", FakeSinks)
    monkeypatch.setattr(fanout, "pipeline_run", pipeline_run)
    monkeypatch.setattr(fanout, "raw_runs", raw_runs)
    monkeypatch.setattr(fanout, "apprise_json", apprise_json)
    result = await fanout.run(
        tmp_path,
        sizes=[100],
        backends=["sqlite", "postgresql"],
        channels=["push"],
        apprise_count=100,
        repeat=3,
    )
    turn = ["pipeline sqlite", "baselines", "pipeline postgresql", "baselines", "apprise"]
    assert order == turn * 3
    assert [run["turn"] for run in result["runs"]] == [1, 1, 2, 2, 3, 3]
    assert len(result["baselines"]["push/100"]["aiohttp"]) == 6
    apprise = result["baselines"]["apprise_json"]
    assert len(apprise["runs"]) == 3
    assert apprise["rate"] == sorted(run["rate"] for run in apprise["runs"])[1]  # the median
    targets = [row for row in result["rows"] if row["target"] == 0.8]
    sqlite, postgresql = targets
    assert sqlite["value"] == 1000.0  # the median of 900, 1200, 1000
    assert "median of 3 rounds (900-1,200/s)" in sqlite["note"]
    assert "100 µs CPU per delivery" in sqlite["note"]  # the median round's own
    assert sqlite["complete"] is True
    assert postgresql["value"] == 1000.0  # the median of 1500, 1000, 1000
    assert postgresql["complete"] is False  # one of its rounds did not send everything
    assert postgresql["met"] is False
    # Each ratio sets the median round beside the median of the baselines' runs.
    same = sorted(100 / (1.0 + k / 100) for k in (2, 4, 7, 9, 12, 14))
    assert sqlite["ratio"] == pytest.approx(1000.0 / ((same[2] + same[3]) / 2))

    with pytest.raises(ValueError, match="repeat must be at least 1"):
        await fanout.run(tmp_path, sizes=[100], backends=["sqlite"], apprise_count=0, repeat=0)


def test_repeat_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fanout", "--repeat", "0"])
    assert "--repeat must be at least 1, not 0" in capsys.readouterr().err
