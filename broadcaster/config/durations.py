"""Durations as people write them in YAML: ``90s``, ``15m``, ``2h``, ``1h30m``, ``500ms``."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


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
        if not isinstance(value, str):
            raise ValueError(f"invalid duration {value!r} (write e.g. 90s, 15m, 2h)")
        text = value.strip().replace(" ", "")
        pos = 0
        # Sum part by part as timedeltas: exact to the microsecond at any size ("1d0.5ms").
        total = timedelta()
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            total += timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
            pos = match.end()
        if not text or pos != len(text):
            raise ValueError(f"invalid duration {value!r} (write e.g. 90s, 15m, 2h, 1h30m)")
        return total
    except OverflowError:
        # timedelta caps at 999999999 days; pydantic only turns ValueError into a located error.
        raise ValueError(f"duration {value!r} is too long") from None


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of a duration, e.g. ``1h30m`` or ``1s500ms``."""
    if value < timedelta():
        return "-" + format_duration(-value)
    micros = value // timedelta(microseconds=1)
    seconds, micros = divmod(micros, 1_000_000)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    if micros:
        millis, rest = divmod(micros, 1000)
        parts.append(f"{millis}.{rest:03d}".rstrip("0") + "ms" if rest else f"{millis}ms")
    return "".join(parts) or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
