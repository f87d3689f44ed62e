"""The garbage collector's settings for a long-running daemon process.

CPython's cyclic collector runs a young-generation pass every 700 net allocations of
container objects, and now and then a full pass over every tracked object. A daemon holds
hundreds of thousands of them from its start (SQLAlchemy's mappers and compiled-statement
cache, pydantic's validators, Jinja's templates, the web app) that never become garbage,
yet each full pass walks them all again: on a 20,000-delivery push round the collector took
about 1.2 s of CPU, 11-17 % of the dispatcher's, almost all of it in those full passes
(docs/performance.md).

:func:`settle` is called once a process has built everything it keeps: it collects what
start-up left behind, then freezes every surviving object into the collector's permanent
generation (``gc.freeze``), which later passes skip, and raises the young generation's
threshold so that a batch's hundreds of short-lived objects are not scanned several times
over. Cycles made after that are still collected as before; what stays out of reach is
only a cycle among objects that were alive at the freeze and are dropped later (the
start-up rules after a reload, say): memory that start-up already held, kept once, never
a growing leak, since everything made after the freeze is collected as usual.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Net allocations of container objects between two young-generation passes (CPython's
default is 700)."""


def settle() -> int:
    """Collect, freeze what survives, and raise the young generation's threshold (never
    lower it). Objects an earlier call froze are thawed first, so that a process which
    starts several daemons one after another (the tests) does not keep the earlier ones'
    garbage for good. Returns how many objects are frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
    return gc.get_freeze_count()
