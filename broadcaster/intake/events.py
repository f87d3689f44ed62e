"""The intake's data types: the normalised event, the per-source mapping, limits and errors.

Every parser turns one fetched document (or one webhook body) into a :class:`ParseResult`:
the :class:`IncidentEvent` objects it could read, and a :class:`SkippedItem` with a reason
for each item it could not. A parser raises only :class:`FeedError`, and only when the
document as a whole is unusable (too large, not the format, an XML entity/DTD).

Error tree::

    Exception
     └── FeedError                the whole document is refused (the item-level problems
                                  are SkippedItem entries, never exceptions)

The idempotency key of an event is ``(source, external_id, version)``: the same item read
twice gives the same key, an edited item gives a new ``version``.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from broadcaster.incidents.lifecycle import OPEN_STATUSES, SEVERITIES

EVENT_STATUSES: Final = (*OPEN_STATUSES, "resolved")
"""The statuses an intake event can carry (``closed`` is staff's decision, never a feed's)."""

MIB: Final = 1024 * 1024


class FeedError(Exception):
    """The document as a whole is unusable; nothing was read from it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Bounds on what a parser accepts, against hostile or broken sources.

    A document over ``max_document_bytes`` is refused (:class:`FeedError`). Items past
    ``max_items`` are skipped (one summary entry). Over-long titles and messages are
    truncated with an ellipsis; an over-long external id or version skips the item (cutting
    it could merge two incidents); an over-long URL is dropped; components, regions,
    labels and languages beyond their count are dropped, over-long label keys and values
    truncated.
    """

    max_document_bytes: int = 5 * MIB
    max_items: int = 1000
    max_id_chars: int = 256
    max_title_chars: int = 300
    max_message_chars: int = 10_000
    max_url_chars: int = 2048
    max_keys: int = 200
    """Components, regions, and the source keys they are looked up from."""
    max_labels: int = 50
    max_label_chars: int = 256
    max_languages: int = 20

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"limit {name} must be a positive integer, not {value!r}")


DEFAULT_STATUS_KEYWORDS: Final[Mapping[str, str]] = types.MappingProxyType(
    {
        "resolved": "resolved",
        "completed": "resolved",
        "postmortem": "resolved",
        "monitoring": "monitoring",
        "identified": "identified",
        "investigating": "investigating",
    }
)


@dataclass(frozen=True)
class SourceMapping:
    """How one source's vocabulary maps to ours; one per configured source.

    ``components`` and ``regions`` map *source keys* to our names. What a key looks like
    depends on the source (``route:Red`` for GTFS-rt, ``service=api`` for Alertmanager, a
    component id or name for Statuspage, see docs/intake.md). A key that is not in the
    map is dropped, unless a wildcard entry covers it: ``"route:*"`` (or ``"*"`` for keys
    without a prefix) maps every such key to its value, and the value ``"*"`` means "the
    source's own name, unchanged".

    ``severities`` overrides the parser's built-in table (source value -> minor, major,
    critical); ``default_severity`` is used when the source says nothing usable.
    ``status_keywords`` (lower case) drive status detection in RSS/Atom items.
    ``preferred_languages`` choose the primary text when a source has several
    (prefix match: ``en`` matches ``en-US``).
    """

    components: Mapping[str, str] = field(default_factory=dict, hash=False)
    regions: Mapping[str, str] = field(default_factory=dict, hash=False)
    severities: Mapping[str, str] = field(default_factory=dict, hash=False)
    default_severity: str = "minor"
    status_keywords: Mapping[str, str] = field(
        default_factory=lambda: DEFAULT_STATUS_KEYWORDS, hash=False
    )
    preferred_languages: tuple[str, ...] = ("en",)
    limits: Limits = Limits()

    def __post_init__(self) -> None:
        if not isinstance(self.limits, Limits):
            raise TypeError(f"limits must be a Limits, not {type(self.limits).__name__}")
        if isinstance(self.preferred_languages, str):
            raise TypeError("preferred_languages must be a tuple of language tags")
        if self.default_severity not in SEVERITIES:
            raise ValueError(
                f"default severity must be one of {', '.join(SEVERITIES)}, "
                f"not {self.default_severity!r}"
            )
        for key, value in self.severities.items():
            if value not in SEVERITIES:
                raise ValueError(f"severity map: {key!r} -> {value!r} is not a severity")
        for key, value in self.status_keywords.items():
            if value not in EVENT_STATUSES:
                raise ValueError(f"status keyword {key!r} -> {value!r} is not a status")
            if key != key.lower() or not key.strip():
                raise ValueError(f"status keyword {key!r} must be non-empty lower case")
        object.__setattr__(self, "components", types.MappingProxyType(dict(self.components)))
        object.__setattr__(self, "regions", types.MappingProxyType(dict(self.regions)))
        object.__setattr__(self, "severities", types.MappingProxyType(dict(self.severities)))
        object.__setattr__(
            self, "status_keywords", types.MappingProxyType(dict(self.status_keywords))
        )


@dataclass(frozen=True)
class IncidentEvent:
    """One item of one source, normalised: what the incidents service upserts.

    ``message`` is the source's own customer-facing text (never written here); when the
    item has no body text, it is the item's title. ``languages`` holds the translations
    the source gave, language tag -> (title, message). Datetimes are timezone-aware UTC.

    Title and message are both empty only on a ``resolved`` event from a source that
    sent no text with the resolution (a CAP Cancel without ``info``, a deleted GTFS-rt
    alert): it changes the status only; keep the incident's texts.
    """

    source: str
    external_id: str
    version: str
    title: str
    severity: str
    status: str
    message: str
    components: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    expires_at: datetime | None = None
    updated_at: datetime | None = None
    languages: Mapping[str, tuple[str, str]] = field(default_factory=dict, hash=False)
    url: str | None = None
    references: tuple[tuple[str, str], ...] = ()
    """Earlier messages about the same item, each as (the beginning of its item's external
    id, its version): a CAP Update's or Cancel's ``references``, as (``sender,``,
    identifier), since an identifier is unique per sender only. When no incident has
    ``external_id`` yet, the incident of this source whose external id begins so and that
    applied that version is this item's (an Update that names only the Update it
    replaces)."""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {SEVERITIES}")
        if self.status not in EVENT_STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {EVENT_STATUSES}")
        for name in ("starts_at", "ends_at", "expires_at", "updated_at"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware")
        object.__setattr__(self, "labels", types.MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "languages", types.MappingProxyType(dict(self.languages)))

    @property
    def idempotency_key(self) -> tuple[str, str, str]:
        """``(source, external_id, version)``: re-reading an unchanged item gives the same."""
        return (self.source, self.external_id, self.version)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(frozen=True)
class SkippedItem:
    """An item that gave no event, and why (for the operator's log, not the customer)."""

    reason: str
    item_id: str | None = None
    """The item's id as the log shows it: cut short past 120 characters."""
    key: str | None = None
    """The item's whole id (cleaned as an event's would be), when it could be an incident's
    external id: what a snapshot feed's check for vanished items compares."""


@dataclass(frozen=True)
class ParseResult:
    """What one document gave.

    ``snapshot`` is true when the document lists every current item of the source (a
    GTFS-rt full dataset): an incident of this source whose external id is neither among
    the events nor the skipped items has ended, and the caller should resolve it.
    """

    events: list[IncidentEvent] = field(default_factory=list)
    skipped: list[SkippedItem] = field(default_factory=list)
    snapshot: bool = False

    def present(self) -> set[str]:
        """The external ids the document still lists (events and skipped items, each
        skipped one by its whole id, not the one cut short for the log): what a snapshot
        feed's items must be among to stay open."""
        listed = {event.external_id for event in self.events}
        return listed | {key for item in self.skipped if (key := item.key or item.item_id)}
