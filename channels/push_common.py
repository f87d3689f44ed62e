"""What the FCM and APNs channels share: notification text that fits, and Retry-After.

Kept apart from both so neither provider module depends on the other.
"""

from __future__ import annotations

import math
import re
from email.utils import parsedate_to_datetime

BODY_LIMIT = 1000
"""Characters of notification body; longer texts are cut at a sentence boundary."""


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


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
