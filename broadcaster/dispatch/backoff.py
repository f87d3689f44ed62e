"""Retry timing, pure: exponential backoff with jitter, capped; a provider's retry-after wins."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Protocol


def retry_delay(
    attempt: int,
    *,
    initial: timedelta,
    maximum: timedelta,
    multiplier: float,
    jitter: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> timedelta:
    """Delay before the next try after ``attempt`` failed tries (``attempt`` >= 1).

    The base grows ``initial * multiplier**(attempt-1)`` up to ``maximum``; jitter spreads
    it uniformly by ±``jitter`` so that a burst of failures does not retry in lockstep. A
    ``retry_after`` from the provider is a floor, never shortened by jitter.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    base = initial.total_seconds() * multiplier ** (attempt - 1)
    base = min(base, maximum.total_seconds())
    spread = (rng or random.Random()).uniform(-jitter, jitter)  # noqa: S311 - not crypto
    delay = max(base * (1 + spread), 0.0)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return timedelta(seconds=delay)


class Backoff(Protocol):
    """The settings :func:`retry_delay` reads (``delivery.backoff``)."""

    initial: timedelta
    maximum: timedelta
    multiplier: float
    jitter: float


def delay_after(
    attempt: int,
    backoff: Backoff,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> timedelta:
    """:func:`retry_delay` with the configured ``backoff``."""
    return retry_delay(
        attempt,
        initial=backoff.initial,
        maximum=backoff.maximum,
        multiplier=backoff.multiplier,
        jitter=backoff.jitter,
        retry_after=retry_after,
        rng=rng,
    )
