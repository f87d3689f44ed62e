"""Durations as admins write them in rules: ``90s``, ``15m``, ``2h``, ``1h30m``, ``30d``.

A copy of the daemon's spelling (``rules`` never imports ``broadcaster``), without pydantic.
"""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> timedelta:
    """Parse ``1h30m``; a bare number is seconds. Raises ``ValueError`` with a hint."""
    compact = text.strip().replace(" ", "")
    try:
        if re.fullmatch(r"\d+(?:\.\d+)?", compact):
            return timedelta(seconds=float(compact))
        pos = 0
        total = timedelta()
        for match in _PART.finditer(compact):
            if match.start() != pos:
                break
            total += timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
            pos = match.end()
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long") from None
    if not compact or pos != len(compact):
        raise ValueError(f"invalid duration {text!r} (write e.g. 90s, 15m, 2h, 1h30m, 30d)")
    return total


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
