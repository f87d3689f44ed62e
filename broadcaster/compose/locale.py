"""Times and languages as each customer reads them (Babel for the words, zoneinfo for zones)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_datetime


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """The customer's zone; UTC when the name is unknown (import validates names)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@lru_cache(maxsize=256)
def locale(language: str) -> Locale:
    try:
        return Locale.parse(language.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return Locale.parse("en")


def format_when(
    when: datetime, zone_name: str, language: str, now: datetime, *, ahead: bool = False
) -> str:
    """``09:15 CET``; ``di 6 jan 09:15 CET`` when it is not today in that zone, with the
    year (``wo 6 jan 2027 12:00 CET``) when it is not this year.

    To the minute: "by 04:33:44" (a follow-up due two hours after a declaration made at
    02:33:44) is not a time people read. A time ``ahead`` (a promise, a deadline, an
    expected resolution) is rounded up, so that what was promised "by 04:34" is kept; one
    that has happened (when an update was posted) is cut to its minute, never later than it
    was. The zone's own abbreviation is used, not Babel's, whose short names vary by locale.
    """
    tz: tzinfo = zone(zone_name)
    if when.second or when.microsecond:
        when = when.replace(second=0, microsecond=0)
        if ahead:
            with contextlib.suppress(OverflowError):
                when += timedelta(minutes=1)
    try:
        local = when.astimezone(tz)
    except OverflowError:  # within hours of the calendar's end (9999-12-31): say it in UTC
        tz, local = UTC, when.astimezone(UTC)
    pattern = "HH:mm"
    today = now.astimezone(tz).date()
    if local.date() != today:
        pattern = "EEE d MMM " + pattern
        if local.year != today.year:  # "Wed 6 Jan" of another year would read as this one's
            pattern = "EEE d MMM y " + pattern[len("EEE d MMM ") :]
    text = format_datetime(local, pattern, tzinfo=tz, locale=locale(language))
    return f"{text} {_zone_label(local.tzname() or zone_name)}"


def _zone_label(name: str) -> str:
    """A zone's abbreviation as people read it: ``+04`` and ``-0330`` (zones without a
    lettered one, Dubai's, São Paulo's) as ``UTC+4`` and ``UTC-3:30``."""
    if len(name) < 3 or name[0] not in "+-" or not name[1:].isdigit():
        return name
    hours, minutes = int(name[1:3]), int(name[3:5] or 0)
    return f"UTC{name[0]}{hours}" + (f":{minutes:02d}" if minutes else "")
