"""Writes of work already done outside the store (a message handed to its provider) must not
be given up at the first error: given up, the work's lease runs out and it is done again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger("broadcaster.store")

T = TypeVar("T")


async def retried(
    write: Callable[[], Awaitable[T]],
    *,
    within: timedelta,
    what: str,
    first: float = 0.5,
    longest: float = 8.0,
    count: int = 1,
) -> T:
    """``write()``, tried again after an error that a later try can get past
    (:func:`store_transient`: the store restarting, a pooled connection that died, a
    deadlock) with a pause from ``first`` seconds doubling up to ``longest``, for as long as
    the next try starts within ``within`` of the first; the last error is raised then. Each
    failure is logged as ``could not record <what>; trying again``. Any other error (the
    store refused the statement: a value too long, a constraint) is raised at once: the
    same write would be refused again for the whole window."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within.total_seconds()
    pause = first
    failures = 0
    while True:
        try:
            done = await write()
        except Exception as exc:
            failures += 1
            if not store_transient(exc) or loop.time() + pause > deadline:
                raise
            log.warning(
                "could not record %s; trying again",
                what,
                extra={"count": count, "failures": failures, "reason": repr(exc)},
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, longest)
            continue
        if failures:
            log.info("recorded %s", what, extra={"failures": failures})
        return done


def store_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store could not be reached (a connection lost or refused,
    the server restarting), as opposed to a statement that failed on its own."""
    if isinstance(exc, (OperationalError, InterfaceError, OSError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
"""PostgreSQL's serialization failure and deadlock: the transaction may succeed if run again."""


def store_transient(exc: BaseException) -> bool:
    """Whether writing again may succeed where ``exc`` stopped it: the store unreachable
    (:func:`store_unreachable`), a statement timed out, or PostgreSQL chose this
    transaction to end a deadlock or a serialization conflict."""
    if store_unreachable(exc) or isinstance(exc, TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return code in RETRYABLE_SQLSTATES
    return False
