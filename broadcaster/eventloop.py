"""The event loop the daemon and its dispatch processes run on (``event_loop`` setting).

``uvloop`` (the default, a dependency everywhere but Windows) does the loop's own work
(callbacks, timers, socket reads and writes, wake-ups from other threads) in C; ``asyncio``
is the standard library's loop, and the default on Windows, where uvloop does not exist.

uvloop became the default in the eighth round of measurements (docs/performance.md). Since
the HTTP channels send through pyreqwest, every answer reaches the loop from pyreqwest's
thread, and asyncio's loop writes a byte to its self-pipe for each (a system call and a
wake-up per message) where uvloop coalesces them: in alternating pairs of pipeline-only push
rounds of 40,000, uvloop spent 7–9 % less CPU per delivery on SQLite and 11–14 % less on
PostgreSQL, in email rounds of 20,000 11–14 % less, and the first round of 1,000,000 on two
daemons used 5 % less CPU. (In the fourth round, when the channels sent through aiohttp
inside the loop, uvloop had been 10 % slower on PostgreSQL: why asyncio was the default.)

The setting applies where Broadcaster makes the loop: ``broadcaster run`` and its dispatch
processes. A program that runs :class:`~broadcaster.daemon.Daemon` on a loop of its own
(the benchmarks, the tests) keeps that loop, and its dispatch processes follow the
setting. The CLI's one-shot commands stay on asyncio's loop.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

EventLoopChoice = Literal["asyncio", "uvloop"]

DEFAULT_EVENT_LOOP: EventLoopChoice = "asyncio" if sys.platform == "win32" else "uvloop"
"""The ``event_loop`` setting's default: uvloop wherever it is a dependency."""


class EventLoopError(RuntimeError):
    """The configured event loop is not available."""


def loop_factory(choice: EventLoopChoice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What :class:`asyncio.Runner` should build the loop with: uvloop's factory, or
    ``None`` for asyncio's own."""
    if choice == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError as exc:
        raise EventLoopError(
            "event_loop is uvloop (the default, or set so) but uvloop is not installed: "
            "pip install uvloop, or set event_loop: asyncio"
        ) from exc
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: EventLoopChoice = "asyncio") -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names."""
    try:
        factory = loop_factory(choice)
    except EventLoopError:
        main.close()  # never awaited: say nothing about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> EventLoopChoice:
    """``uvloop`` or ``asyncio``: which loop this is (the running one by default)."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
