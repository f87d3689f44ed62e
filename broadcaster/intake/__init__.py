"""Intake: feeds and webhooks read into normalised incident events (pure: no I/O here).

Each source module has ``parse(data, mapping, *, source, now) -> ParseResult``:
:mod:`statuspage`, :mod:`rss` (RSS 2.0 and Atom), :mod:`gtfs_rt`, :mod:`cap` (plus
:func:`cap_index.parse_index` for Atom/RSS indexes of CAP alerts), :mod:`alertmanager`
and :mod:`signed_webhook` (with :func:`signed_webhook.verify`). Fetching, scheduling and
upserting are the caller's. See docs/intake.md for what maps to what.
"""

from __future__ import annotations

from broadcaster.intake.events import (
    EVENT_STATUSES,
    FeedError,
    IncidentEvent,
    Limits,
    ParseResult,
    SkippedItem,
    SourceMapping,
)

__all__ = [
    "EVENT_STATUSES",
    "FeedError",
    "IncidentEvent",
    "Limits",
    "ParseResult",
    "SkippedItem",
    "SourceMapping",
]
