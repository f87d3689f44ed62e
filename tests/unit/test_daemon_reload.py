"""SIGHUP reloads the rules off the event loop."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

from broadcaster.config.settings import Settings
from broadcaster.daemon import Daemon


async def test_sighup_reloads_the_rules_in_a_worker_thread() -> None:
    """Reading and checking a large rules file, or waiting for the periodic check's reload
    (it holds the holder's lock), stalled every round and send on the loop."""
    daemon = Daemon(Settings.model_validate({}))
    ran_in: list[threading.Thread] = []
    release = threading.Event()

    def reload() -> bool:
        ran_in.append(threading.current_thread())
        return release.wait(5)

    engine: Any = SimpleNamespace(rules=SimpleNamespace(reload=reload))
    daemon._engine = engine
    daemon.reload_rules()
    await asyncio.sleep(0.05)  # the loop runs on while the reload waits
    assert ran_in and ran_in[0] is not threading.current_thread()
    release.set()
    await asyncio.gather(*daemon._reloads)
    assert not daemon._reloads
