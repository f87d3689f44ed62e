"""Writes of work already done are tried again, for a while, not given up at the first
error (broadcaster.store.retry)."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from broadcaster.store.retry import retried


async def test_a_write_that_fails_twice_is_tried_until_it_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "broadcaster.store")
    calls = 0

    async def write() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionResetError("the store restarted")
        return "written"

    done = await retried(write, within=timedelta(seconds=5), what="a thing", first=0.01)

    assert (done, calls) == ("written", 3)
    assert [r.getMessage() for r in caplog.records] == [
        "could not record a thing; trying again",
        "could not record a thing; trying again",
        "recorded a thing",
    ]


async def test_a_store_away_for_longer_than_the_window_gets_the_last_error() -> None:
    calls = 0

    async def write() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionResetError(f"try {calls}")

    with pytest.raises(ConnectionResetError, match="try 3"):
        await retried(write, within=timedelta(seconds=0.1), what="x", first=0.04, longest=0.04)
