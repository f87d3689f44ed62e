"""The benchmark suite still runs: one tiny fan-out through ``python -m bench``'s entry point
(sinks process, daemon, baselines, table, JSON). Behaviour only: no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import main


def test_fanout_runs_end_to_end_and_writes_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fanout", "--quick", "--size", "40", "--channel", "push", "--backend", "sqlite"]
    assert main([*argv, "--event-loop", "asyncio", "--out", str(tmp_path)]) == 0

    result = json.loads((tmp_path / "fanout.json").read_text(encoding="utf-8"))
    assert result["scenario"] == "fanout" and result["quick"] is True
    assert result["event_loop"] == "asyncio"
    assert result["machine"]["cpus"] >= 1
    (run,) = result["runs"]
    assert run["backend"] == "sqlite" and run["channel"] == "push"
    assert run["sent"] == 40 and run["received_by_sink"] == 40
    assert run["rate"] > 0
    # SQLite runs in this process: its work is in the CPU per delivery; no server to read.
    assert run["cpu_scope"] == "this process, SQLite's work included"
    assert run["postgresql_cpu_seconds"] is None
    by_thread = run["cpu_per_delivery_us_by_thread"]
    assert isinstance(by_thread, dict) and all(us > 0 for us in by_thread.values())
    assert set(run["raw_rates"]) == {
        "channel-client",
        "aiohttp",
        "httpx",
    }
    assert result["baselines"]["apprise_json"]["ok"] > 0
    baselines = {row["baseline"].rsplit(" ", 1)[0] for row in result["rows"]}
    assert {b.split(" ")[1] for b in baselines} == {
        "channel-client",
        "httpx,",
        "aiohttp",
        "json://",
    }
    assert all(row["ratio"] > 0 for row in result["rows"])
    printed = capsys.readouterr().out
    assert "fan-out push 40 sqlite" in printed


def test_sms_fanout_goes_through_the_fake_twilio_beside_the_sdk_and_the_client(
    tmp_path: Path,
) -> None:
    """The SMS round goes to the lean fake Twilio API, every message accepted there, and
    the baselines (the channels' client replaying the request, plain httpx, the Twilio SDK
    on its own client) send the same message there without an error."""
    argv = ["fanout", "--quick", "--size", "30", "--channel", "sms", "--backend", "sqlite"]
    assert main([*argv, "--out", str(tmp_path)]) == 0

    result = json.loads((tmp_path / "fanout.json").read_text(encoding="utf-8"))
    (run,) = result["runs"]
    assert run["sent"] == 30 and run["received_by_sink"] == 30
    assert set(run["raw_rates"]) == {"channel-client", "aiohttp", "httpx", "twilio-sdk"}
    for timed in result["baselines"]["sms/30"].values():
        assert [(t["ok"], t["errors"]) for t in timed] == [(30, 0)]
    assert any(row["baseline"].startswith("Twilio SDK, own client") for row in result["rows"])
    assert result["notes"] == []


def test_email_fanout_has_aiosmtplib_and_the_channels_pipelined_stack_beside_it(
    tmp_path: Path,
) -> None:
    """The email round goes to the SMTP sink, which offers PIPELINING; beside it
    aiosmtplib (one command at a time) and the channel's own pipelined transactions replay
    the same message there without an error, each a row with the 0.8 target."""
    argv = ["fanout", "--quick", "--size", "30", "--channel", "email", "--backend", "sqlite"]
    assert main([*argv, "--out", str(tmp_path)]) == 0

    result = json.loads((tmp_path / "fanout.json").read_text(encoding="utf-8"))
    (run,) = result["runs"]
    assert run["sent"] == 30 and run["received_by_sink"] == 30
    assert set(run["raw_rates"]) == {"aiosmtplib", "channel-client"}
    for timed in result["baselines"]["email/30"].values():
        assert [(t["ok"], t["errors"]) for t in timed] == [(30, 0)]
    targets = sorted((row["baseline"].rsplit(" ", 1)[0], row["target"]) for row in result["rows"])
    assert targets == [("raw aiosmtplib", 0.8), ("raw channel SMTP, pipelined", 0.8)]
    assert result["notes"] == []


def test_fanout_pipeline_only_runs_no_baseline(tmp_path: Path) -> None:
    argv = ["fanout", "--quick", "--size", "40", "--channel", "push", "--backend", "sqlite"]
    assert main([*argv, "--pipeline-only", "--out", str(tmp_path)]) == 0

    result = json.loads((tmp_path / "fanout.json").read_text(encoding="utf-8"))
    (run,) = result["runs"]
    assert run["sent"] == 40 and run["received_by_sink"] == 40
    assert run["cpu_per_delivery_us"] > 0
    assert result["baselines"] == {}
    (row,) = result["rows"]
    assert row["ratio"] is None and row["note"].startswith("pipeline only; ")
    assert row["note"].endswith("µs CPU per delivery (this process, SQLite's work included)")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--pin needs two CPUs")
def test_pinned_runs_record_their_placement(tmp_path: Path) -> None:
    """``--pin SENDER,SINK`` (in a process of its own: it pins the process it runs in)."""
    sender, sink = sorted(os.sched_getaffinity(0))[:2]
    argv = ["fanout", "--quick", "--size", "20", "--channel", "push", "--backend", "sqlite"]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *argv, "--pin", f"{sender},{sink}", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "fanout.json").read_text(encoding="utf-8"))
    assert result["placement"] == {"sender_cpu": sender, "sink_cpu": sink}
    assert result["runs"][0]["received_by_sink"] == 20


@pytest.mark.parametrize(
    ("spec", "says"),
    [("0", "expected two CPU numbers"), ("0,0", "need a CPU each"), ("0,4096", "CPU 4096")],
)
def test_a_bad_pin_is_refused_before_anything_runs(spec: str, says: str) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["fanout", "--pin", spec])
    assert says in str(refused.value)


def test_email_build_compares_the_transactions(tmp_path: Path) -> None:
    """``python -m bench.email_build`` runs end to end: builds, sends through the sink, and
    the channel's own transaction beside the old ``sendmail`` one. No timing asserted."""
    out = tmp_path / "email.json"
    argv = ["--count", "40", "--rounds", "1", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.email_build", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    runs = result["transaction_runs_cpu_us"]
    assert len(runs["channel"]) == len(runs["sendmail"]) == 1
    assert all(value > 0 for value in runs["channel"] + runs["sendmail"])
    assert "send, own transaction" in done.stdout
