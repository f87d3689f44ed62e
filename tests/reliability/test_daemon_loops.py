"""The daemon's loops never end on an error: the round loop and the dispatch workers log
it (one traceback per outage), pause, and carry on when the cause goes away.

In-process (``broadcaster.daemon.Daemon`` on a SQLite store, the in-memory channel), with
the store "failing" by injection where the loops call it: leadership, round processing and
dispatch each raise for a while, then work again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

import pytest

from broadcaster.clock import RealClock
from broadcaster.config.settings import Settings
from broadcaster.daemon import Daemon
from broadcaster.dispatch.worker import Dispatcher
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.schedule.leader import Leadership
from broadcaster.store import Database
from broadcaster.store.migrate import upgrade_async
from channels.memory import MemoryChannel
from tests.reliability.common import add_customers

CUSTOMERS = 12


class Flaky:
    """Wraps an async method: raises ``error`` on the first ``times`` calls, then delegates."""

    def __init__(self, times: int, error: Exception) -> None:
        self.left = times
        self.error = error
        self.calls = 0

    def wrap(self, method: object) -> object:
        async def flaky(*args: object, **kwargs: object) -> object:
            self.calls += 1
            if self.left > 0:
                self.left -= 1
                raise self.error
            return await method(*args, **kwargs)  # type: ignore[operator]

        return flaky


@pytest.mark.parametrize("where", ["leadership", "rounds", "dispatch"])
async def test_the_loops_survive_errors_and_deliver(
    tmp_path: Path,
    where: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await upgrade_async(url)
    database = Database(url)
    clock = RealClock()
    await add_customers(database, clock.now(), CUSTOMERS, ["email"])
    flaky = Flaky(3, RuntimeError(f"{where} is down"))
    target: tuple[type, str] = {
        "leadership": (Leadership, "ensure"),
        "rounds": (Engine, "process_due_rounds"),
        "dispatch": (Dispatcher, "run_once"),
    }[where]
    monkeypatch.setattr(target[0], target[1], flaky.wrap(getattr(target[0], target[1])))
    settings = Settings.model_validate(
        {
            "database": {"url": url},
            "schedule": {"sweep_interval": "100ms", "cadence": {"major": "1h"}},
            "delivery": {"channels": ["mail"], "workers": 1, "poll_interval": "50ms"},
            "channels": {"mail": {"type": "console"}},
            "http": {"enabled": False},
        }
    )
    mail = MemoryChannel(name="mail")
    daemon = Daemon(settings, clock=clock, channels={"mail": mail})
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="broadcaster")
    task = asyncio.create_task(daemon.run(stop))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        await service.declare(
            database,
            clock,
            service.Declaration(title="t", severity="major", message="m", components=["payments"]),
        )
        async with asyncio.timeout(20):
            while len(mail.sent) < CUSTOMERS:
                assert not task.done(), "the daemon ended"
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await database.dispose()
    assert flaky.calls > 3 and flaky.left == 0
    assert sorted(m.target.customer_id for m in mail.sent) == [f"C{n:05d}" for n in range(12)]
    tracebacks = [r for r in caplog.records if r.exc_info and "failed; retrying" in r.getMessage()]
    assert len(tracebacks) == 1, [r.getMessage() for r in caplog.records]
    assert any("recovered" in r.getMessage() for r in caplog.records)


class ThreadedEvent(asyncio.Event):
    """An asyncio event that notes the thread of every ``set``."""

    threads: ClassVar[list[int]] = []

    def set(self) -> None:
        ThreadedEvent.threads.append(threading.get_ident())
        super().set()


def _quiet_settings(url: str) -> Settings:
    return Settings.model_validate(
        {
            "database": {"url": url},
            "schedule": {"sweep_interval": "50ms"},
            "rules": {"followup_sweep": "50ms"},
            "delivery": {"channels": ["mail"], "workers": 1, "poll_interval": "50ms"},
            "channels": {"mail": {"type": "console"}},
            "http": {"enabled": False},
        }
    )


async def test_the_scheduler_wakes_the_loops_from_the_loop_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """APScheduler runs a plain function in a worker thread; its wake-ups must not set the
    daemon's events from there (asyncio's and uvloop's loops are not thread-safe)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await upgrade_async(url)
    monkeypatch.setattr(ThreadedEvent, "threads", [])
    monkeypatch.setattr(asyncio, "Event", ThreadedEvent)
    daemon = Daemon(_quiet_settings(url), channels={"mail": MemoryChannel(name="mail")})
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        async with asyncio.timeout(10):
            while len(ThreadedEvent.threads) < 10:  # sweeps of both kinds, every 50 ms
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    assert set(ThreadedEvent.threads) == {threading.get_ident()}


async def test_stopping_lets_a_followup_sweep_in_flight_finish_without_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await upgrade_async(url)
    started = asyncio.Event()
    finished: list[bool] = []

    async def slow_sweep(self: Engine) -> None:
        started.set()
        await asyncio.sleep(0.5)
        finished.append(True)

    monkeypatch.setattr(Engine, "sweep_followups", slow_sweep)
    daemon = Daemon(_quiet_settings(url), channels={"mail": MemoryChannel(name="mail")})
    stop = asyncio.Event()
    caplog.set_level(logging.INFO)
    task = asyncio.create_task(daemon.run(stop))
    try:
        await asyncio.wait_for(started.wait(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    assert finished == [True]  # the sweep in flight ran to its end, and no other began
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


RULES = """\
version: 1
policies:
  standard:
    steps:
      - after: 0m
        every: 30m
        channels: [mail]
"""


async def test_the_daemon_picks_up_a_changed_rules_file_and_keeps_good_rules(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await upgrade_async(url)
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    settings = _quiet_settings(url).model_copy(deep=True)
    settings.rules.path = path
    settings.rules.reload_interval = timedelta(milliseconds=50)
    daemon = Daemon(settings, channels={"mail": MemoryChannel(name="mail")})
    stop = asyncio.Event()
    caplog.set_level(logging.INFO)
    task = asyncio.create_task(daemon.run(stop))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        assert daemon._engine is not None
        holder = daemon._engine.rules
        first = holder.current
        path.write_text(RULES.replace("30m", "20m"))
        os.utime(path, (time.time() + 5, time.time() + 5))  # a new mtime, whatever the clock
        async with asyncio.timeout(10):
            while holder.reloads < 1:
                await asyncio.sleep(0.02)
        good = holder.current
        assert good is not first and holder.error is None
        path.write_text(RULES.replace("30m", "thirty minutes"))
        os.utime(path, (time.time() + 10, time.time() + 10))
        async with asyncio.timeout(10):
            while holder.error is None:
                await asyncio.sleep(0.02)
        assert holder.current is good  # the bad edit replaced nothing
        assert "rules.yaml:6" in holder.error
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    rejected = [r for r in caplog.records if "rules reload rejected" in r.getMessage()]
    assert len(rejected) == 1  # checked again at each wake-up, but only once reloaded
