"""What every parser shares: drafts finished into events under the limits, and typed reads.

A parser reads each item into a :class:`Draft` (raw, source-shaped values) or raises
:class:`ItemError`; :class:`Collector` finishes drafts into events (cleaning, truncating,
mapping components and regions), skips duplicates and items past the limit, and records
every skip with its reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from broadcaster.incidents.lifecycle import MAX_SCOPE_CHARS
from broadcaster.intake.events import (
    FeedError,
    IncidentEvent,
    Limits,
    ParseResult,
    SkippedItem,
    SourceMapping,
)
from broadcaster.intake.text import clean_text, html_to_text, plain_text, safe_url, truncate

_ISO_DATETIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_LANGUAGE_TAG: Final = re.compile(r"[A-Za-z]{1,8}(?:[-_][A-Za-z0-9]{1,8}){0,4}")
_SKIP_ID_CHARS: Final = 120


class ItemError(Exception):
    """This item cannot become an event; ``reason`` says why. Never leaves the intake."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Draft:
    """One item as read from the source, before cleaning and mapping.

    ``keys`` are (prefix, value) pairs looked up in the component and region maps, e.g.
    ``("route:", "Red")``; ``pass_through`` keeps unmapped keys as their value.
    """

    external_id: str
    version: str
    title: str
    message: str
    status: str
    severity: str
    message_is_html: bool = False
    keys: list[tuple[str, str]] = field(default_factory=list)
    region_keys: list[tuple[str, str]] | None = None
    """When set, regions are looked up from these, and components from ``keys`` only."""
    pass_through: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    expires_at: datetime | None = None
    updated_at: datetime | None = None
    languages: dict[str, tuple[str, str]] = field(default_factory=dict)
    language_is_html: bool = False
    url: str | None = None
    references: list[tuple[str, str]] = field(default_factory=list)
    """Earlier messages of the item: (its external id's beginning, version) (see
    ``IncidentEvent.references``)."""


def content_hash(*parts: object) -> str:
    """A short stable hash of JSON-able ``parts``: a version for sources without one."""
    encoded = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:24]


def _identifier(value: str, what: str, limits: Limits) -> str:
    if len(value) > limits.max_id_chars * 4:  # not even worth cleaning
        raise ItemError(f"{what} longer than {limits.max_id_chars} characters")
    value = clean_text(value, single_line=True)
    if not value:
        raise ItemError(f"no {what}")
    if len(value) > limits.max_id_chars:
        raise ItemError(f"{what} longer than {limits.max_id_chars} characters")
    return value


def _version(value: str, limits: Limits) -> str:
    if len(value) > limits.max_id_chars:  # a version only needs to change: hash it
        return "h:" + content_hash(value)
    return clean_text(value, single_line=True)


def map_keys(
    keys: Iterable[tuple[str, str]],
    table: Mapping[str, str],
    limits: Limits,
    *,
    pass_through: bool = False,
) -> tuple[str, ...]:
    """Our names for the source keys: exact entry, else ``prefix*`` wildcard, else dropped.

    A mapped value ``*`` stands for the source's own value. Order is kept, duplicates go.
    """
    found: dict[str, None] = {}
    for prefix, value in keys:
        target = table.get(prefix + value)
        if target is None:
            target = table.get(prefix + "*")
        if target is None:
            if not pass_through:
                continue
            target = value
        if target == "*":
            target = value
        cut = min(limits.max_label_chars, MAX_SCOPE_CHARS)  # the store keeps no more
        name = plain_text(target, limit=cut, single_line=True)
        if name:
            found[name] = None
            if len(found) >= limits.max_keys:
                break
    return tuple(found)


def resolve_severity(
    candidates: Iterable[str], builtin: Mapping[str, str], mapping: SourceMapping
) -> str:
    """The first candidate the mapping's overrides or the built-in table knows, else default.

    Candidates go from most to least specific; overrides match exactly or ignoring case.
    """
    lowered = {key.lower(): value for key, value in mapping.severities.items()}
    for candidate in candidates:
        if candidate in mapping.severities:
            return mapping.severities[candidate]
        if candidate.lower() in lowered:
            return lowered[candidate.lower()]
        if candidate.lower() in builtin:
            return builtin[candidate.lower()]
    return mapping.default_severity


def _languages(draft: Draft, limits: Limits) -> dict[str, tuple[str, str]]:
    result: dict[str, tuple[str, str]] = {}
    for tag, (title, message) in draft.languages.items():
        if len(result) >= limits.max_languages:
            break
        tag = tag.strip()
        if not _LANGUAGE_TAG.fullmatch(tag):
            continue
        title = plain_text(title, limit=limits.max_title_chars, single_line=True)
        if draft.language_is_html:
            text = html_to_text(message, limit=limits.max_message_chars)
        else:
            text = plain_text(message, limit=limits.max_message_chars)
        if title or text:
            result[tag.replace("_", "-")] = (title or _first_line(text, limits), text or title)
    return result


def _first_line(text: str, limits: Limits) -> str:
    return truncate(text.split("\n", 1)[0].strip(), limits.max_title_chars)


def finish(draft: Draft, mapping: SourceMapping, source: str) -> IncidentEvent:
    """The event for ``draft``, cleaned and bounded; :class:`ItemError` if none can be made."""
    limits = mapping.limits
    external_id = _identifier(draft.external_id, "id", limits)
    version = _version(draft.version, limits)
    if not version:
        raise ItemError("no version")
    title = plain_text(draft.title, limit=limits.max_title_chars, single_line=True)
    if draft.message_is_html:
        message = html_to_text(draft.message, limit=limits.max_message_chars)
    else:
        message = plain_text(draft.message, limit=limits.max_message_chars)
    if not title and not message and draft.status != "resolved":
        raise ItemError("no title and no text")  # a bare resolution is fine: see IncidentEvent
    labels: dict[str, str] = {}
    for key, value in draft.labels.items():
        if len(labels) >= limits.max_labels:
            break
        key = plain_text(key, limit=limits.max_label_chars, single_line=True)
        if key:
            labels[key] = plain_text(value, limit=limits.max_label_chars, single_line=True)
    return IncidentEvent(
        source=source,
        external_id=external_id,
        version=version,
        title=title or _first_line(message, limits),
        severity=draft.severity,
        status=draft.status,
        message=message or title,
        components=map_keys(
            draft.keys, mapping.components, limits, pass_through=draft.pass_through
        ),
        regions=map_keys(
            draft.keys if draft.region_keys is None else draft.region_keys,
            mapping.regions,
            limits,
            pass_through=draft.pass_through,
        ),
        labels=labels,
        starts_at=utc(draft.starts_at),
        ends_at=utc(draft.ends_at),
        expires_at=utc(draft.expires_at),
        updated_at=utc(draft.updated_at),
        languages=_languages(draft, limits),
        url=safe_url(draft.url, limit=limits.max_url_chars),
        references=tuple(
            dict.fromkeys(
                (begins, version)
                for begins, version in (
                    (clean_text(b, single_line=True)[: limits.max_id_chars], _version(v, limits))
                    for b, v in draft.references[:50]
                )
                if version
            )
        ),
    )


def short_id(value: object) -> str | None:
    """An item id fit for a skip record (bounded, printable), or None."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = clean_text(str(value)[: _SKIP_ID_CHARS * 2], single_line=True)
    return truncate(text, _SKIP_ID_CHARS) or None


def item_key(value: object, limits: Limits) -> str | None:
    """An item's whole id, cleaned as :func:`finish` cleans an event's, or None when it
    could not be one (not a string or number, or too long)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    if len(text) > limits.max_id_chars * 4:
        return None
    text = clean_text(text, single_line=True)
    return text if text and len(text) <= limits.max_id_chars else None


FUTURE_TOLERANCE = timedelta(days=1)
"""How far ahead of this host's clock an item's ``updated_at`` may be: a source's clock a few
hours out, or local time written as UTC, passes; a date years ahead does not."""


class Collector:
    """Gathers one document's events and skips; at most ``max_items`` items, unique ids."""

    def __init__(self, mapping: SourceMapping, source: str, *, now: datetime) -> None:
        self.mapping = mapping
        self.source = source
        self.now = now
        self.events: list[IncidentEvent] = []
        self.skipped: list[SkippedItem] = []
        self._seen: set[str] = set()
        self._count = 0
        self._over = 0

    def item(self, item_id: object, read: Callable[[], Draft]) -> None:
        """Read one item (``read`` raises :class:`ItemError` to skip it) and keep its event.
        Anything else an item raises (a parser library's own error on its markup, say)
        skips that item too, named: the document's other items still count."""
        self._count += 1
        if self._count > self.mapping.limits.max_items:
            self._over += 1
            return
        try:
            event = finish(read(), self.mapping, self.source)
        except ItemError as exc:
            self.skip(exc.reason, item_id)
            return
        except Exception as exc:
            self.skip(f"unreadable: {type(exc).__name__}: {exc}", item_id)
            return
        if event.updated_at is not None and event.updated_at - self.now > FUTURE_TOLERANCE:
            # Applied, it would stand as the item's newest version, and every later one,
            # its resolution too, would be ignored as older for good.
            self.skip(
                f"updated_at {event.updated_at.isoformat()} is more than "
                f"{FUTURE_TOLERANCE.days} day ahead of this host's clock",
                item_id,
            )
            return
        if event.external_id in self._seen:
            self.skip("duplicate id in the same document (the first was kept)", item_id)
            return
        self._seen.add(event.external_id)
        self.events.append(event)

    def skip(self, reason: str, item_id: object = None) -> None:
        self.skipped.append(
            SkippedItem(reason, short_id(item_id), item_key(item_id, self.mapping.limits))
        )

    def result(self, *, snapshot: bool = False) -> ParseResult:
        skipped = list(self.skipped)
        if self._over:
            limit = self.mapping.limits.max_items
            skipped.append(SkippedItem(f"{self._over} item(s) over the limit of {limit}"))
        # Past the item limit the document was not read whole: it lists not everything.
        return ParseResult(
            events=list(self.events), skipped=skipped, snapshot=snapshot and not self._over
        )


# -- reading values -------------------------------------------------------------------------


def check_size(data: bytes, limits: Limits) -> None:
    if len(data) > limits.max_document_bytes:
        raise FeedError(
            f"document is {len(data)} bytes, over the limit of {limits.max_document_bytes}"
        )


def check_now(now: datetime) -> datetime:
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def load_json(data: bytes, limits: Limits) -> object:
    """The JSON value of ``data``; :class:`FeedError` when it is too big or not JSON."""
    check_size(data, limits)
    try:
        return json.loads(data)
    except RecursionError:
        raise FeedError("JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise FeedError(f"not valid JSON: {truncate(str(exc), 200)}") from None


def parse_datetime(value: object) -> datetime | None:
    """An ISO 8601 / RFC 3339 string with an offset as aware UTC; None when unusable.

    A time without an offset is refused (it would be guessed), as is Go's zero time
    (year 1, Alertmanager's "not set").
    """
    if not isinstance(value, str) or len(value) > 64 or not _ISO_DATETIME.match(value.strip()):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.utcoffset() is None or parsed.year <= 1:
        return None
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def utc(value: datetime | None) -> datetime | None:
    """``value`` in UTC; None when absent, naive, or not representable in UTC."""
    if value is None or value.utcoffset() is None:
        return None
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def from_timestamp(seconds: int) -> datetime | None:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, ValueError, OSError):
        return None


def get_str(obj: Mapping[str, object], key: str, *, required: bool = False) -> str | None:
    """``obj[key]`` as a string; None when absent or null; :class:`ItemError` when mistyped."""
    value = obj.get(key)
    if value is None:
        if required:
            raise ItemError(f"{key}: missing")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ItemError(f"{key}: expected a string, got {type(value).__name__}")
    return str(value)


def get_list(obj: Mapping[str, object], key: str) -> list[object]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ItemError(f"{key}: expected a list, got {type(value).__name__}")
    return value


def get_dict(obj: Mapping[str, object], key: str) -> dict[str, object]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ItemError(f"{key}: expected an object, got {type(value).__name__}")
    return value


def string_pairs(value: Mapping[str, object]) -> dict[str, str]:
    """The entries of a JSON object whose values are strings (labels, annotations)."""
    return {k: v for k, v in value.items() if isinstance(v, str)}
