"""What the push channels share: notification text that fits.

Kept apart from both so neither provider module depends on the other. Retry-After parsing
lives in :mod:`channels.http_common`, shared by every HTTP channel.
"""

from __future__ import annotations

import re
from collections.abc import Callable

BODY_LIMIT = 1000
"""Characters of notification body; longer texts are cut at a sentence boundary."""


_SENTENCE_END = re.compile(r"[.!?…][\"'”’»)\]]*(?=\s)|[。！？]|\n")


def shorten(text: str, limit: int = BODY_LIMIT) -> str:
    """``text`` cut to ``limit`` characters: after the last whole sentence that fits, or
    (when that would drop more than half) at a word boundary with an ellipsis."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    text = text.strip()
    if len(text) <= limit:
        return text
    best = 0
    for match in _SENTENCE_END.finditer(text):
        if match.end() > limit:
            break
        best = match.end()
    if best >= limit // 2:
        return text[:best].rstrip()
    cut = text[: limit - 1]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def shorten_to_fit(text: str, fits: Callable[[str], bool]) -> str | None:
    """The longest :func:`shorten` of ``text`` (whole sentences, else whole words) that
    ``fits`` (a budget in bytes, say: a payload's size); None when not even a word does.
    A cut by bytes alone split words and characters' meaning ("replacing the dam…")."""
    text = text.strip()
    if fits(text):
        return text
    best: str | None = None
    low, high = 1, len(text)
    while low <= high:
        middle = (low + high) // 2
        candidate = shorten(text, middle)
        if candidate and fits(candidate):
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    return best
