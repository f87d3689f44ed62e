"""How a claimed batch's sends reach their channels: all at once for an HTTP channel
(:class:`Starting`), a few per connection at a time for a pooled one (:data:`SENDS_AHEAD`).
"""

from __future__ import annotations

import asyncio

SENDS_AHEAD = 2
"""For a channel that declares its ``concurrency`` (the email channel's pool), how many
sends per connection a dispatcher prepares at once: one on the wire and one rendered and
waiting. A worker's batch used to be rendered all at once, 200 messages for 4 SMTP
connections; their replies waited behind it, and the relay sat idle a fifth of the time.
Prepared just ahead, rendering interleaves with the replies (docs/performance.md, tenth
round)."""


class Starting:
    """Holds a batch's sends on channels without a declared concurrency until every one of
    them has made its message (or given up): then they are handed to their channels one
    after another.

    Handed over as each was made, one every few dozen microseconds, each request woke the
    HTTP client's runtime thread (pyreqwest's) on its own, and with the daemon on one core
    each wake was a switch between threads and back: within the pipeline that thread cost
    twice what it costs a request when the same client sends back to back. Handed over
    together, the thread wakes once for many. Alternating pipeline rounds: push 9-19 % more
    a second on SQLite and 0-6 % on PostgreSQL, SMS 20-42 %; that thread's CPU a delivery
    down by a sixth to a third (docs/performance.md, sixteenth round). The first message of
    a batch waits for the batch's rendering, a few milliseconds. A gated channel's sends
    (the email pool: :data:`SENDS_AHEAD`) do not wait here: only a few of them are made at
    a time."""

    __slots__ = ("_arrived", "_count", "_open")

    def __init__(self, count: int) -> None:
        self._count = count
        self._arrived: set[int] = set()
        self._open = asyncio.Event()
        if count <= 0:
            self._open.set()

    def arrive(self, delivery_id: int) -> None:
        """The send of ``delivery_id`` has made its message, or will not send; again for
        the same delivery, nothing. The last of the batch opens the way."""
        if delivery_id not in self._arrived:
            self._arrived.add(delivery_id)
            if len(self._arrived) >= self._count:
                self._open.set()

    async def ready(self, delivery_id: int) -> None:
        """Arrive, and wait until every send of the batch has."""
        self.arrive(delivery_id)
        await self._open.wait()
