"""The event loop the daemon and its dispatch processes run on (``event_loop`` setting).

``asyncio`` (the default) is the standard library's loop; ``uvloop`` is uvloop (a
dependency everywhere but Windows), which does the loop's own work (callbacks, timers,
socket reads and writes) in C. Neither wins everywhere. Measured here (docs/performance.md,
fourth round), uvloop sent a push round on SQLite 15 % faster (median of three alternating
pairs) and an email round about 10 % faster, but a push round on PostgreSQL 10 % slower
with more CPU per delivery, so it is not the default; the shipped ``config.yaml`` (SQLite)
turns it on.

The setting applies where Broadcaster makes the loop: ``broadcaster run`` and its dispatch
processes. A program that runs :class:`~broadcaster.daemon.Daemon` on a loop of its own
(the benchmarks, the tests) keeps that loop, and its dispatch processes follow the
setting. The CLI's one-shot commands stay on asyncio's loop.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

EventLoopChoice = Literal["asyncio", "uvloop"]


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
            "event_loop: uvloop is configured but not installed "
            "(pip install uvloop, or set event_loop: asyncio)"
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
