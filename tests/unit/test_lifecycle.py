from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.incidents import lifecycle
from broadcaster.incidents.lifecycle import TransitionError


@pytest.mark.parametrize("current", lifecycle.OPEN_STATUSES)
@pytest.mark.parametrize("new", lifecycle.OPEN_STATUSES)
def test_any_open_status_may_follow_any_other(current: str, new: str) -> None:
    assert lifecycle.check_update(current, new) == new


def test_update_without_status_keeps_an_open_one() -> None:
    assert lifecycle.check_update("identified", None) == "identified"


def test_resolved_incident_reopens_only_with_an_open_status() -> None:
    assert lifecycle.check_update("resolved", "investigating") == "investigating"
    with pytest.raises(TransitionError, match="reopen"):
        lifecycle.check_update("resolved", None)


@pytest.mark.parametrize("new", ["resolved", "closed", "fixed"])
def test_update_cannot_resolve_close_or_invent(new: str) -> None:
    with pytest.raises(TransitionError):
        lifecycle.check_update("investigating", new)


def test_closed_is_final() -> None:
    with pytest.raises(TransitionError, match="closed"):
        lifecycle.check_update("closed", "investigating")
    with pytest.raises(TransitionError):
        lifecycle.check_resolve("closed")
    with pytest.raises(TransitionError):
        lifecycle.check_close("closed")


def test_close_needs_resolution_first() -> None:
    with pytest.raises(TransitionError, match="resolve it first"):
        lifecycle.check_close("monitoring")
    assert lifecycle.check_close("resolved") == "closed"


def test_resolve_twice_is_refused() -> None:
    assert lifecycle.check_resolve("monitoring") == "resolved"
    with pytest.raises(TransitionError, match="already resolved"):
        lifecycle.check_resolve("resolved")


@given(st.sampled_from(lifecycle.STATUSES), st.one_of(st.none(), st.text(max_size=20)))
def test_update_outcome_is_always_an_open_status_or_an_error(current: str, new: str | None) -> None:
    try:
        result = lifecycle.check_update(current, new)
    except TransitionError:
        return
    assert result in lifecycle.OPEN_STATUSES


def test_severity_and_cause_kind_are_checked() -> None:
    assert lifecycle.check_severity("critical") == "critical"
    with pytest.raises(ValueError, match="severity"):
        lifecycle.check_severity("catastrophic")
    with pytest.raises(ValueError, match="cause kind"):
        lifecycle.check_cause_kind("guess")
