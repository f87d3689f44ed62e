"""Cadence and promise arithmetic, pure: when the next update is due, whether one was late."""

from __future__ import annotations

from datetime import datetime, timedelta


def next_due(now: datetime, cadence: timedelta) -> datetime:
    """The time the next round is promised for.

    With a cadence of a minute or more it is rounded *up* to the whole minute, so the
    "next update by 14:30" customers read is exactly the due time and never earlier
    than ``now + cadence`` minus nothing: the promise is never tighter than the cadence.
    """
    due = now + cadence
    if cadence >= timedelta(minutes=1) and (due.second or due.microsecond):
        due = due.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return due


def lateness(promised: datetime, kept_at: datetime) -> timedelta:
    """How late a promise was kept (zero or positive)."""
    return max(kept_at - promised, timedelta(0))


def is_late(promised: datetime, kept_at: datetime, grace: timedelta) -> bool:
    """A promise kept more than ``grace`` after its time counts as late."""
    return kept_at - promised > grace
