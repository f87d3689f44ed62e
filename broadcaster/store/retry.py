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


RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03"})
"""PostgreSQL's errors that a later try may get past: a serialization failure or deadlock
(40001, 40P01), a lock not available or a statement cancelled or timed out (55P03, 57014),
the server shutting down, crashing or starting up (57P01-57P03)."""

RETRYABLE_SQLSTATE_CLASSES = frozenset({"08", "53"})
"""Whole classes of them: connection exceptions (08) and insufficient resources (53: too
many connections, out of memory or disk)."""


def store_transient(exc: BaseException) -> bool:
    """Whether writing again may succeed where ``exc`` stopped it: the store unreachable
    (:func:`store_unreachable`), a timeout, or a PostgreSQL error of the store's state
    rather than the statement's (:data:`RETRYABLE_SQLSTATES`; asyncpg's arrive as plain
    ``DBAPIError`` with their SQLSTATE)."""
    if store_unreachable(exc) or isinstance(exc, TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if isinstance(code, str):
            return code in RETRYABLE_SQLSTATES or code[:2] in RETRYABLE_SQLSTATE_CLASSES
    return False
