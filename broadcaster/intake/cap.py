"""CAP 1.2 (and 1.1) alerts to events; XML read by defusedxml, no DTDs, no entities.

One event per alert message. Decisions:

- **Identity across updates.** An ``Alert`` is its own incident: external id
  ``sender,identifier``. An ``Update`` or ``Cancel`` names earlier messages in
  ``references`` (``sender,identifier,sent`` triples); its external id is the earliest
  referenced message's ``sender,identifier``, so every update lands on the incident the
  first alert created. (The sender is part of the id because CAP identifiers are unique
  only per sender, and aggregated feeds mix senders.) The version is the message's own
  identifier (CAP messages are immutable), with ``/ended`` once it has expired. An Update
  that names only the message it replaces (itself an Update) lands there too: the event's
  ``references`` carry every referenced identifier, and the incident that applied one of
  them is the item's (:mod:`broadcaster.intake.apply`).
- **Status.** ``Cancel``, urgency ``Past``, or every ``info`` expired at ``now`` ->
  ``resolved``; otherwise ``identified`` (the issuer knows what is happening).
  ``status`` other than ``Actual`` (Exercise, System, Test, Draft) and ``msgType`` Ack
  or Error are skipped: they are not for the public.
- **Severity.** From the primary ``info``: Extreme -> critical; Severe -> critical when
  urgency is Immediate, else major; Moderate -> major when Immediate or Expected, else
  minor; Minor -> minor; Unknown -> the default. Overrides may use ``Severe/Immediate``
  or ``Severe`` as keys.
- **Texts.** The primary ``info`` (preferred language; CAP's default is en-US) gives the
  title (headline, else event) and message (description, then instruction); every
  ``info`` with a language is in ``languages``. ``web`` is the URL.
- **Keys** for the maps: ``area:<areaDesc>``, ``<valueName>:<value>`` per geocode (e.g.
  ``SAME:006037``), ``event:<event>``, ``category:<category>``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET  # types only: parsing goes through defusedxml
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from broadcaster.intake.events import FeedError, ParseResult, SourceMapping
from broadcaster.intake.normalise import (
    Collector,
    Draft,
    ItemError,
    check_now,
    parse_datetime,
    resolve_severity,
)
from broadcaster.intake.xmlsafe import local_name, namespace, parse_xml

CAP_NAMESPACES: Final = frozenset(
    {"urn:oasis:names:tc:emergency:cap:1.2", "urn:oasis:names:tc:emergency:cap:1.1"}
)
CAP_SEVERITIES: Final[Mapping[str, str]] = {
    "extreme": "critical",
    "severe/immediate": "critical",
    "severe": "major",
    "moderate/immediate": "major",
    "moderate/expected": "major",
    "moderate": "minor",
    "minor": "minor",
}
OPEN_STATUS: Final = "identified"


@dataclass(frozen=True)
class _Info:
    language: str
    title: str
    message: str
    severity: str
    urgency: str
    starts_at: datetime | None
    expires_at: datetime | None
    url: str | None


class _Reader:
    """Child-element text in the alert's own namespace."""

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def find(self, parent: ET.Element, name: str) -> str | None:
        child = parent.find(f"{{{self.ns}}}{name}")
        if child is None:
            return None
        return "".join(child.itertext()).strip() or None

    def all(self, parent: ET.Element, name: str) -> list[ET.Element]:
        return parent.findall(f"{{{self.ns}}}{name}")


def parse(data: bytes, mapping: SourceMapping, *, source: str, now: datetime) -> ParseResult:
    """The event of one CAP alert (or a skip saying why it gives none).

    :raises FeedError: too large, not well-formed, declares a DTD or entities
        (reason ``XML entity/DTD refused``), or is not a CAP alert.
    """
    now = check_now(now)
    root = parse_xml(data, mapping.limits)
    ns = namespace(root.tag)
    if local_name(root.tag) != "alert" or ns not in CAP_NAMESPACES:
        raise FeedError("not a CAP 1.1/1.2 alert")
    reader = _Reader(ns)
    collector = Collector(mapping, source, now=check_now(now))
    collector.item(reader.find(root, "identifier"), lambda: _alert(root, reader, mapping, now))
    return collector.result()


def _reference_ids(references: str) -> tuple[str | None, list[tuple[str, str]]]:
    """``sender,identifier`` of the earliest message in a ``references`` value, and the
    sender and identifier of them all, in order (an identifier is unique per sender only)."""
    triples = []
    for position, token in enumerate(references.split()):
        parts = token.split(",")
        if len(parts) == 3 and parts[0] and parts[1]:
            sent = parse_datetime(parts[2])
            triples.append((sent is None, sent.timestamp() if sent else 0.0, position, parts))
    if not triples:
        return None, []
    parts = min(triples)[3]
    return f"{parts[0]},{parts[1]}", [(t[3][0], t[3][1]) for t in triples]


def _info(info: ET.Element, reader: _Reader) -> _Info:
    texts = [reader.find(info, "description"), reader.find(info, "instruction")]
    return _Info(
        language=reader.find(info, "language") or "en-US",
        title=reader.find(info, "headline") or reader.find(info, "event") or "",
        message="\n\n".join(t for t in texts if t),
        severity=reader.find(info, "severity") or "Unknown",
        urgency=reader.find(info, "urgency") or "Unknown",
        starts_at=parse_datetime(reader.find(info, "onset"))
        or parse_datetime(reader.find(info, "effective")),
        expires_at=parse_datetime(reader.find(info, "expires")),
        url=reader.find(info, "web"),
    )


def _primary(infos: list[_Info], preferred: tuple[str, ...]) -> _Info:
    for wanted in preferred:
        for info in infos:
            tag = info.language.lower()
            if tag == wanted.lower() or tag.startswith(wanted.lower() + "-"):
                return info
    return infos[0]


def _languages(infos: list[_Info]) -> dict[str, tuple[str, str]]:
    languages: dict[str, tuple[str, str]] = {}
    for info in infos:
        languages.setdefault(info.language, (info.title, info.message))
    return languages


def _keys(infos: list[ET.Element], reader: _Reader) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for info in infos:
        for name in ("event", "category"):
            for element in reader.all(info, name):
                if element.text and element.text.strip():
                    keys.append((f"{name}:", element.text.strip()))
        for area in reader.all(info, "area"):
            description = reader.find(area, "areaDesc")
            if description:
                keys.append(("area:", description))
            for geocode in reader.all(area, "geocode"):
                scheme = reader.find(geocode, "valueName")
                value = reader.find(geocode, "value")
                if scheme and value:
                    keys.append((f"{scheme}:", value))
    return keys


def _alert(root: ET.Element, reader: _Reader, mapping: SourceMapping, now: datetime) -> Draft:
    identifier = reader.find(root, "identifier")
    sender = reader.find(root, "sender")
    if not identifier or not sender:
        raise ItemError("identifier or sender missing")
    status = reader.find(root, "status") or ""
    if status != "Actual":
        raise ItemError(f"status {status[:20]!r} is not an actual alert")
    msg_type = reader.find(root, "msgType") or ""
    if msg_type not in ("Alert", "Update", "Cancel"):
        raise ItemError(f"msgType {msg_type[:20]!r} is not an alert, update or cancel")
    sent = parse_datetime(reader.find(root, "sent"))
    external_id = f"{sender},{identifier}"
    referenced_versions: list[tuple[str, str]] = []
    if msg_type != "Alert":
        # CAP 1.2 requires an Update or Cancel to name what it changes. Without a readable
        # triple it would open an incident of its own (a second first notice), or cancel
        # nothing, silently.
        references = reader.find(root, "references") or ""
        referenced, identifiers = _reference_ids(references)
        if referenced is None:
            raise ItemError(
                f"references {references[:80]!r}: an {msg_type} must name the alert it "
                "changes as sender,identifier,sent triples separated by spaces"
            )
        external_id = referenced
        # The versions those messages were applied as (an expired one's has /ended), each
        # on an item of its own sender: "sender," begins the external id of its alerts.
        referenced_versions = [
            (f"{sender_of},", v) for sender_of, i in identifiers for v in (i, f"{i}/ended")
        ]
    elements = reader.all(root, "info")
    infos = [_info(element, reader) for element in elements]
    if infos:
        primary = _primary(infos, mapping.preferred_languages)
    else:  # a Cancel may carry only a note
        note = reader.find(root, "note") or ""
        primary = _Info("", "", note, "Unknown", "Unknown", None, None, None)
    expired = bool(infos) and all(i.expires_at is not None and i.expires_at <= now for i in infos)
    ended = msg_type == "Cancel" or primary.urgency == "Past" or expired
    ends_at: datetime | None = None
    if ended:
        ends_at = primary.expires_at if expired and msg_type != "Cancel" else sent
    labels = {
        "cap.identifier": identifier,
        "cap.sender": sender,
        "cap.msgType": msg_type,
        "cap.severity": primary.severity,
        "cap.urgency": primary.urgency,
    }
    for name in ("scope", "incidents"):
        value = reader.find(root, name)
        if value:
            labels[f"cap.{name}"] = value
    return Draft(
        external_id=external_id,
        version=identifier + ("/ended" if expired else ""),
        title=primary.title,
        message=primary.message,
        status="resolved" if ended else OPEN_STATUS,
        severity=resolve_severity(
            [f"{primary.severity}/{primary.urgency}", primary.severity], CAP_SEVERITIES, mapping
        ),
        keys=_keys(elements, reader),
        labels=labels,
        starts_at=primary.starts_at or sent,
        ends_at=ends_at,
        expires_at=primary.expires_at,
        updated_at=sent,
        languages=_languages(infos),
        url=primary.url,
        references=referenced_versions,
    )
