"""Channel pauses: a provider that says the sender is over its rate pauses the whole channel.

A channel's ``DeliveryError`` with ``throttled`` set (an account's 429, a project's quota,
a sender's full queue: see each channel's module) says that every other message of the
channel would be refused alike. The throttled message itself is retried later, its attempt
counted, as any retryable failure; :class:`ChannelPauses` also holds the channel's other
sends until the provider's ``Retry-After`` (or :data:`DEFAULT_PAUSE`, growing by
:data:`PAUSE_GROWTH` while the throttles go on, at most :data:`LONGEST_PAUSE`). What the
dispatcher does with a message of a paused channel (wait briefly, or give it back to the
queue for the pause's end, its attempt not counted) is in
:class:`~broadcaster.dispatch.worker.Dispatcher`.

Like the rate limit's bucket (:mod:`broadcaster.dispatch.limits`), a pause is measured in
real time, the provider's, with its own ``monotonic`` and ``sleep`` (tests pass fakes); the
wall-clock end it also keeps (from the daemon's clock) is where the messages given back are
due again. A pause is this process's own: each dispatch process learns of a throttle from
its own sends, as each has its own share of a rate limit.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

DEFAULT_PAUSE: Final = 5.0
"""Seconds a channel pauses when its provider throttled it without saying how long
(``Retry-After``): a few seconds, enough for a per-second or per-concurrency limit to pass."""

PAUSE_GROWTH: Final = 2.0
"""Each throttle without a ``Retry-After`` that follows a pause within
:data:`STREAK_RESET` pauses this many times longer than the last one (5 s, 10 s, 20 s, …):
a provider that still refuses after a pause is given longer to recover."""

LONGEST_PAUSE: Final = 300.0
"""Seconds a channel pauses at most, whatever the provider asked or the growth reached: a
``Retry-After`` of hours (any receiver may send one) must not hold a disruption notice
that long on this process's word alone. The throttled message keeps its own retry time
(:func:`~broadcaster.dispatch.backoff.retry_delay`, up to a day); a provider still
throttling after this pause throttles again, and pauses again."""

STREAK_RESET: Final = 60.0
"""Seconds after a pause's end beyond which the next throttle starts again from
:data:`DEFAULT_PAUSE`: the provider had recovered meanwhile."""

HOLD_AT_MOST: Final = 1.0
"""Seconds of a pause a claimed message waits out in place, its lease kept; a longer pause
gives it back to the queue, due at the pause's end (see
:meth:`~broadcaster.dispatch.worker.Dispatcher.run_once`). Short, because a batch waiting
holds its worker, and with it the claims of every other channel; never more than a quarter
of the lease (the dispatcher takes the smaller)."""


@dataclass(slots=True)
class Pause:
    """One channel's latest pause."""

    channel: str
    until: float
    """When it ends, on the pauses' ``monotonic`` clock."""
    until_at: datetime
    """When it ends, on the daemon's clock: when the messages given back are due again."""
    seconds: float
    """How long it was when it began (or was last made longer)."""
    streak: int
    """How many pauses in a row (each within :data:`STREAK_RESET` of the last) led to it."""
    reason: str
    """The provider's answer that began it."""


@dataclass
class PauseBoard:
    """What ``/metrics`` shows of this process's channel pauses: counters that only grow,
    and each channel's latest pause end."""

    pauses: dict[str, int] = field(default_factory=dict)
    """Per channel, how many pauses began."""
    deferred: dict[str, int] = field(default_factory=dict)
    """Per channel, how many messages a pause held back (not sent, attempt not counted)."""
    until: dict[str, datetime] = field(default_factory=dict)
    """Per channel, when its latest pause ends (or ended)."""

    def began(self, pause: Pause) -> None:
        self.pauses[pause.channel] = self.pauses.get(pause.channel, 0) + 1
        self.until[pause.channel] = pause.until_at

    def extended(self, pause: Pause) -> None:
        self.until[pause.channel] = pause.until_at

    def held_back(self, channel: str, count: int = 1) -> None:
        self.deferred[channel] = self.deferred.get(channel, 0) + count


BOARD = PauseBoard()
"""This process's board, read by ``/metrics`` (:mod:`broadcaster.web.metrics`)."""


class ChannelPauses:
    """The pauses of one dispatcher's channels.

    ``active`` maps each paused channel to its pause's end (``monotonic``) and is empty
    when none is paused: a send's check is ``if pauses.active`` and nothing more, the push
    fan-out's thousands a second included. Expired entries leave it at the next look."""

    __slots__ = (
        "_default",
        "_growth",
        "_last",
        "_longest",
        "_monotonic",
        "_reset",
        "active",
        "board",
        "sleep",
    )

    def __init__(
        self,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        default: float = DEFAULT_PAUSE,
        growth: float = PAUSE_GROWTH,
        longest: float = LONGEST_PAUSE,
        reset: float = STREAK_RESET,
        board: PauseBoard | None = None,
    ) -> None:
        if not (math.isfinite(default) and default > 0):
            raise ValueError(
                f"channel pause: default must be a positive number of seconds, not {default!r}"
            )
        if not (math.isfinite(growth) and growth >= 1):
            raise ValueError(f"channel pause: growth must be at least 1, not {growth!r}")
        if not (math.isfinite(longest) and longest >= default):
            raise ValueError(
                f"channel pause: longest ({longest!r}) must be finite and at least the "
                f"default ({default!r})"
            )
        if not (math.isfinite(reset) and reset >= 0):
            raise ValueError(
                "channel pause: reset must be a finite, non-negative number of "
                f"seconds, not {reset!r}"
            )
        self._monotonic = monotonic
        self.sleep = sleep
        """Waits out a short pause (the dispatcher's hold), on the same clock."""
        self._default = default
        self._growth = growth
        self._longest = longest
        self._reset = reset
        self.board = BOARD if board is None else board
        self.active: dict[str, float] = {}
        self._last: dict[str, Pause] = {}
        """Per channel, its latest pause, ended or not (the streak lives on in it)."""

    def remaining(self, channel: str) -> float:
        """Seconds ``channel`` stays paused; 0.0 when it is not (an ended pause leaves
        ``active`` here)."""
        until = self.active.get(channel)
        if until is None:
            return 0.0
        left = until - self._monotonic()
        if left <= 0:
            del self.active[channel]
            return 0.0
        return left

    def until_at(self, channel: str) -> datetime | None:
        """When ``channel``'s pause ends on the daemon's clock, while it is paused."""
        if self.remaining(channel) <= 0:
            return None
        return self._last[channel].until_at

    def paused(self) -> dict[str, datetime]:
        """Every channel paused now, with when its pause ends on the daemon's clock (for a
        claim to leave their messages in the queue)."""
        return {
            channel: self._last[channel].until_at
            for channel in list(self.active)
            if self.remaining(channel) > 0
        }

    def length(self, retry_after: float | None, streak: int) -> float:
        """Seconds the ``streak``-th pause in a row lasts: the provider's ``retry_after``
        when it gave a usable one, else :data:`DEFAULT_PAUSE` grown per pause in the
        streak; at most :data:`LONGEST_PAUSE` either way."""
        if streak < 1:
            raise ValueError(f"channel pause: streak counts from 1, not {streak!r}")
        if retry_after is not None and retry_after > 0:  # NaN and negatives: not usable
            return min(retry_after, self._longest)
        grown = self._default * self._growth ** min(streak - 1, 64)  # no float overflow
        return min(grown, self._longest)

    def throttled(
        self, channel: str, retry_after: float | None, reason: str, now: datetime
    ) -> Pause | None:
        """The provider throttled ``channel`` (``now``: the daemon's clock). Returns the
        pause that begins, to be logged once; None when the channel was paused already
        (the answers of sends already on the wire when it began, hundreds in a fan-out):
        then the pause only lasts longer if this answer asks for more, and the streak does
        not grow."""
        if not channel:
            raise ValueError("channel pause: a channel name is required")
        at = self._monotonic()
        last = self._last.get(channel)
        if last is not None and at < last.until:
            if retry_after is not None and retry_after > 0:
                seconds = self.length(retry_after, last.streak)
                if at + seconds > last.until:
                    last.until = at + seconds
                    last.seconds = seconds
                    last.until_at = now + timedelta(seconds=seconds)
                    self.active[channel] = last.until
                    self.board.extended(last)
            return None
        streak = 1
        if last is not None and at - last.until <= self._reset:
            streak = last.streak + 1
        seconds = self.length(retry_after, streak)
        pause = Pause(
            channel=channel,
            until=at + seconds,
            until_at=now + timedelta(seconds=seconds),
            seconds=seconds,
            streak=streak,
            reason=reason,
        )
        self._last[channel] = pause
        self.active[channel] = pause.until
        self.board.began(pause)
        return pause
