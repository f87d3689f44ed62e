"""Durations as people write them in YAML: ``90s``, ``15m``, ``2h``, ``1h30m``, ``500ms``.

The spelling is the rule language's (:mod:`rules.durations`), so a duration reads the same in
``config.yaml`` and in a rules file; this module adds what YAML values need (numbers,
booleans, timedeltas) and the pydantic type.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

from rules.durations import format_duration
from rules.durations import parse_duration as parse_text


def parse_duration(value: object) -> timedelta:
    """Parse a duration; bare numbers are seconds. Raises ``ValueError`` with a hint."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration is expected, not true/false")
    try:
        if isinstance(value, int | float):
            if value < 0:
                raise ValueError("a duration cannot be negative")
            return timedelta(seconds=value)
    except OverflowError:
        # timedelta caps at 999999999 days; pydantic only turns ValueError into a located error.
        raise ValueError(f"duration {value!r} is too long") from None
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r} (write e.g. 90s, 15m, 2h)")
    return parse_text(value)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]

__all__ = ["Duration", "format_duration", "parse_duration"]


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be more than 0s")
    return value


def _a_lease(value: timedelta) -> timedelta:
    if value < timedelta(seconds=1):
        raise ValueError(
            "must be at least 1s: a lease that ends before its work can finish hands that "
            "work to another worker while it is still being done (sent twice)"
        )
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
"""A duration that must be more than zero (an interval, a cadence)."""
LeaseDuration = Annotated[Duration, AfterValidator(_a_lease)]
"""A lease: at least a second."""
