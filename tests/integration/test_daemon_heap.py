"""The daemon settles its heap once it is ready (``broadcaster.heap``): what start-up built
is frozen out of the collector's full passes, the young generation's threshold is raised,
and garbage made afterwards is still collected."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from broadcaster.clock import RealClock
from broadcaster.config.settings import Settings
from broadcaster.daemon import Daemon
from broadcaster.heap import YOUNG_THRESHOLD, settle
from broadcaster.store.migrate import upgrade_async
from channels.memory import MemoryChannel


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    """Each test leaves the collector as it found it."""
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_settle_freezes_survivors_and_raises_the_young_threshold() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    kept = [Node() for _ in range(100)]
    settle()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
    assert gc.get_count()[0] < 100  # the collection ran before the freeze


def test_settle_never_lowers_a_higher_threshold() -> None:
    gc.set_threshold(50_000, 20, 30)
    settle()
    assert gc.get_threshold() == (50_000, 20, 30)


def test_garbage_made_after_settling_is_still_collected() -> None:
    settle()
    dropped = cycle()
    assert dropped() is not None
    gc.collect()
    assert dropped() is None


def test_settling_again_thaws_what_the_last_call_froze() -> None:
    held = Node()
    held.other = Node()
    held.other.other = held
    settle()
    frozen = weakref.ref(held)
    del held
    gc.collect()
    assert frozen() is not None  # a frozen cycle outlives full collections
    settle()  # a second daemon in the same process
    assert frozen() is None


async def test_the_daemon_settles_once_it_is_ready(tmp_path: Path) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await upgrade_async(url)
    settings = Settings.model_validate(
        {
            "database": {"url": url},
            "delivery": {"channels": ["mail"], "workers": 1},
            "channels": {"mail": {"type": "console"}},
            "http": {"enabled": False},
        }
    )
    daemon = Daemon(settings, clock=RealClock(), channels={"mail": MemoryChannel(name="mail")})
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        assert gc.get_freeze_count() > 10_000  # the engine, the store's models, the rules
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
