"""How the daemon stops its extra dispatch processes (``delivery.processes``): at once, when
its own stop begins, beside its own workers, and killing one only after a bound long enough
for it to finish what it handed to its channels.

The daemon runs in-process on a SQLite store; its children are real processes."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from broadcaster import daemon as daemon_module
from broadcaster.config.settings import Settings
from broadcaster.daemon import Daemon
from broadcaster.dispatch.processes import DispatchProcesses, stop_bound
from broadcaster.dispatch.worker import LEASES_KEPT
from broadcaster.store.migrate import upgrade_async


def _settings(url: str, processes: int = 2) -> Settings:
    return Settings.model_validate(
        {
            "database": {"url": url},
            "schedule": {"sweep_interval": "100ms"},
            "delivery": {
                "channels": ["mail"],
                "workers": 1,
                "poll_interval": "100ms",
                "processes": processes,
            },
            "channels": {"mail": {"type": "console"}},
            "http": {"enabled": False},
        }
    )


async def test_children_are_told_to_stop_when_the_stop_begins_not_after_the_daemons_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """While the daemon's own worker is still finishing a batch (held here until the
    test lets it go), its children have had their SIGTERM and stopped: they claim nothing
    more meanwhile, and nothing waits for a kill."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await upgrade_async(url)
    draining = asyncio.Event()
    sent = asyncio.Event()

    async def finishing_worker(*args: object) -> None:
        stop = args[2]
        assert isinstance(stop, asyncio.Event)
        await stop.wait()
        draining.set()
        await sent.wait()  # a batch still sending when the stop began

    monkeypatch.setattr(daemon_module, "dispatch_worker", finishing_worker)
    made: list[DispatchProcesses] = []
    extra = Daemon._extra_processes

    def keep(self: Daemon) -> DispatchProcesses | None:
        found = extra(self)
        if found is not None:
            made.append(found)
        return found

    monkeypatch.setattr(Daemon, "_extra_processes", keep)
    caplog.set_level(logging.INFO, logger="broadcaster")
    daemon = Daemon(_settings(url, processes=3))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 60)
        (processes,) = made
        children = [c for c in processes._children if c is not None]
        assert len(children) == 2
        stop.set()
        await asyncio.wait_for(draining.wait(), 10)
        async with asyncio.timeout(30):
            while any(child.returncode is None for child in children):
                assert not sent.is_set()
                await asyncio.sleep(0.05)
        # They stopped as on SIGTERM (finished, gave back their leases), not killed.
        assert [child.returncode for child in children] == [0, 0]
        assert not task.done(), "the daemon did not wait for its own worker"
    finally:
        sent.set()
        stop.set()
        await asyncio.wait_for(task, 60)
    assert not [r for r in caplog.records if "did not stop" in r.getMessage()]


_FINISHES = """
import signal, sys, time
def term(*_):
    time.sleep(0.5)  # what it handed to its channels is sent and recorded
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("ready", flush=True)
time.sleep(60)
"""

_HANGS = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


async def _child(script: str) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    assert await asyncio.wait_for(child.stdout.readline(), 30) == b"ready\n"
    return child


async def test_stop_waits_for_every_child_together_and_kills_only_past_its_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    processes = DispatchProcesses(_settings(f"sqlite+aiosqlite:///{tmp_path / 's.db'}"), 3)
    processes.stop_within = timedelta(seconds=1.5)
    hung, finishing, other = (
        await _child(_HANGS),
        await _child(_FINISHES),
        await _child(_FINISHES),
    )
    processes._children = [hung, finishing, other]
    caplog.set_level(logging.INFO, logger="broadcaster")
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(processes.stop(), 20)
    took = loop.time() - began
    assert hung.returncode == -signal.SIGKILL
    assert finishing.returncode == 0 and other.returncode == 0  # not cut short
    # One bound for them all, not one after another.
    assert 1.4 <= took < 3.0, took
    killed = [r for r in caplog.records if "did not stop within" in r.getMessage()]
    assert [getattr(r, "pid", None) for r in killed] == [hung.pid]


def test_the_kill_waits_longer_than_a_batch_keeps_its_leases() -> None:
    """A child is killed only once what it holds has lost its leases (a message being sent
    keeps its lease for LEASES_KEPT leases at most) and the lease to record the outcomes
    is over: by then other workers may have claimed it again anyway."""
    default = Settings()
    assert stop_bound(default.delivery) == default.delivery.lease * (LEASES_KEPT + 1)
    assert stop_bound(default.delivery) == timedelta(minutes=5, seconds=30)
    longer = default.delivery.model_copy(update={"lease": timedelta(minutes=2)})
    assert stop_bound(longer) == timedelta(minutes=22)
    assert DispatchProcesses(default, 1).stop_within == stop_bound(default.delivery)
