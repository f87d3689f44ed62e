"""Leases under the promise grace: a round a daemon dies in is finished by another daemon
once the dead one's leases run out, so a lease as long as ``schedule.promise_grace``
makes that round's customers hear after the promised time. The defaults keep both leases
under the grace, and a daemon warns at start when a configuration does not."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from broadcaster.clock import RealClock
from broadcaster.config.settings import Settings
from broadcaster.daemon import Daemon, leases_past_grace
from broadcaster.store.migrate import upgrade_async
from channels.memory import MemoryChannel


def settings(url: str = "sqlite+aiosqlite:///unused.db", **sections: Any) -> Settings:
    base: dict[str, Any] = {
        "database": {"url": url},
        "delivery": {"channels": ["mail"], "workers": 1},
        "channels": {"mail": {"type": "console"}},
        "http": {"enabled": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return Settings.model_validate(base)


def test_the_default_leases_are_under_the_default_grace() -> None:
    defaults = settings()
    assert defaults.delivery.lease < defaults.schedule.promise_grace
    assert defaults.schedule.round_lease < defaults.schedule.promise_grace
    assert leases_past_grace(defaults) == []


def test_a_lease_as_long_as_the_grace_is_named_with_both_values() -> None:
    found = leases_past_grace(settings(delivery={"lease": "60s"}))
    assert len(found) == 1
    assert found[0].startswith(
        "delivery.lease (1m) is not shorter than schedule.promise_grace (1m)"
    )


def test_a_shorter_grace_names_both_leases() -> None:
    found = leases_past_grace(settings(schedule={"promise_grace": "20s"}))
    assert [problem.split(" ")[0] for problem in found] == [
        "schedule.round_lease",
        "delivery.lease",
    ]


async def test_the_daemon_warns_of_it_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await upgrade_async(url)
    caplog.set_level(logging.WARNING, logger="broadcaster.daemon")
    daemon = Daemon(
        settings(url, schedule={"round_lease": "2m"}),
        clock=RealClock(),
        channels={"mail": MemoryChannel(name="mail")},
    )
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    warned = [r.getMessage() for r in caplog.records if "promise_grace" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].startswith("schedule.round_lease (2m) is not shorter than")
