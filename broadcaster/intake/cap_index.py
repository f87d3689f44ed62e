"""Indexes of CAP alerts (Atom, or RSS 2.0) to the links of the alerts to fetch.

Issuers publish an index feed whose entries point at CAP documents; the watcher fetches
each link it has not seen at that ``updated`` time and gives the body to
:func:`broadcaster.intake.cap.parse`. Per entry, the link is the first of: an alternate
link whose type mentions ``cap``; any alternate (or rel-less) link; the entry id when it
is a URL. Only absolute http(s) URLs are returned; an entry without one is skipped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET  # types only: parsing goes through defusedxml
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Final

from broadcaster.intake.events import FeedError, Limits, SkippedItem
from broadcaster.intake.normalise import parse_datetime, short_id, utc
from broadcaster.intake.text import safe_url
from broadcaster.intake.xmlsafe import local_name, parse_xml

ATOM: Final = "http://www.w3.org/2005/Atom"


@dataclass(frozen=True)
class CapLink:
    """One alert to fetch: its URL, the index entry's id and updated time (for skipping
    alerts already fetched)."""

    url: str
    entry_id: str | None = None
    updated: datetime | None = None


@dataclass(frozen=True)
class IndexResult:
    links: list[CapLink] = field(default_factory=list)
    skipped: list[SkippedItem] = field(default_factory=list)


def parse_index(data: bytes, *, limits: Limits | None = None) -> IndexResult:
    """The alert links of an Atom or RSS 2.0 index of CAP alerts.

    :raises FeedError: too large, not well-formed, with a DTD or entities, or neither
        Atom nor RSS.
    """
    limits = limits or Limits()
    root = parse_xml(data, limits)
    if root.tag == f"{{{ATOM}}}feed":
        entries = [_atom_entry(e, limits) for e in root.findall(f"{{{ATOM}}}entry")]
    elif root.tag == "rss":
        entries = [_rss_item(e, limits) for e in root.iterfind("channel/item")]
    else:
        raise FeedError(f"not an Atom or RSS index (root element {local_name(root.tag)!r})")
    result = IndexResult()
    for count, (entry_id, link, updated) in enumerate(entries):
        if count >= limits.max_items:
            result.skipped.append(
                SkippedItem(f"{len(entries) - count} item(s) over the limit of {limits.max_items}")
            )
            break
        if link is None:
            result.skipped.append(SkippedItem("no absolute http(s) link", short_id(entry_id)))
            continue
        result.links.append(CapLink(link, short_id(entry_id), updated))
    return result


def _child_text(parent: ET.Element, tag: str) -> str | None:
    child = parent.find(tag)
    if child is None:
        return None
    return "".join(child.itertext()).strip() or None


def _atom_entry(
    entry: ET.Element, limits: Limits
) -> tuple[str | None, str | None, datetime | None]:
    entry_id = _child_text(entry, f"{{{ATOM}}}id")
    preferred: list[str] = []
    others: list[str] = []
    for link in entry.findall(f"{{{ATOM}}}link"):
        rel = link.get("rel", "alternate")
        url = safe_url(link.get("href"), limit=limits.max_url_chars)
        if url is None or rel != "alternate":
            continue
        (preferred if "cap" in link.get("type", "").lower() else others).append(url)
    url = next(iter(preferred + others), None) or safe_url(entry_id, limit=limits.max_url_chars)
    updated = _child_text(entry, f"{{{ATOM}}}updated") or _child_text(entry, f"{{{ATOM}}}published")
    return entry_id, url, parse_datetime(updated)


def _rss_item(item: ET.Element, limits: Limits) -> tuple[str | None, str | None, datetime | None]:
    guid = _child_text(item, "guid")
    url = safe_url(_child_text(item, "link"), limit=limits.max_url_chars) or safe_url(
        guid, limit=limits.max_url_chars
    )
    return guid, url, _rfc822(_child_text(item, "pubDate"))


def _rfc822(value: str | None) -> datetime | None:
    if value is None or len(value) > 64:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return utc(parsed)
