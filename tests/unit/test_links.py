"""Signed customer links: the pair every message carries is exactly two single links."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.compose.links import (
    CLOCK_SLACK,
    ExpiredLink,
    InvalidLink,
    issued_before,
    link_url,
    make_token,
    personal_links,
    verify_token,
    verify_unsubscribe,
)

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
    unsubscribe, preferences = personal_links(base, secret, customer, expires, NOW)
    assert unsubscribe == link_url(base, secret, customer, "unsubscribe", expires, issued=NOW)
    assert preferences == link_url(base, secret, customer, "preferences", expires, issued=NOW)
    token = unsubscribe.rsplit("/", 1)[1]
    claims = verify_token(secret, token, "unsubscribe", NOW)
    assert (claims.customer_id, claims.issued_at) == (customer, int(NOW.timestamp()))
    with pytest.raises(InvalidLink):
        verify_token(secret, token, "preferences", NOW)


def test_personal_links_refuse_an_empty_secret() -> None:
    with pytest.raises(ValueError, match="link secret"):
        personal_links("https://x.example", "", "c1", NOW, NOW)


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


def test_a_link_says_when_it_was_issued_and_the_time_is_signed() -> None:
    token = make_token("s", "c1", "unsubscribe", NOW + timedelta(days=30), issued=NOW)
    encoded, issued, expires, purpose, signature = token.split(".")
    assert int(issued) == int(NOW.timestamp())
    later = ".".join([encoded, str(int(issued) + 86400), expires, purpose, signature])
    with pytest.raises(InvalidLink, match="signature"):
        verify_token("s", later, "unsubscribe", NOW)


def test_an_earlier_builds_link_is_still_accepted_without_an_issue_time() -> None:
    legacy = make_token("s", "c1", "unsubscribe", NOW + timedelta(days=30))
    assert len(legacy.split(".")) == 4
    claims = verify_token("s", legacy, "unsubscribe", NOW)
    assert (claims.customer_id, claims.issued_at) == ("c1", None)
    assert not issued_before(claims, NOW + timedelta(days=1))


def test_a_link_issued_before_its_customer_was_created_is_not_theirs() -> None:
    token = make_token("s", "c1", "preferences", NOW + timedelta(days=30), issued=NOW)
    claims = verify_token("s", token, "preferences", NOW)
    assert issued_before(claims, NOW + timedelta(days=2))  # erased, id given again
    assert not issued_before(claims, NOW - timedelta(days=200))  # the customer it was for
    assert not issued_before(claims, NOW + timedelta(seconds=CLOCK_SLACK))  # clocks disagree


def test_an_unsubscribe_link_is_honoured_after_its_expiry_when_it_says_when_issued() -> None:
    """Unsubscribing is always safe to grant: a mail client's one-click POST from an email
    older than the link lifetime was refused ("the link has expired"), and the customer
    stayed subscribed with no way forward."""
    issued = NOW - timedelta(days=400)
    token = make_token("s", "c1", "unsubscribe", issued + timedelta(days=30), issued=issued)
    claims = verify_unsubscribe("s", token, NOW)
    assert (claims.customer_id, claims.issued_at) == ("c1", int(issued.timestamp()))
    # The customer check still applies: created after the link, it is not theirs.
    assert issued_before(claims, issued + timedelta(days=1))
    # Anything else about the link is still checked.
    with pytest.raises(InvalidLink, match="signature"):
        verify_unsubscribe("another secret", token, NOW)
    preferences = make_token("s", "c1", "preferences", issued + timedelta(days=30), issued=issued)
    with pytest.raises(InvalidLink, match="not unsubscribe"):
        verify_unsubscribe("s", preferences, NOW)


def test_an_expired_link_says_whose_it_was_but_is_refused() -> None:
    issued = NOW - timedelta(days=31)
    token = make_token("s", "c1", "preferences", issued + timedelta(days=30), issued=issued)
    with pytest.raises(ExpiredLink, match="expired") as raised:
        verify_token("s", token, "preferences", NOW)
    assert isinstance(raised.value, InvalidLink)
    assert (raised.value.claims.customer_id, raised.value.claims.purpose) == ("c1", "preferences")
    # An earlier build's unsubscribe link carries no issue time: it cannot be told from one
    # of an erased customer of the same id, so it stays expired.
    legacy = make_token("s", "c1", "unsubscribe", issued + timedelta(days=30))
    with pytest.raises(ExpiredLink):
        verify_unsubscribe("s", legacy, NOW)
    assert verify_unsubscribe("s", legacy, issued).customer_id == "c1"  # until it expires
