"""Signed customer links: the pair every message carries is exactly two single links."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.compose.links import InvalidLink, link_url, personal_links, verify_token

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@given(
    customer=st.text(min_size=1, max_size=40),
    secret=st.text(min_size=1, max_size=40),
    base=st.sampled_from(["https://status.example.org", "http://127.0.0.1:8080/"]),
    days=st.integers(min_value=0, max_value=400),
)
def test_personal_links_are_the_two_single_links(
    customer: str, secret: str, base: str, days: int
) -> None:
    expires = NOW + timedelta(days=days)
    unsubscribe, preferences = personal_links(base, secret, customer, expires)
    assert unsubscribe == link_url(base, secret, customer, "unsubscribe", expires)
    assert preferences == link_url(base, secret, customer, "preferences", expires)
    token = unsubscribe.rsplit("/", 1)[1]
    assert verify_token(secret, token, "unsubscribe", NOW).customer_id == customer
    with pytest.raises(InvalidLink):
        verify_token(secret, token, "preferences", NOW)


def test_personal_links_refuse_an_empty_secret() -> None:
    with pytest.raises(ValueError, match="link secret"):
        personal_links("https://x.example", "", "c1", NOW)
