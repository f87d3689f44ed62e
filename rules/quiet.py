"""Quiet hours: when a non-critical update to a customer may go out, in their local time."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, tzinfo

from rules.facts import _aware, zone
from rules.schema import QuietHours

NEVER_HELD = frozenset({"critical"})
"""Severities whose updates go out at any hour."""


def in_window(quiet_hours: QuietHours, local: time) -> bool:
    """Whether a local wall-clock time is inside ``[start, end)``, across midnight too."""
    start, end = quiet_hours.start, quiet_hours.end
    if start < end:
        return start <= local < end
    return local >= start or local < end


def hold_until(
    quiet_hours: QuietHours | None, customer_tz: str | tzinfo, now: datetime, severity: str
) -> datetime | None:
    """When a held update may go out: the end of the quiet window the customer's local time
    is in, or ``None`` to send now (no quiet hours, a critical incident, or outside the
    window). The result is in ``now``'s time zone and always later than ``now``.

    Wall-clock rules: a window end that does not exist on a spring-forward night is taken as
    the moment the clocks jump over it; on a fall-back night the end is its first occurrence
    still ahead of ``now``. ``ValueError`` for a naive ``now`` or an unknown zone name.
    """
    _aware("now", now)
    if quiet_hours is None or severity in NEVER_HELD:
        return None
    tz = zone(customer_tz) if isinstance(customer_tz, str) else customer_tz
    try:
        return _hold(quiet_hours, tz, now)
    except OverflowError:  # within a day of the end of the calendar: nothing to wait for
        return None


def _hold(quiet_hours: QuietHours, tz: tzinfo, now: datetime) -> datetime | None:
    # In UTC throughout: times of one zone compare by wall clock, not by instant.
    at = now.astimezone(UTC)
    held = False
    # Usually one step; a second when a clock change lands the window's end inside it again.
    for _ in range(3):
        local = at.astimezone(tz)
        wall = local.time().replace(tzinfo=None, fold=0)
        if not in_window(quiet_hours, wall):
            break
        day = local.date() if wall < quiet_hours.end else local.date() + timedelta(days=1)
        opens = datetime.combine(day, quiet_hours.end)
        candidates = (_first_instant(opens, tz), opens.replace(tzinfo=tz, fold=1).astimezone(UTC))
        at = min((c for c in candidates if c > at), default=at + timedelta(days=1))
        held = True
    return at.astimezone(now.tzinfo) if held else None


def _first_instant(wall: datetime, tz: tzinfo) -> datetime:
    """The first instant (in UTC) at which the clock in ``tz`` reads ``wall`` or later."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    # ``wall`` falls in a gap (clocks jumped over it): find the jump between its two readings.
    low, high = sorted((first, wall.replace(tzinfo=tz, fold=1).astimezone(UTC)))
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    whole = high.replace(microsecond=0)
    return whole if whole.astimezone(tz).replace(tzinfo=None) >= wall else high
