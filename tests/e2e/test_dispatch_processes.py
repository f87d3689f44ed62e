"""``delivery.processes``: the daemon's extra dispatch processes share the work, are started
again when they die, and stop when the daemon stops or dies."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import httpx
import pytest

from broadcaster.devsmtp import SmtpSink
from broadcaster.eventloop import DEFAULT_EVENT_LOOP
from tests.e2e.harness import Daemon, cli, duplicates, query, wait_until, write_config
from tests.e2e.test_daemon import _declare

pytestmark = pytest.mark.e2e


def _config(tmp_path: Path, smtp_port: int, extra: str = "", delivery: str = "") -> Path:
    config = write_config(tmp_path, smtp_port, cadence="1h", extra=extra)
    text = config.read_text(encoding="utf-8").replace(
        "delivery:\n", f"delivery:\n  processes: 2\n{delivery}", 1
    )
    config.write_text(text, encoding="utf-8")
    return config


def _customers(path: Path, count: int) -> list[str]:
    lines = ["id,name,language,timezone,email,components"]
    addresses = [f"cust{n:03d}@example.org" for n in range(count)]
    lines += [f"C{n:03d},Customer {n},en,UTC,{a},payments" for n, a in enumerate(addresses)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return addresses


def _start(tmp_path: Path, config: Path, customers: int) -> tuple[list[str], Daemon]:
    """The store made with ``customers`` customers imported, and the daemon started."""
    addresses = _customers(tmp_path / "customers.csv", customers)
    cli(config, "db", "upgrade")
    cli(config, "customers", "import", str(tmp_path / "customers.csv"))
    return addresses, Daemon(config, tmp_path / "daemon.log").start()


def _logged(log: str, message: str) -> list[dict[str, object]]:
    found = []
    for line in log.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("msg") == message:
                found.append(entry)
    return found


def _child_pids(log: str) -> list[int]:
    return [int(str(e["pid"])) for e in _logged(log, "dispatch process started")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a parent that is gone) counts as stopped.
    try:
        status = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:  # reaped in between
        return False
    return re.search(r"\) Z ", status) is None


def test_two_processes_share_a_round_exactly_once(tmp_path: Path) -> None:
    with SmtpSink() as sink:
        # asyncio's loop, the choice other than the default (uvloop): processes follow it.
        # The rate limit is split between the processes (50 messages a second each): one
        # process alone would need 3 s for the round, so both must take part even when the
        # machine is busy and one of them is slow to look for work.
        config = _config(
            tmp_path,
            sink.port,
            extra="event_loop: asyncio\n",
            delivery="  rate_limits: {email: {per_second: 100, burst: 4}}\n",
        )
        addresses, daemon = _start(tmp_path, config, 150)
        try:
            wait_until(lambda: bool(_logged(daemon.log(), "dispatch process ready")), 30, "child")
            _declare(config)
            wait_until(lambda: len(sink.messages) >= len(addresses), 30, "every message")
        finally:
            assert daemon.stop() == 0
        log = daemon.log()
    assert sorted(r for m in sink.messages for r in m.recipients) == addresses
    assert duplicates(sink.messages) == 0
    parent = _logged(log, "daemon stopped")[0]["stats"]
    child = _logged(log, "dispatch process stopped")[0]["stats"]
    assert isinstance(parent, dict) and isinstance(child, dict)
    assert parent["sent"] > 0 and child["sent"] > 0, (parent, child)
    assert parent["sent"] + child["sent"] == len(addresses)
    # Both processes froze what they built at start-up out of the collector's way.
    for ready in ("daemon ready", "dispatch process ready"):
        (entry,) = _logged(log, ready)
        assert int(str(entry["frozen_objects"])) > 10_000, entry
    # Both run on the loop the config names (event_loop: asyncio here).
    for started in ("daemon started", "dispatch process ready"):
        (entry,) = _logged(log, started)
        assert entry["event_loop"] == "asyncio", entry
    assert query(tmp_path / "store.db", "SELECT count(*) FROM deliveries WHERE state = 'sent'") == [
        (len(addresses),)
    ]


def _pauses_on_metrics(log: str) -> float | None:
    """``broadcaster_channel_pauses_total{channel="email"}`` on the daemon's /metrics."""
    listening = _logged(log, "http listening")
    if not listening:
        return None
    address = str(listening[0]["address"])
    response = httpx.get(f"http://{address}/metrics", timeout=5)
    for line in response.text.splitlines():
        if line.startswith('broadcaster_channel_pauses_total{channel="email"'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_daemon_metrics_count_its_childrens_channel_pauses(tmp_path: Path) -> None:
    """A relay that refuses the first MAIL commands for our rate: the daemon and its child
    each pause the email channel on their own; /metrics counts the pauses of both."""
    refusal = "450 4.7.1 Error: too much mail from 127.0.0.1"
    with SmtpSink(mail_refusals=[refusal] * 4) as sink:
        # As in the first test: the rate limit is split, so both processes send from the
        # start; each sends at most its burst before the refusal pauses it.
        config = _config(
            tmp_path, sink.port, delivery="  rate_limits: {email: {per_second: 100, burst: 4}}\n"
        )
        text = config.read_text(encoding="utf-8")
        text = text.replace("http:\n  port: 0\n", "http:\n  port: 0\n  public_metrics: true\n")
        config.write_text(text, encoding="utf-8")
        addresses, daemon = _start(tmp_path, config, 60)
        try:
            wait_until(lambda: bool(_logged(daemon.log(), "dispatch process ready")), 30, "child")
            _declare(config)
            wait_until(lambda: len(sink.messages) >= len(addresses), 60, "every message")
            paused = "channel email paused for"

            def counted() -> bool:
                log = daemon.log()
                began = sum(paused in str(e.get("msg", "")) for e in _entries(log))
                return began > 0 and _pauses_on_metrics(log) == began

            wait_until(counted, 10, "the pauses of both processes on /metrics")
        finally:
            assert daemon.stop() == 0
        log = daemon.log()
    assert sink.mail_refusals_left == 0
    assert sorted(r for m in sink.messages for r in m.recipients) == addresses
    parent = _logged(log, "daemon stopped")[0]["stats"]
    child = _logged(log, "dispatch process stopped")[0]["stats"]
    assert isinstance(parent, dict) and isinstance(child, dict)
    # Both paused: the child's pauses are on the daemon's /metrics only by its reports.
    assert parent["pauses"] >= 1 and child["pauses"] >= 1, (parent, child)


def _entries(log: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def test_a_dead_child_is_started_again_and_a_dead_daemon_takes_its_children_along(
    tmp_path: Path,
) -> None:
    with SmtpSink() as sink:
        config = _config(tmp_path, sink.port)
        cli(config, "db", "upgrade")
        daemon = Daemon(config, tmp_path / "daemon.log").start()
        try:
            wait_until(lambda: bool(_logged(daemon.log(), "dispatch process ready")), 30, "child")
            (first,) = _child_pids(daemon.log())
            os.kill(first, signal.SIGKILL)
            wait_until(lambda: len(_child_pids(daemon.log())) == 2, 30, "a new child")
            assert _logged(daemon.log(), "dispatch process died; starting it again")
            second = _child_pids(daemon.log())[1]
            wait_until(
                lambda: len(_logged(daemon.log(), "dispatch process ready")) == 2, 30, "ready"
            )
            assert _alive(second)
            # No event_loop in the config: the daemon and its children run on the default.
            for entry in (
                *_logged(daemon.log(), "daemon started"),
                *_logged(daemon.log(), "dispatch process ready"),
            ):
                assert entry["event_loop"] == DEFAULT_EVENT_LOOP, entry
        finally:
            daemon.kill()  # SIGKILL: the child must notice on its own
        wait_until(lambda: not _alive(second), 20, "the orphaned child to stop")
    gone = "the daemon that started this dispatch process is gone; stopping"
    assert _logged(daemon.log(), gone)


RULES = """\
version: 1
policies:
  default:
    steps:
      - after: 0m
        every: 1h
        channels: [email]
rules:
  - name: default-policy
    policy: default
"""


def test_a_child_that_cannot_start_is_tried_again_less_and_less_often(tmp_path: Path) -> None:
    """A rules file made unusable after the daemon started (the daemon keeps its last good
    rules) stops a restarted child at its start: the supervisor says why, and doubles its
    pause for each child in a row that dies young, instead of starting one every 2 s."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    with SmtpSink() as sink:
        config = _config(tmp_path, sink.port, extra=f"rules:\n  path: {rules}\n")
        cli(config, "db", "upgrade")
        daemon = Daemon(config, tmp_path / "daemon.log").start()
        try:
            wait_until(lambda: bool(_logged(daemon.log(), "dispatch process ready")), 30, "child")
            rules.write_text("version: 1\nrules: [\n", encoding="utf-8")
            (first,) = _child_pids(daemon.log())
            os.kill(first, signal.SIGKILL)
            died = "dispatch process died; starting it again"
            wait_until(lambda: len(_logged(daemon.log(), died)) >= 3, 40, "two failed restarts")
        finally:
            assert daemon.stop() == 0
        log = daemon.log()
    assert _logged(log, "dispatch process cannot start: the rules file cannot be used")
    pauses = [float(str(e["pause_seconds"])) for e in _logged(log, died)]
    assert pauses[:3] == [2.0, 4.0, 8.0], pauses
    assert len(_logged(log, "dispatch process ready")) == 1  # none of the restarts got there
