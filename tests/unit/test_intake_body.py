"""A feed body decoded here, bounded: what servers send is read whole, the rest refused."""

from __future__ import annotations

import gzip
import zlib

import pytest

from broadcaster.intake.body import BodyDecoder, BodyError

DOC = b"<rss>" + b"x" * 5000 + b"</rss>"


def decoded(coding: str, chunks: list[bytes], limit: int = 10**6) -> bytes:
    body = BodyDecoder(coding, limit, "https://feeds.example/x")
    for chunk in chunks:
        body.feed(chunk)
    return body.finish()


def test_raw_deflate_is_read_whatever_the_size_of_its_first_chunk() -> None:
    """It was refused as corrupt when zlib found the wrapper missing only at the second
    chunk (the first bytes fed were not kept to read again)."""
    squeeze = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = squeeze.compress(DOC) + squeeze.flush()
    for cut in (1, 2, 5, len(raw) - 1):
        assert decoded("deflate", [raw[:cut], raw[cut:]]) == DOC


def test_wrapped_deflate_in_small_chunks() -> None:
    wrapped = zlib.compress(DOC)
    assert decoded("deflate", [wrapped[i : i + 3] for i in range(0, len(wrapped), 3)]) == DOC


def test_a_gzip_body_of_several_members_is_read_whole() -> None:
    members = gzip.compress(DOC[:100]) + gzip.compress(DOC[100:])
    assert decoded("gzip", [members[:7], members[7:]]) == DOC


@pytest.mark.parametrize(
    ("coding", "body", "reason"),
    [
        ("deflate", zlib.compress(DOC) + b"junk", "data after the end of its deflate body"),
        ("gzip", gzip.compress(DOC) + b"junk", "corrupt gzip body"),
        ("gzip", gzip.compress(DOC)[:-5], "ends early"),
    ],
)
def test_trailing_garbage_or_a_cut_body_is_refused(coding: str, body: bytes, reason: str) -> None:
    with pytest.raises(BodyError, match=reason):
        decoded(coding, [body])


def test_members_that_add_up_past_the_limit_are_refused_at_it() -> None:
    many = gzip.compress(b"\0" * 10**5) * 30
    body = BodyDecoder("gzip", 10**6, "https://feeds.example/x")
    with pytest.raises(BodyError, match="over the limit"):
        body.feed(many)
        body.finish()
    assert body.size == 10**6 + 1
