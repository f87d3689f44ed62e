"""The pacer: a rate-limited channel's share of a claim beyond its rate is put back, one
slot per message, and what it put back is taken as it stands when it falls due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broadcaster.config.settings import RateLimit
from broadcaster.dispatch.limits import Pacer

NOW = datetime(2026, 1, 6, 10, 0, tzinfo=UTC)


def test_a_limited_channel_keeps_what_its_rate_sends_ahead_and_puts_back_the_rest() -> None:
    pacer = Pacer({"sms": RateLimit(per_second=2)}, ahead=timedelta(seconds=1))
    due = [("sms", False), ("mail", False)] * 5  # mail is not limited
    back = pacer.later(due, NOW)
    # sms slots: +0, +0.5, +1.0 are kept (within a second); +1.5 and +2.0 are put back
    assert back == {6: NOW + timedelta(seconds=1.5), 8: NOW + timedelta(seconds=2)}
    # The next claim a moment later goes on after the last slot given out.
    assert pacer.later([("sms", False)], NOW) == {0: NOW + timedelta(seconds=2.5)}


def test_what_was_put_back_is_taken_when_due_and_keeps_its_slot() -> None:
    pacer = Pacer({"sms": RateLimit(per_second=1)}, ahead=timedelta(seconds=0))
    assert pacer.later([("sms", False), ("sms", False)], NOW) == {1: NOW + timedelta(seconds=1)}
    later = NOW + timedelta(seconds=1)
    assert pacer.later([("sms", True)], later) == {}  # reserved: taken
    assert pacer.later([("sms", False)], later) == {0: NOW + timedelta(seconds=2)}


def test_no_limits_no_pacing() -> None:
    assert not Pacer({})
    assert Pacer({}).later([("sms", False)] * 3, NOW) == {}


def test_slots_are_as_far_apart_as_messages_cost() -> None:
    """SMS of three segments at 1 segment/s: three seconds a message."""
    pacer = Pacer({"sms": RateLimit(per_second=1)}, ahead=timedelta(seconds=3))
    pacer.observe("sms", 3)
    assert pacer.later([("sms", False)] * 3, NOW) == {2: NOW + timedelta(seconds=6)}


def test_a_rate_of_almost_nothing_does_not_overflow() -> None:
    pacer = Pacer({"sms": RateLimit(per_second=1e-15)}, ahead=timedelta(seconds=1))
    back = pacer.later([("sms", False)] * 5, NOW)
    assert sorted(back) == [1, 2, 3, 4]
    assert max(back.values()) <= NOW + timedelta(days=1)
