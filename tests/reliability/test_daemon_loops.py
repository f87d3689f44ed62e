"""The daemon's loops never end on an error: the round loop and the dispatch workers log
it (one traceback per outage), pause, and carry on when the cause goes away.

In-process (``broadcaster.daemon.Daemon`` on a SQLite store, the in-memory channel), with
the store "failing" by injection where the loops call it: leadership, round processing and
dispatch each raise for a while, then work again.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

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
