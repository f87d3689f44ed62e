"""Rate limits: a token bucket per provider account, so the daemon never outruns a provider.

The bucket paces sends in real (monotonic) time: it is about the provider's clock, not the
incident's, so it takes its own ``monotonic`` and ``sleep`` (tests pass fakes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

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

    async def acquire(self) -> float:
        """Wait for one token; returns the seconds waited."""
        waited = 0.0
        async with self._lock:
            self._refill()
            while self._tokens < 1.0 - _EPSILON:
                pause = (1.0 - self._tokens) / self.rate
                await self._sleep(pause)
                waited += pause
                self._refill()
            self._tokens = max(self._tokens - 1.0, 0.0)
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

    async def acquire(self, channel: str) -> float:
        bucket = self._buckets.get(channel)
        return await bucket.acquire() if bucket is not None else 0.0
