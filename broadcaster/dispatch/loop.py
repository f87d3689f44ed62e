"""The dispatch worker loop, shared by the daemon and its extra dispatch processes.

A worker claims, sends and records batches until there is nothing due, then waits for the
round loop's wake-up (in the daemon's own process) or ``delivery.poll_interval`` (in any
process). A failure (the store down, say) pauses it and it tries again: it never ends
before ``stop``. Its batch in progress at ``stop`` hands no more messages to their channels
(:meth:`~broadcaster.dispatch.worker.Dispatcher.run_once`): those handed over finish and
are recorded, and :func:`wind_down` gives back the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from broadcaster.dispatch.worker import Dispatcher

if TYPE_CHECKING:
    from broadcaster.engine import Engine
    from broadcaster.store import Database

log = logging.getLogger("broadcaster.daemon")

ERROR_PAUSE = timedelta(seconds=2)


async def wait_for(event: asyncio.Event, stop: asyncio.Event, seconds: float | None) -> None:
    """Return when ``event`` or ``stop`` is set, or after ``seconds``."""
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def dispatch_worker(
    dispatcher: Dispatcher,
    work_ready: asyncio.Event,
    stop: asyncio.Event,
    index: int,
    poll: timedelta,
) -> None:
    """One worker: batches until ``stop``; when idle, waits for ``work_ready`` or ``poll``."""
    failures = 0
    while not stop.is_set():
        try:
            handled = await dispatcher.run_once(stop)
        except Exception as exc:  # the store may be down: pause, then try again
            failures += 1
            if failures == 1:
                log.exception("dispatch worker %d failed; retrying", index)
            else:  # one traceback per outage, not one per poll
                log.warning(
                    "dispatch worker %d still failing; retrying",
                    index,
                    extra={"failures": failures, "reason": repr(exc)},
                )
            await wait_for(asyncio.Event(), stop, ERROR_PAUSE.total_seconds())
            continue
        if failures:
            log.info("dispatch worker %d recovered", index, extra={"failures": failures})
            failures = 0
        if handled == 0:
            await wait_for(work_ready, stop, poll.total_seconds())
            work_ready.clear()


async def wind_down(engine: Engine, database: Database) -> None:
    """After the workers stopped: give back the leases of whatever was claimed and not
    sent (a stopping batch's messages not yet handed to their channels; best effort: they
    expire anyway), close the channels and the store."""
    with contextlib.suppress(Exception):
        released = await engine.dispatcher.release()
        if released:
            log.info("released delivery leases", extra={"count": released})
    await engine.aclose()
    await database.dispose()
