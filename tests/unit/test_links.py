"""Signed customer links: the pair every message carries is exactly two single links."""

from __future__ import annotations

import contextlib
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


@pytest.mark.parametrize(
    "token",
    ["é", "YzE.1767780000.unsubscribe.sïgnature", "YzE.1767780000.unsübscribe.x", "\udcff.1.2.3"],
)
def test_a_non_ascii_token_is_an_invalid_link_not_a_type_error(token: str) -> None:
    """``hmac.compare_digest`` raises TypeError for non-ASCII strings: a 500, not a 400."""
    with pytest.raises(InvalidLink, match="malformed link"):
        verify_token("secret", token, "unsubscribe", NOW)


@given(token=st.text(max_size=80))
def test_any_token_is_claims_or_an_invalid_link(token: str) -> None:
    with contextlib.suppress(InvalidLink):
        verify_token("secret", token, "unsubscribe", NOW)
