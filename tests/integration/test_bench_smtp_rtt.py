"""``python -m bench.smtp_rtt``: the email channel through a delaying proxy, pipelined and
not. Behaviour only (no rate is asserted): every message reaches the relay, and the proxy
sees two writes a message pipelined, four one command at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import smtp_rtt


def test_counts_the_writes_of_each_mode_and_writes_its_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rtt.json"
    smtp_rtt.main(
        ["--rtt-ms", "4", "--count", "12", "--pool", "2", "--rounds", "1", "--json", str(out)]
    )

    results = json.loads(out.read_text())
    assert results["writes_per_message"] == {"pipelined": 2.0, "one at a time": 4.0}
    assert set(results["median_rate"]) == {"pipelined", "one at a time"}
    assert all(rate > 0 for rate in results["median_rate"].values())
    printed = capsys.readouterr().out
    assert "pipelined / one at a time" in printed


def test_refuses_nonsense_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        smtp_rtt.main(["--count", "0"])
    assert "--count must be at least 1" in capsys.readouterr().err
