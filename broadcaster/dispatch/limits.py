"""Rate limits: a token bucket per provider account, so the daemon never outruns a provider.

The bucket paces sends in real (monotonic) time: it is about the provider's clock, not the
incident's, so it takes its own ``monotonic`` and ``sleep`` (tests pass fakes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta

from broadcaster.config.settings import RateLimit

_EPSILON = 1e-9  # float refills can land a hair under 1.0; never spin on that


class TokenBucket:
    def __init__(
        self,
        per_second: float,
        burst: int = 1,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = per_second
        self.capacity = float(burst)
        self._tokens = float(burst)
        self._monotonic = monotonic
        self._sleep = sleep
        self._last = monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self, units: int = 1) -> float:
        """Wait for ``units`` tokens (a message of three SMS segments costs three); returns
        the seconds waited. A message costing more than the burst waits for a full bucket
        and leaves it owing the rest, which the next sends wait out."""
        waited = 0.0
        wanted = min(float(units), self.capacity)
        async with self._lock:
            self._refill()
            while self._tokens < wanted - _EPSILON:
                pause = (wanted - self._tokens) / self.rate
                await self._sleep(pause)
                waited += pause
                self._refill()
            self._tokens = (
                self._tokens - units if units > wanted else max(self._tokens - units, 0.0)
            )
        return waited


def per_process(limits: Mapping[str, RateLimit], processes: int) -> dict[str, RateLimit]:
    """Each dispatch process's share of the limits: a provider account's rate is split
    evenly between the daemon's ``processes`` (``delivery.processes``), each with its own
    bucket, so that together they never go faster than the account's rate. Each keeps a
    burst of at least one message, so with a burst smaller than ``processes`` up to
    ``processes`` messages can leave at once at the start."""
    return {
        name: RateLimit(
            per_second=limit.per_second / processes, burst=max(1, limit.burst // processes)
        )
        for name, limit in limits.items()
    }


class Limits:
    """The buckets of all rate-limited channels; channels without a limit pass freely."""

    def __init__(self, limits: Mapping[str, RateLimit]) -> None:
        self._buckets = {
            name: TokenBucket(limit.per_second, limit.burst) for name, limit in limits.items()
        }

    async def acquire(self, channel: str, units: int = 1) -> float:
        bucket = self._buckets.get(channel)
        return await bucket.acquire(units) if bucket is not None else 0.0


PACE_AHEAD = timedelta(seconds=2)
"""How far ahead of its rate a claim takes a rate-limited channel's deliveries; the rest are
put back with the time the rate will reach them (see :class:`Pacer`)."""


class Pacer:
    """Keeps a rate-limited channel's backlog from holding up the other channels.

    Claims take due deliveries in time order, and a worker's batch is done when its slowest
    send is: with SMS at 1 message/s, a batch holding 50 SMS holds its e-mails too, and
    every worker ends up waiting on the SMS rate. So a claim keeps a limited channel's
    deliveries only as far as its rate sends them within :data:`PACE_AHEAD`; each of the
    others is put back, due when the rate reaches it (one slot per message, after the last
    slot given out), and marked so: when it falls due it is taken as it stands, its slot
    being reserved. The claims meanwhile reach the other channels' deliveries."""

    def __init__(self, limits: Mapping[str, RateLimit], ahead: timedelta = PACE_AHEAD) -> None:
        self._rates = {name: limit.per_second for name, limit in limits.items()}
        self._ahead = ahead
        self._slots: dict[str, datetime] = {}
        self._units: dict[str, float] = {}
        """Per channel, what a message has cost of the rate lately (SMS: segments): the
        slots are that far apart."""

    def observe(self, channel: str, units: int) -> None:
        """A message of ``channel`` cost ``units`` (a moving average: messages of a round
        are alike)."""
        if channel in self._rates:
            seen = self._units.get(channel)
            self._units[channel] = units if seen is None else seen + (units - seen) / 10

    def __bool__(self) -> bool:
        return bool(self._rates)

    def later(self, due: Sequence[tuple[str, bool]], now: datetime) -> dict[int, datetime]:
        """For a claim's due deliveries, in claim order, (channel, put back before): the
        positions to put back, with when each is due again."""
        back: dict[int, datetime] = {}
        for position, (channel, reserved) in enumerate(due):
            rate = self._rates.get(channel)
            if rate is None or reserved:
                continue
            slot = max(self._slots.get(channel, now), now)
            step = min(self._units.get(channel, 1.0) / rate, LONGEST_SLOT)
            self._slots[channel] = min(slot + timedelta(seconds=step), now + FURTHEST_SLOT)
            if slot > now + self._ahead:
                back[position] = slot
        return back


LONGEST_SLOT = 3600.0
"""Seconds: a slot longer than this (a rate of almost nothing) is cut to it."""

FURTHEST_SLOT = timedelta(days=1)
"""Slots are not given out further ahead than this: the rest wait at its end."""
