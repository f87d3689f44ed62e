"""``format_when`` at the ends of the calendar."""

from __future__ import annotations

from datetime import UTC, datetime

from broadcaster.compose.locale import format_when


def test_a_time_at_the_calendar_s_end_is_said_in_utc_not_an_error() -> None:
    """An expected resolution of 9999-12-31 23:59 UTC cannot be shown in a zone east of
    UTC (it would be in the year 10000): every delivery to such customers failed."""
    late = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert format_when(late, "Europe/Amsterdam", "en", now) == "Fri 31 Dec 9999 23:59 UTC"
    assert format_when(late, "America/New_York", "en", now).endswith(" EST")


def test_a_time_with_seconds_is_said_to_the_minute() -> None:
    """A follow-up due two hours after a declaration at 02:33:44 is "by 04:34", not "by
    04:33:44": a time ahead is rounded up, so that the time said is kept; one past (when an
    update was posted) is cut to its minute, never later than it was."""
    now = datetime(2026, 12, 6, 2, 33, 44, tzinfo=UTC)
    due = datetime(2026, 12, 6, 4, 33, 44, tzinfo=UTC)
    assert format_when(due, "Europe/Amsterdam", "nl", now, ahead=True) == "05:34 CET"
    assert format_when(due.replace(second=0), "UTC", "en", now, ahead=True) == "04:33 UTC"
    assert format_when(now, "UTC", "en", now) == "02:33 UTC"
    midnight = datetime(2026, 12, 6, 23, 59, 30, tzinfo=UTC)
    assert format_when(midnight, "UTC", "en", midnight) == "23:59 UTC"  # not tomorrow's


def test_a_time_in_another_year_says_its_year() -> None:
    """Rendered on 31 December, "resolved by Wed 6 Jan" read as a date eleven months back."""
    now = datetime(2026, 12, 31, 22, 0, tzinfo=UTC)  # 23:00 in Amsterdam
    later = datetime(2027, 1, 6, 11, 0, tzinfo=UTC)
    assert format_when(later, "Europe/Amsterdam", "en", now) == "Wed 6 Jan 2027 12:00 CET"
    assert format_when(later, "Europe/Amsterdam", "nl", now) == "wo 6 jan 2027 12:00 CET"
    this_year = datetime(2026, 12, 31, 22, 30, tzinfo=UTC)
    assert format_when(this_year, "Europe/Amsterdam", "en", now) == "23:30 CET"


def test_a_zone_without_a_lettered_abbreviation_is_written_as_an_offset_from_utc() -> None:
    """Not "next update by 15:00 +04": nobody reads a time zone so."""
    now = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    due = datetime(2026, 12, 7, 11, 0, tzinfo=UTC)
    assert format_when(due, "Asia/Dubai", "en", now) == "15:00 UTC+4"
    assert format_when(due, "America/Sao_Paulo", "en", now) == "08:00 UTC-3"
    assert format_when(due, "Asia/Kathmandu", "en", now) == "16:45 UTC+5:45"
    assert format_when(due, "Europe/Amsterdam", "en", now) == "12:00 CET"
