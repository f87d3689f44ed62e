"""``channels.http_transport.Answer.text`` decodes exactly as ``httpx.Response.text`` does,
whatever the ``Content-Type`` says (its UTF-8 fast path included)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.http_transport import Answer

CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    'application/json; charset="UTF-8"',
    "text/plain;charset=utf8",
    "text/plain; charset=latin-1",
    "text/plain; charset=ISO-8859-1",
    "text/html; charset=windows-1252; format=flowed",
    "text/plain; charset=utf-16",
    "text/plain; charset=no-such-charset",
    "text/plain; charset=",
    "text/plain; charset=utf-8; charset=latin-1",
    "text/plain; foo=bar",
    "text/plain; charset=latin-1 | application/json",
    "application/json | text/plain; charset=utf-8",
]


def _pairs(content_type: str | None) -> list[tuple[str, str]]:
    if content_type is None:
        return []
    # Several Content-Type headers, which httpx joins with a comma.
    return [("Content-Type", part) for part in content_type.split(" | ")]


def _decoded(read: Callable[[], str]) -> tuple[str, str]:
    """The text, or the type of the error reading it raised (httpx raises on a UTF-16
    body without a byte order mark, say: so must we)."""
    try:
        return "text", read()
    except ValueError as exc:
        return "error", type(exc).__name__


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
@given(body=st.binary(max_size=64) | st.text(max_size=32).map(lambda t: t.encode("utf-8")))
def test_text_is_what_httpx_makes_of_the_same_answer(content_type: str | None, body: bytes) -> None:
    pairs = _pairs(content_type)
    expected = _decoded(lambda: httpx.Response(200, headers=pairs, content=body).text)
    assert _decoded(lambda: Answer(200, pairs, body).text) == expected
