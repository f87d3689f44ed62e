"""RSS 2.0 and Atom status feeds to events, read by feedparser.

One event per item: the guid (Atom ``id``; else the link) is the external id, the title
the title, the content (else the summary) reduced from HTML to text the message. The
status comes from keywords (:attr:`SourceMapping.status_keywords`), looked for in order:

1. a category equal to a keyword (``Resolved``, ``[Resolved]``);
2. the title: a leading ``Resolved:`` / ``[Resolved]``, a bracketed tag anywhere, or a
   trailing ``- Resolved``;
3. the first line of the text of the form ``Resolved - ...`` (Statuspage's history feeds
   list updates newest first in this form);

else ``investigating``. The version is the item's updated (else published) time plus a
hash of its title, text and status, so an edit without a new timestamp is still seen.
Categories are the component/region keys (``category:<term>``) and severity candidates.
"""

from __future__ import annotations

import io
import re
import time
import xml.sax
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Final
from xml.parsers import expat

import feedparser

from broadcaster.intake.events import FeedError, ParseResult, SourceMapping
from broadcaster.intake.normalise import (
    Collector,
    Draft,
    ItemError,
    check_now,
    check_size,
    content_hash,
    resolve_severity,
)
from broadcaster.intake.text import clean_text, html_to_text
from broadcaster.intake.xmlsafe import refuse_declarations

CATEGORY_SEVERITIES: Final[Mapping[str, str]] = {
    "minor": "minor",
    "major": "major",
    "critical": "critical",
}
_SEPARATORS: Final = r"[:\-–—|]"


def parse(data: bytes, mapping: SourceMapping, *, source: str, now: datetime) -> ParseResult:
    """Events for the items of an RSS 2.0 or Atom document.

    :raises FeedError: too large, declares XML entities, or is not a feed at all.
    """
    check_now(now)
    check_size(data, mapping.limits)
    refuse_declarations(data, allow_doctype=True)
    _check_well_formed(data)
    try:
        # A stream, never bytes or str: feedparser would take those for a path or URL.
        feed = feedparser.parse(io.BytesIO(data), sanitize_html=True, resolve_relative_uris=False)
    except Exception as exc:  # third-party parser on hostile input: the document is unusable
        raise FeedError(f"feed parser failed: {type(exc).__name__}") from None
    _refuse_broken(dict.get(feed, "bozo_exception"))
    entries = dict.get(feed, "entries")
    if not dict.get(feed, "version") and not entries:
        raise FeedError("not an RSS or Atom feed")
    collector = Collector(mapping, source, now=check_now(now))
    matchers = _Matchers(mapping.status_keywords)
    for entry in entries if isinstance(entries, list) else []:
        item_id = _text(entry, "id") or _text(entry, "link")
        collector.item(item_id, partial(_entry, entry, mapping, matchers))
    return collector.result()


def _refuse_broken(error: object) -> None:
    """Refuse a document that is not well-formed XML: feedparser reads on with a lenient
    parser, and a document cut short (a partial download, a file half written) read so
    gave its last item without the rest of it, which was applied as an edit (the severity
    and text it lacked, lost) and never put right, since the whole item then counted as
    unchanged. An entity XML does not define (``&nbsp;``, common in feeds written as
    HTML) is let through: the document is whole, and the lenient parser reads it."""
    if not isinstance(error, xml.sax.SAXParseException):
        return
    reason = error.getMessage()
    if "undefined entity" in reason:
        return
    raise FeedError(
        f"not well-formed XML (line {error.getLineNumber()}, column "
        f"{error.getColumnNumber()}: {reason}); nothing in it was applied"
    )


_ENTITY_REFERENCE: Final = re.compile(rb"&([A-Za-z_:][A-Za-z0-9_.:-]*);")
_XML_ENTITIES: Final = frozenset({b"amp", b"lt", b"gt", b"quot", b"apos"})


def _blank_html_entity(match: re.Match[bytes]) -> bytes:
    if match.group(1) in _XML_ENTITIES:
        return match.group(0)
    return b"x" * len(match.group(0))  # as long: the line and column of an error stay


def _check_well_formed(data: bytes) -> None:
    """Refuse a document that is not well-formed XML, read whole by expat on its own:
    feedparser stops looking at the first error, and an HTML entity (``&nbsp;``), which it
    tolerates, hid a truncation after it. Entities XML does not define are blanked first
    (the document is whole, and the lenient parser reads them)."""
    parser = expat.ParserCreate()
    try:
        parser.Parse(_ENTITY_REFERENCE.sub(_blank_html_entity, data), True)
    except expat.ExpatError as exc:
        code = exc.code
        if code in (
            expat.errors.codes[expat.errors.XML_ERROR_UNKNOWN_ENCODING],
            expat.errors.codes[expat.errors.XML_ERROR_INCORRECT_ENCODING],
            expat.errors.codes[expat.errors.XML_ERROR_UNDEFINED_ENTITY],
        ):
            return  # an encoding expat cannot read (feedparser converts it), or entities
            # in one the blanking could not see (UTF-16): feedparser's own check decides
        raise FeedError(
            f"not well-formed XML (line {exc.lineno}, column {exc.offset}: "
            f"{expat.ErrorString(code)}); nothing in it was applied"
        ) from None
    except (LookupError, ValueError):  # an encoding Python cannot give expat: as above
        return


def _text(entry: object, key: str) -> str | None:
    """A string field of a feedparser dict, read without its deprecated key fallbacks."""
    value = dict.get(entry, key) if isinstance(entry, dict) else None
    return value if isinstance(value, str) else None


def _detail_is_html(entry: object, key: str) -> bool:
    detail = dict.get(entry, key) if isinstance(entry, dict) else None
    kind = dict.get(detail, "type") if isinstance(detail, dict) else None
    return isinstance(kind, str) and "html" in kind


def _parsed_time(entry: object, key: str) -> datetime | None:
    value = dict.get(entry, key) if isinstance(entry, dict) else None
    if not isinstance(value, time.struct_time):
        return None
    try:
        return datetime(*value[:6], tzinfo=UTC)
    except (ValueError, OverflowError, TypeError):
        return None


def _body(entry: dict[str, object]) -> tuple[str, bool]:
    """The item's longest text: (value, is_html)."""
    content = dict.get(entry, "content")
    if isinstance(content, list):
        for part in content:
            value = dict.get(part, "value") if isinstance(part, dict) else None
            if isinstance(value, str) and value.strip():
                kind = dict.get(part, "type")
                return value, not (isinstance(kind, str) and kind == "text/plain")
    summary = _text(entry, "summary") or ""
    return summary, _detail_is_html(entry, "summary_detail") or "<" in summary


def _categories(entry: dict[str, object]) -> list[str]:
    tags = dict.get(entry, "tags")
    terms: list[str] = []
    for tag in tags if isinstance(tags, list) else []:
        term = dict.get(tag, "term") if isinstance(tag, dict) else None
        if isinstance(term, str) and term.strip():
            terms.append(clean_text(term[:200], single_line=True))
    return terms


class _Matchers:
    """Keyword patterns for one mapping's status keywords."""

    def __init__(self, keywords: Mapping[str, str]) -> None:
        self.keywords = keywords
        # Longest first, so "postmortem" is not shadowed by a shorter keyword.
        words = "|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True))
        self.title = re.compile(
            rf"^\s*[\[(]?\s*(?P<a>{words})\s*[\])]?\s*{_SEPARATORS}"
            rf"|[\[(]\s*(?P<b>{words})\s*[\])]"
            rf"|{_SEPARATORS}\s*(?P<c>{words})\s*$",
            re.IGNORECASE,
        )
        self.line = re.compile(rf"^\s*(?P<a>{words})\s*{_SEPARATORS}\s", re.IGNORECASE)

    def status(self, categories: list[str], title: str, text: str) -> str | None:
        if not self.keywords:
            return None
        for term in categories:
            word = term.strip("[]() ").lower()
            if word in self.keywords:
                return self.keywords[word]
        found = self.title.search(title)
        if found:
            return self.keywords[next(g for g in found.groups() if g).lower()]
        for line in text.split("\n", 50)[:50]:
            found = self.line.match(line)
            if found:
                return self.keywords[found.group("a").lower()]
        return None


def _entry(entry: object, mapping: SourceMapping, matchers: _Matchers) -> Draft:
    if not isinstance(entry, dict):
        raise ItemError("item: not an entry")
    external_id = _text(entry, "id") or _text(entry, "link")
    if not external_id:
        raise ItemError("no guid/id and no link")
    raw_title = _text(entry, "title") or ""
    limits = mapping.limits
    title = (
        html_to_text(raw_title, limit=limits.max_title_chars)
        if _detail_is_html(entry, "title_detail")
        else raw_title
    )
    body, is_html = _body(entry)
    text = html_to_text(body, limit=limits.max_message_chars) if is_html else body
    categories = _categories(entry)
    status = matchers.status(categories, title, text) or "investigating"
    published = _parsed_time(entry, "published_parsed")
    updated = _parsed_time(entry, "updated_parsed") or published
    stamp = updated.isoformat() if updated else "undated"
    return Draft(
        external_id=external_id,
        version=f"{stamp}/{content_hash(title, text, status)}",
        title=title,
        message=text,
        status=status,
        severity=resolve_severity(categories, CATEGORY_SEVERITIES, mapping),
        keys=[("category:", term) for term in categories],
        labels={"rss.categories": ", ".join(categories)} if categories else {},
        starts_at=published,
        updated_at=updated,
        url=_text(entry, "link"),
    )
