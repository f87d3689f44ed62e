"""Retry timing, pure: exponential backoff with jitter, capped; a provider's retry-after wins."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from typing import Final, Protocol

MAX_RETRY_AFTER: Final = timedelta(days=1)
"""The longest a provider's ``retry_after`` delays a retry: one of 10**14 seconds (any
receiver may send it, a customer's own webhook URL included) overflowed the retry's date."""


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
    ``retry_after`` from the provider is a floor, never shortened by jitter, up to
    :data:`MAX_RETRY_AFTER` (a provider's wait is not trusted to be sane).
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    base = initial.total_seconds() * multiplier ** (attempt - 1)
    base = min(base, maximum.total_seconds())
    spread = (rng or random.Random()).uniform(-jitter, jitter)  # noqa: S311 - not crypto
    delay = max(base * (1 + spread), 0.0)
    if retry_after is not None and not math.isnan(retry_after):
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER.total_seconds()))
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
