"""Writes of work already done are tried again, for a while, not given up at the first
error (broadcaster.store.retry)."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy.exc import DBAPIError

from broadcaster.store.retry import retried, store_transient


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


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "transient"),
    [
        ("57P03", True),  # the server is starting up
        ("57P01", True),  # an administrator shut it down
        ("53300", True),  # too many connections
        ("08006", True),  # the connection failed
        ("40P01", True),  # chosen to end a deadlock
        ("57014", True),  # a statement timeout
        ("22001", False),  # a value too long: refused again, however often
        ("23505", False),  # a unique key
        ("22021", False),  # a NUL in text
    ],
)
def test_the_store_s_state_is_tried_again_and_a_refused_statement_is_not(
    sqlstate: str, transient: bool
) -> None:
    """asyncpg's errors arrive as plain DBAPIError with their SQLSTATE: a server restarting
    or out of connections must be waited out (a batch's outcomes given up are sent again),
    a statement the server refuses must not be tried for a whole lease."""
    error = DBAPIError("UPDATE deliveries", {}, _PgError(sqlstate))
    assert store_transient(error) is transient
