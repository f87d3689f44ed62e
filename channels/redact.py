"""Defence in depth for error reasons: a channel's own secrets never reach a delivery row.

Reasons are built from structured provider fields only (see :mod:`channels.http_common`),
but a provider or a proxy in front of it may still put what it received (an Authorization
header, a signed body) into one of those fields. Each HTTP channel runs its reasons through
:func:`redact` with the secrets it holds before raising
:class:`~channels.base.DeliveryError`.
"""

from __future__ import annotations

from collections.abc import Iterable

REDACTED = "[redacted]"
MIN_SECRET = 6
"""Shorter values are left alone: replacing them would mangle ordinary text and hide nothing
worth hiding."""


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret (``len >= MIN_SECRET``) replaced by
    ``[redacted]``. Occurrences that overlap or touch are replaced as one, so no part of
    any secret survives another's replacement."""
    spans: list[tuple[int, int]] = []
    for secret in {s for s in secrets if len(s) >= MIN_SECRET}:
        start = text.find(secret)
        while start != -1:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + 1)
    if not spans:
        return text
    pieces: list[str] = []
    position = covered = 0
    for start, end in sorted(spans):
        if start > covered or not pieces:
            pieces += [text[position:start], REDACTED]
        covered = max(covered, end)
        position = covered
    pieces.append(text[position:])
    return "".join(pieces)
