"""What every HTTP channel shares: redaction, Retry-After, retryable statuses, and what of an
error answer a reason may quote (channels/redact.py, channels/http_common.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.base import DeliveryError
from channels.http_common import (
    FIELD_LIMIT,
    body_summary,
    clip,
    json_bytes,
    json_object,
    parse_retry_after,
    retryable_status,
    text_field,
)
from channels.redact import MIN_SECRET, REDACTED, redact

TOKEN = "tk_0123456789abcdef"

# --- redact -----------------------------------------------------------------------------------


def test_redact_replaces_every_occurrence() -> None:
    text = f"Authorization: Bearer {TOKEN}\n\nBearer {TOKEN}"
    assert redact(text, [TOKEN]) == f"Authorization: Bearer {REDACTED}\n\nBearer {REDACTED}"


def test_redact_leaves_text_without_secrets_alone() -> None:
    assert redact("nothing to hide", [TOKEN]) == "nothing to hide"
    assert redact("nothing to hide", []) == "nothing to hide"
    assert redact("", [TOKEN]) == ""


@pytest.mark.parametrize("short", ["", "a", "12345"])
def test_redact_ignores_secrets_shorter_than_six(short: str) -> None:
    assert MIN_SECRET == 6
    text = "a 12345 b"
    assert redact(text, [short]) == text
    assert redact("x 123456 y", ["123456"]) == f"x {REDACTED} y"


def test_redact_leaves_no_part_of_overlapping_or_nested_secrets() -> None:
    # The second secret overlaps the first: replacing one at a time would leave "ijkl".
    assert redact("<abcdefghijkl>", ["abcdefgh", "efghijkl"]) == f"<{REDACTED}>"
    assert redact("<abcdefghijkl>", ["efghijkl", "abcdefgh"]) == f"<{REDACTED}>"
    # A secret inside another (a token inside its Basic credentials, say).
    assert redact("k=user:secret99!", ["secret99", "user:secret99"]) == f"k={REDACTED}!"
    # Back to back: one marker.
    assert redact("123456abcdef", ["123456", "abcdef"]) == REDACTED


def test_redact_accepts_any_iterable_once() -> None:
    assert redact(f"{TOKEN} {TOKEN}", iter([TOKEN])) == f"{REDACTED} {REDACTED}"


_ALPHABET = st.characters(codec="ascii", categories=["Nd", "Lu"])  # disjoint from the marker
_SECRETS = st.lists(st.text(_ALPHABET, min_size=MIN_SECRET, max_size=24), max_size=4)


@given(
    secrets=_SECRETS,
    pieces=st.lists(st.one_of(st.text(_ALPHABET, max_size=12), st.just(" ")), max_size=12),
    data=st.data(),
)
def test_property_no_secret_survives(secrets: list[str], pieces: list[str], data: Any) -> None:
    for secret in secrets:  # put each secret somewhere, possibly cut into by its neighbours
        pieces.insert(data.draw(st.integers(0, len(pieces))), secret)
    text = "".join(pieces)
    out = redact(text, secrets)
    for secret in secrets:
        assert secret not in out
    if not any(secret in text for secret in secrets):
        assert out == text


# --- parse_retry_after --------------------------------------------------------------------------

NOW = 1_700_000_020.0  # Tue, 14 Nov 2023 22:13:40 GMT


@pytest.mark.parametrize(
    ("value", "date", "now", "expected"),
    [
        (None, None, NOW, None),
        ("", None, NOW, None),
        ("  ", None, NOW, None),
        ("7", None, None, 7.0),
        (" 2.5 ", None, None, 2.5),
        ("-3", None, None, 0.0),
        ("soon", None, NOW, None),
        ("nan", None, NOW, None),
        ("inf", None, NOW, None),
        ("1e400", None, NOW, None),
        # An HTTP-date against the caller's clock...
        ("Tue, 14 Nov 2023 22:15:20 GMT", None, NOW, 100.0),
        ("Tue, 14 Nov 2023 22:11:00 GMT", None, NOW, 0.0),
        ("Tue, 14 Nov 2023 22:15:20 -0000", None, NOW, 100.0),  # no zone: GMT
        # ...or against the answer's own Date, which wins: no clock skew.
        ("Wed, 21 Oct 2026 07:28:30 GMT", "Wed, 21 Oct 2026 07:28:00 GMT", None, 30.0),
        ("Wed, 21 Oct 2026 07:28:30 GMT", "Wed, 21 Oct 2026 07:28:00 GMT", NOW, 30.0),
        ("Wed, 21 Oct 2026 07:28:00 GMT", "Wed, 21 Oct 2026 07:29:00 GMT", None, 0.0),
        ("Tue, 14 Nov 2023 22:15:20 GMT", "not a date", NOW, 100.0),  # unreadable Date
        ("Wed, 21 Oct 2026 07:28:30 GMT", None, None, None),  # nothing to measure against
        ("Wed, 32 Oct 2026 07:28:30 GMT", None, NOW, None),
        # No bound in RFC 9110: anything past a day is a day (the retry's date must exist).
        ("100000000000000", None, NOW, 86_400.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", None, NOW, 86_400.0),
    ],
)
def test_parse_retry_after(
    value: str | None, date: str | None, now: float | None, expected: float | None
) -> None:
    assert parse_retry_after(value, date, now=now) == expected


@given(st.text(max_size=40), st.one_of(st.none(), st.text(max_size=40)))
def test_property_parse_retry_after_never_raises_nor_goes_negative(
    value: str, date: str | None
) -> None:
    seconds = parse_retry_after(value, date, now=NOW)
    assert seconds is None or 0.0 <= seconds <= 86_400.0


# --- statuses and error texts -----------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 413, 422])
def test_other_4xx_are_not_retryable(status: int) -> None:
    assert retryable_status(status) is False


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_408_429_and_5xx_are_retryable(status: int) -> None:
    assert retryable_status(status) is True


def test_clip_makes_one_short_line() -> None:
    assert clip("  a\n\tb\x00c  ") == "a b c"
    long = "word " * 100
    clipped = clip(long)
    assert len(clipped) <= FIELD_LIMIT and clipped.endswith("word…")
    assert clip("abcdef", limit=4) == "abc…"


def test_clip_redacts_before_it_cuts() -> None:
    """A secret across the cut must not leave its first half behind."""
    text = "x" * (FIELD_LIMIT - 10) + TOKEN
    clipped = clip(text, secrets=[TOKEN])
    assert TOKEN[:8] not in clipped
    assert clipped.endswith("x" + REDACTED)


def test_text_field_takes_the_first_usable_field() -> None:
    document = {"code": True, "error": "", "message": {"nested": 1}, "reason": "Gone", "n": 7}
    assert text_field(document, "code", "error", "message", "reason") == "Gone"
    assert text_field(document, "n") == "7"
    assert text_field(document, "absent") == ""
    assert text_field({"error": f"bad {TOKEN}"}, "error", secrets=[TOKEN]) == f"bad {REDACTED}"
    assert text_field({"error": "x" * 500}, "error", limit=10) == "x" * 9 + "…"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"error": "x"}', {"error": "x"}),
        (b"[1, 2]", None),
        (b'"text"', None),
        (b"<html>", None),
        (b"\xff\xfe", None),
        (b"", None),
    ],
)
def test_json_object(content: bytes, expected: dict[str, Any] | None) -> None:
    assert json_object(content) == expected


@pytest.mark.parametrize(
    ("content", "content_type", "expected"),
    [
        (b"", "text/plain", "empty body"),
        (b"<html>x</html>", "text/html; charset=utf-8", "text/html body, 14 bytes, not shown"),
        (b"x", "Application/JSON", "application/json body, 1 bytes, not shown"),
        (b"abc", None, "untyped body, 3 bytes, not shown"),
        # A content type is a header the proxy chose: only a plain media type is said.
        (b"abc", f"text/plain, Bearer {TOKEN}", "untyped body, 3 bytes, not shown"),
    ],
)
def test_body_summary_says_type_and_length_only(
    content: bytes, content_type: str | None, expected: str
) -> None:
    assert body_summary(content, content_type) == expected


# --- json_bytes --------------------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)  # no lone surrogates
_DOCUMENTS = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


@given(_DOCUMENTS)
def test_json_bytes_are_the_standard_encoders_compact_utf8(document: Any) -> None:
    """Receivers verify signatures over these bytes: the same bytes as the standard
    library's compact, non-ASCII-escaping encoding, control characters, quotes, non-BMP
    characters and nesting included."""
    expected = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert json_bytes(document) == expected


def test_json_bytes_refuse_text_that_is_not_unicode_for_good() -> None:
    with pytest.raises(DeliveryError, match="cannot be encoded as JSON") as caught:
        json_bytes({"text": "broken \ud800 half"})
    assert caught.value.retryable is False
