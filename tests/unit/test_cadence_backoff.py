from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.dispatch.backoff import retry_delay
from broadcaster.schedule.cadence import is_late, lateness, next_due

T0 = datetime(2026, 3, 1, 14, 7, 23, tzinfo=UTC)


def test_next_due_rounds_up_to_the_minute_for_minute_cadences() -> None:
    assert next_due(T0, timedelta(minutes=15)) == datetime(2026, 3, 1, 14, 23, tzinfo=UTC)


def test_next_due_keeps_exact_minutes() -> None:
    exact = T0.replace(second=0)
    assert next_due(exact, timedelta(minutes=30)) == exact + timedelta(minutes=30)


def test_next_due_is_exact_for_sub_minute_cadences() -> None:
    assert next_due(T0, timedelta(seconds=2)) == T0 + timedelta(seconds=2)


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    st.integers(min_value=1, max_value=48 * 3600),
)
def test_promise_is_never_sooner_than_the_cadence_nor_a_minute_later(
    now: datetime, seconds: int
) -> None:
    cadence = timedelta(seconds=seconds)
    due = next_due(now, cadence)
    assert due >= now + cadence
    assert due - (now + cadence) < timedelta(minutes=1)


def test_lateness_and_grace() -> None:
    promised = T0
    assert lateness(promised, promised - timedelta(minutes=5)) == timedelta(0)
    assert lateness(promised, promised + timedelta(seconds=90)) == timedelta(seconds=90)
    grace = timedelta(seconds=60)
    assert not is_late(promised, promised + timedelta(seconds=60), grace)
    assert is_late(promised, promised + timedelta(seconds=61), grace)
    assert not is_late(promised, promised - timedelta(minutes=10), grace)


def _delay(attempt: int, **kw: object) -> float:
    params: dict[str, object] = {
        "initial": timedelta(seconds=5),
        "maximum": timedelta(minutes=10),
        "multiplier": 2.0,
        "jitter": 0.0,
    }
    params.update(kw)
    return retry_delay(attempt, rng=random.Random(1), **params).total_seconds()  # type: ignore[arg-type]


def test_backoff_grows_exponentially_and_caps() -> None:
    assert [_delay(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert _delay(20) == 600


def test_retry_after_is_a_floor() -> None:
    assert _delay(1, retry_after=30.0) == 30
    assert _delay(4, retry_after=1.0) == 40


@pytest.mark.parametrize("retry_after", [1e14, 1e300, float("inf"), float("nan")])
def test_a_provider_wait_past_a_day_is_a_day(retry_after: float) -> None:
    """A channel may hand on any wait (FCM's quota floor, a customer's own webhook's
    ``Retry-After``): 10**14 seconds overflowed the retry's date and lost the batch."""
    expected = 86_400 if retry_after == retry_after and retry_after > 0 else 5
    assert _delay(1, retry_after=retry_after) == expected


@given(st.integers(min_value=1, max_value=60), st.floats(min_value=0, max_value=1))
def test_jitter_stays_within_its_band(attempt: int, jitter: float) -> None:
    base = min(5 * 2 ** (attempt - 1), 600)
    delay = _delay(attempt, jitter=jitter)
    assert base * (1 - jitter) - 1e-6 <= delay <= base * (1 + jitter) + 1e-6


def test_attempt_counts_from_one() -> None:
    with pytest.raises(ValueError):
        _delay(0)
