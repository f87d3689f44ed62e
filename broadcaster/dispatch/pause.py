"""Channel pauses: a provider that says the sender is over its rate pauses the channel, or
the part of it its answer is about.

A channel's ``DeliveryError`` with ``throttled`` set (an account's 429, a project's quota,
a sender's full queue: see each channel's module) says that every other message of the
channel would be refused alike. With a ``throttled_scope`` too, it says so of the channel's
messages in that scope only: a channel that reaches several receivers (Web Push's push
services, a webhook's customers' own hosts) names the refusing receiver's origin, and the
other receivers' messages go on. The throttled message itself is retried later, its attempt
counted, as any retryable failure; :class:`ChannelPauses` also holds the channel's (or the
scope's) other sends until the provider's ``Retry-After`` (or :data:`DEFAULT_PAUSE`, growing
by :data:`PAUSE_GROWTH` while the throttles go on, at most :data:`LONGEST_PAUSE`). Pauses,
their streaks and lengths are kept per (channel, scope), the scope :data:`WHOLE` for the
whole channel; a message is held by its channel's whole pause and by its scope's, whichever
lasts longer. What the dispatcher does with a message held (wait briefly, or give it back to
the queue for the pause's end, its attempt not counted) is in
:class:`~broadcaster.dispatch.worker.Dispatcher`.

A claim leaves the due messages of a channel paused as a whole in the queue
(:meth:`ChannelPauses.paused`); a scoped pause's messages are claimed, as a claim does not
read addresses, and deferred at the send: the dispatcher finds the scope of each address of
a channel with a scoped pause on by the channel's ``pause_scope`` (the function the channel
names its throttles' scope with, :func:`channels.base.scope_of`).

Like the rate limit's bucket (:mod:`broadcaster.dispatch.limits`), a pause is measured in
real time, the provider's, with its own ``monotonic`` and ``sleep`` (tests pass fakes); the
wall-clock end it also keeps (from the daemon's clock) is where the messages given back are
due again. A pause is this process's own: each dispatch process learns of a throttle from
its own sends, as each has its own share of a rate limit. What ``/metrics`` shows of them
(:class:`PauseBoard`) is the daemon's, its extra dispatch processes' included: each reports
its board to the daemon (:mod:`broadcaster.dispatch.reports`).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

log = logging.getLogger("broadcaster.dispatch")

WHOLE: Final = ""
"""The scope of a pause of the whole channel (a throttle without ``throttled_scope``)."""

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

MAX_SCOPES: Final = 10_000
"""Scoped pauses a process keeps at most, over all channels: begun and not yet forgotten (a
pause is forgotten :data:`STREAK_RESET` after its end, its streak with it). A webhook
channel whose customers have 100,000 hosts keeps only the few throttling now; should more
than this many throttle within a few minutes, a further one begins no pause (its message
waits its own ``Retry-After``, as every message did before scoped pauses) and a warning
says so. Pauses of a whole channel are never refused: there are as few as channels."""

NAMED_SCOPES: Final = 20
"""Scopes of one channel that ``/metrics`` names (its push services; a webhook's first
throttling customer hosts); the channel's further scopes are counted together under
:data:`OTHER_SCOPES`, so that the series stay few however many hosts throttle."""

OTHER_SCOPES: Final = "other"
"""The metrics' ``scope`` of a channel's scopes beyond :data:`NAMED_SCOPES` (an origin, with
its ``://``, never reads so)."""


@dataclass(slots=True)
class Pause:
    """The latest pause of one channel, or of one scope of it."""

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
    scope: str = WHOLE
    """The part of the channel it holds (a receiver's origin); :data:`WHOLE` for all."""


Key = tuple[str, str]
"""(channel, scope) of a pause; the scope :data:`WHOLE` for the whole channel."""


@dataclass
class PauseBoard:
    """What ``/metrics`` shows of this process's channel pauses: counters that only grow,
    and each (channel, scope)'s latest pause end. A channel names at most
    :data:`NAMED_SCOPES` scopes here, the first to throttle; its further ones are counted
    under :data:`OTHER_SCOPES` (whose end is the latest of theirs): bounded, however many
    customer hosts throttle over a process's life."""

    pauses: dict[Key, int] = field(default_factory=dict)
    """Per (channel, scope), how many pauses began."""
    deferred: dict[Key, int] = field(default_factory=dict)
    """Per (channel, scope), how many messages a pause held back (not sent, attempt not
    counted)."""
    until: dict[Key, datetime] = field(default_factory=dict)
    """Per (channel, scope), when its latest pause ends (or ended)."""
    named: int = NAMED_SCOPES
    _names: dict[str, set[str]] = field(default_factory=dict, repr=False)

    def key(self, channel: str, scope: str = WHOLE) -> Key:
        """Where the board counts a pause of ``scope``: itself while the channel names fewer
        than :attr:`named` scopes (or already names it), else :data:`OTHER_SCOPES`."""
        if scope == WHOLE:
            return channel, WHOLE
        names = self._names.setdefault(channel, set())
        if scope not in names:
            if len(names) >= self.named:
                return channel, OTHER_SCOPES
            names.add(scope)
        return channel, scope

    def began(self, pause: Pause) -> None:
        key = self.key(pause.channel, pause.scope)
        self.pauses[key] = self.pauses.get(key, 0) + 1
        self._ending(key, pause)

    def extended(self, pause: Pause) -> None:
        self._ending(self.key(pause.channel, pause.scope), pause)

    def held_back(self, channel: str, count: int = 1, scope: str = WHOLE) -> None:
        key = self.key(channel, scope)
        self.deferred[key] = self.deferred.get(key, 0) + count

    def _ending(self, key: Key, pause: Pause) -> None:
        if key[1] == OTHER_SCOPES:  # several scopes' pauses: the latest end of theirs
            self.until[key] = max(self.until.get(key, pause.until_at), pause.until_at)
        else:
            self.until[key] = pause.until_at

    def absorb(self, other: PauseBoard) -> None:
        """Add ``other``'s counts to this board's, and keep the later of each pause end:
        several processes' boards as one. Its scopes are named here as they would be had
        they throttled here (``other``'s :data:`OTHER_SCOPES` stays so)."""
        for counts, into in ((other.pauses, self.pauses), (other.deferred, self.deferred)):
            for (channel, scope), count in counts.items():
                key = self._merged_key(channel, scope)
                into[key] = into.get(key, 0) + count
        for (channel, scope), at in other.until.items():
            key = self._merged_key(channel, scope)
            self.until[key] = max(self.until.get(key, at), at)

    def _merged_key(self, channel: str, scope: str) -> Key:
        return (channel, OTHER_SCOPES) if scope == OTHER_SCOPES else self.key(channel, scope)

    def snapshot(self) -> bytes:
        """The board as JSON, as a dispatch process reports it to its daemon."""
        return json.dumps(
            {
                "pauses": [[c, s, n] for (c, s), n in self.pauses.items()],
                "deferred": [[c, s, n] for (c, s), n in self.deferred.items()],
                "until": [[c, s, at.timestamp()] for (c, s), at in self.until.items()],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_snapshot(cls, data: bytes) -> PauseBoard:
        """The board a :meth:`snapshot` describes; ValueError, saying what is wrong where,
        for anything else."""
        try:
            found = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"pause report: not JSON: {exc}") from None
        if not isinstance(found, dict) or set(found) != {"pauses", "deferred", "until"}:
            raise ValueError("pause report: want an object of pauses, deferred and until")
        board = cls()
        for name in ("pauses", "deferred"):
            into: dict[Key, int] = getattr(board, name)
            for n, (channel, scope, count) in enumerate(_entries(found, name)):
                if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                    raise ValueError(f"pause report: {name}[{n}]: count {count!r}")
                into[channel, scope] = count
        for n, (channel, scope, at) in enumerate(_entries(found, "until")):
            if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
                raise ValueError(f"pause report: until[{n}]: time {at!r}")
            try:
                board.until[channel, scope] = datetime.fromtimestamp(at, UTC)
            except (OverflowError, OSError, ValueError):
                raise ValueError(f"pause report: until[{n}]: time {at!r}") from None
        return board


def _entries(found: dict[str, Any], name: str) -> list[tuple[str, str, Any]]:
    """``found[name]``'s [channel, scope, value] entries, their names checked."""
    entries = found[name]
    if not isinstance(entries, list):
        raise ValueError(f"pause report: {name}: want a list")
    out = []
    for n, entry in enumerate(entries):
        if (
            not isinstance(entry, list)
            or len(entry) != 3
            or not isinstance(entry[0], str)
            or not isinstance(entry[1], str)
        ):
            raise ValueError(f"pause report: {name}[{n}]: want [channel, scope, value]")
        out.append((entry[0], entry[1], entry[2]))
    return out


BOARD = PauseBoard()
"""This process's board, read by ``/metrics`` (:mod:`broadcaster.web.metrics`)."""


class ChannelPauses:
    """The pauses of one dispatcher's channels, and of the scopes of them.

    ``active`` maps each channel with a pause on to its paused scopes (:data:`WHOLE` for the
    whole channel), each to its pause's end (``monotonic``), and is empty when none is
    paused: a send's check is ``if pauses.active`` and nothing more, the push fan-out's
    thousands a second included.

    Nothing is kept without bound, a customer base of 100,000 webhook hosts included: an
    ended pause leaves ``active`` at the next look at any pause (a heap of the pauses' ends,
    oldest first, is popped up to now: no scan), and is forgotten, with its streak,
    :data:`STREAK_RESET` after its end (a second heap), when a new throttle would start a
    new streak anyway. What is kept is the scopes throttling within the last few minutes,
    at most :data:`MAX_SCOPES` (see there); the board's series are bounded apart
    (:class:`PauseBoard`)."""

    __slots__ = (
        "_default",
        "_ends",
        "_forget",
        "_growth",
        "_last",
        "_longest",
        "_max_scopes",
        "_monotonic",
        "_reset",
        "_scoped",
        "active",
        "board",
        "crowded",
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
        max_scopes: int = MAX_SCOPES,
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
        if isinstance(max_scopes, bool) or not isinstance(max_scopes, int) or max_scopes < 0:
            raise ValueError(
                f"channel pause: max_scopes must be a non-negative int, not {max_scopes!r}"
            )
        self._monotonic = monotonic
        self.sleep = sleep
        """Waits out a short pause (the dispatcher's hold), on the same clock."""
        self._default = default
        self._growth = growth
        self._longest = longest
        self._reset = reset
        self._max_scopes = max_scopes
        self.board = BOARD if board is None else board
        self.active: dict[str, dict[str, float]] = {}
        self._last: dict[Key, Pause] = {}
        """Per (channel, scope), its latest pause, ended or not (the streak lives on in it),
        until it is forgotten."""
        self._ends: list[tuple[float, str, str]] = []
        """A heap: for each entry of ``active``, one (end, channel, scope), at the end it
        had when it was pushed (made longer since, it is pushed again when popped)."""
        self._forget: list[tuple[float, str, str]] = []
        """A heap: for each entry of ``_last``, one (when it may be forgotten, channel,
        scope), likewise."""
        self._scoped = 0
        """Entries of ``_last`` with a scope: what :data:`MAX_SCOPES` bounds."""
        self.crowded = 0
        """Scoped throttles that began no pause: :data:`MAX_SCOPES` were kept already."""

    def _expire(self) -> float:
        """Drop the pauses ended by now from ``active``, and forget those ended more than
        :data:`STREAK_RESET` ago; returns now (``monotonic``). Pops the heaps up to now
        only: nothing to do costs one comparison."""
        at = self._monotonic()
        ends = self._ends
        while ends and ends[0][0] <= at:
            _, channel, scope = heapq.heappop(ends)
            scopes = self.active.get(channel)
            until = None if scopes is None else scopes.get(scope)
            if until is None or scopes is None:  # cannot happen: one entry each
                continue
            if until > at:  # made longer since: its new end
                heapq.heappush(ends, (until, channel, scope))
                continue
            del scopes[scope]
            if not scopes:
                del self.active[channel]
        forget = self._forget
        while forget and forget[0][0] < at:
            _, channel, scope = heapq.heappop(forget)
            last = self._last.get((channel, scope))
            if last is None:  # cannot happen: one entry each
                continue
            until = last.until + self._reset
            if until >= at:  # a later pause of it, or made longer: not yet
                heapq.heappush(forget, (until, channel, scope))
                continue
            del self._last[channel, scope]
            if scope != WHOLE:
                self._scoped -= 1
        return at

    @property
    def kept(self) -> int:
        """Pauses remembered: on, or ended within :data:`STREAK_RESET` (their streak)."""
        return len(self._last)

    def scoped(self, channel: str) -> bool:
        """Whether ``channel`` has a pause of a scope on (or one just ended, not yet looked
        at): then the scope of each of its messages' addresses is to be found, for
        :meth:`holding`."""
        scopes = self.active.get(channel)
        return scopes is not None and len(scopes) > (WHOLE in scopes)

    def holding(self, channel: str, scope: str = WHOLE) -> Pause | None:
        """The pause that holds a message of ``channel`` whose address is in ``scope`` now:
        the channel's whole pause or the scope's, whichever lasts longer; None when
        neither is on. ``scope`` :data:`WHOLE`: the whole channel's only."""
        self._expire()
        scopes = self.active.get(channel)
        if scopes is None:
            return None
        whole = self._last[channel, WHOLE] if WHOLE in scopes else None
        if scope == WHOLE or scope not in scopes:
            return whole
        part = self._last[channel, scope]
        return whole if whole is not None and whole.until >= part.until else part

    def remaining(self, channel: str, scope: str = WHOLE) -> float:
        """Seconds a message of ``channel`` in ``scope`` stays held (:meth:`holding`); 0.0
        when it is not (an ended pause leaves ``active`` here)."""
        return self.left(self.holding(channel, scope))

    def left(self, pause: Pause | None) -> float:
        """Seconds ``pause`` lasts from now; 0.0 for none, or one ended."""
        return 0.0 if pause is None else max(pause.until - self._monotonic(), 0.0)

    def until_at(self, channel: str, scope: str = WHOLE) -> datetime | None:
        """When the pause that holds a message of ``channel`` in ``scope`` ends on the
        daemon's clock, while one does."""
        pause = self.holding(channel, scope)
        return None if pause is None else pause.until_at

    def paused(self) -> dict[str, datetime]:
        """Every channel paused as a whole now, with when its pause ends on the daemon's
        clock (for a claim to leave their messages in the queue). Not the channels with a
        scope paused: a claim does not read addresses; their messages are claimed, and
        deferred at the send."""
        self._expire()
        return {
            channel: self._last[channel, WHOLE].until_at
            for channel, scopes in self.active.items()
            if WHOLE in scopes
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
        self,
        channel: str,
        retry_after: float | None,
        reason: str,
        now: datetime,
        scope: str = WHOLE,
    ) -> Pause | None:
        """The provider throttled ``channel``, or the part of it in ``scope`` (``now``: the
        daemon's clock). Returns the pause that begins, to be logged once; None when that
        was paused already (the answers of sends already on the wire when it began,
        hundreds in a fan-out): then the pause only lasts longer if this answer asks for
        more, and the streak does not grow. None too, and no pause, for a new scope when
        :data:`MAX_SCOPES` are kept already (:attr:`crowded` counts them)."""
        if not channel:
            raise ValueError("channel pause: a channel name is required")
        at = self._expire()
        key = (channel, scope)
        last = self._last.get(key)
        if last is not None and at < last.until:
            if retry_after is not None and retry_after > 0:
                seconds = self.length(retry_after, last.streak)
                if at + seconds > last.until:
                    last.until = at + seconds
                    last.seconds = seconds
                    last.until_at = now + timedelta(seconds=seconds)
                    self.active[channel][scope] = last.until
                    self.board.extended(last)
            return None
        if last is None and scope != WHOLE and self._scoped >= self._max_scopes:
            self.crowded += 1
            if self.crowded == 1 or self.crowded % 1000 == 0:
                log.warning(
                    "channel %s: %d scoped pauses are kept already; %s is not paused",
                    channel,
                    self._scoped,
                    scope,
                    extra={"channel": channel, "scope": scope, "crowded": self.crowded},
                )
            return None
        streak = 1
        if last is not None and at <= last.until + self._reset:
            streak = last.streak + 1
        seconds = self.length(retry_after, streak)
        pause = Pause(
            channel=channel,
            until=at + seconds,
            until_at=now + timedelta(seconds=seconds),
            seconds=seconds,
            streak=streak,
            reason=reason,
            scope=scope,
        )
        if last is None:  # one entry each in the heap: a later pause of it is pushed again
            heapq.heappush(self._forget, (pause.until + self._reset, channel, scope))
            if scope != WHOLE:
                self._scoped += 1
        self._last[key] = pause
        self.active.setdefault(channel, {})[scope] = pause.until
        heapq.heappush(self._ends, (pause.until, channel, scope))
        self.board.began(pause)
        return pause
