"""A daemon warns at start when its host's clock is far from the database server's: leases
are written and compared with each daemon's own clock (docs/scaling.md)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pytest

from broadcaster.clock import RealClock
from broadcaster.daemon import warn_of_clock_skew
from broadcaster.store import Database

LEASE = timedelta(seconds=60)


class AheadClock(RealClock):
    """The real time, two minutes ahead (a host whose NTP stopped)."""

    def now(self) -> datetime:
        return super().now() + timedelta(minutes=2)


async def test_a_clock_two_minutes_ahead_is_warned_of(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="broadcaster.daemon")
    offset = await warn_of_clock_skew(database, AheadClock(), LEASE)
    if database.dialect == "sqlite":  # one daemon, one host: its clock is the store's
        assert offset is None and not caplog.records
        return
    assert offset is not None and -121 < offset < -119
    [record] = caplog.records
    assert "120.0 s ahead of the database server's" in record.getMessage()
    assert "NTP" in record.getMessage()


async def test_a_clock_in_step_with_the_database_is_quiet(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="broadcaster.daemon")
    offset = await warn_of_clock_skew(database, RealClock(), LEASE)
    assert offset is None or abs(offset) < 1  # the same host here
    assert not caplog.records
