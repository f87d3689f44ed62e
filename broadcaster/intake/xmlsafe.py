"""XML from untrusted sources, parsed without entities, DTDs or network access.

Entity expansion (billion laughs), external entities (file and URL reads) and DTD
fetches are refused before any parser sees them: :class:`FeedError` with the reason
``XML entity/DTD refused``. The formats we read (CAP, Atom, RSS 2.0) need none of them.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # types only: parsing goes through defusedxml
from typing import Final

import defusedxml
import defusedxml.ElementTree as SafeET

from broadcaster.intake.events import FeedError, Limits
from broadcaster.intake.normalise import check_size

ENTITY_REFUSED: Final = "XML entity/DTD refused"
_DECLARATION: Final = re.compile(rb"<!\s*(ENTITY|DOCTYPE)", re.IGNORECASE)


def refuse_declarations(data: bytes, *, allow_doctype: bool = False) -> None:
    """:class:`FeedError` if ``data`` declares entities (or, unless allowed, has a DOCTYPE).

    The check also looks through NUL bytes, so a UTF-16 or UTF-32 document cannot hide a
    declaration from it.
    """
    for probe in (data, data.replace(b"\x00", b"")):
        for match in _DECLARATION.finditer(probe):
            if match.group(1).upper() == b"ENTITY" or not allow_doctype:
                raise FeedError(ENTITY_REFUSED)
            # A DOCTYPE with an internal subset can declare parameter entities.
            end = probe.find(b">", match.end())
            if b"[" in probe[match.end() : end if end >= 0 else None]:
                raise FeedError(ENTITY_REFUSED)


def parse_xml(data: bytes, limits: Limits) -> ET.Element:
    """The root element of ``data``; :class:`FeedError` if too big, not XML, or with a DTD."""
    check_size(data, limits)
    refuse_declarations(data)
    try:
        root: ET.Element = SafeET.fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DefusedXmlException:
        raise FeedError(ENTITY_REFUSED) from None
    except (ET.ParseError, ValueError, LookupError) as exc:
        # ValueError and LookupError: an encoding declaration expat cannot use.
        raise FeedError(f"not well-formed XML: {str(exc)[:200]}") from None
    return root


def local_name(tag: object) -> str:
    """``{namespace}name`` -> ``name`` (comments and processing instructions give '')."""
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def namespace(tag: object) -> str:
    if not isinstance(tag, str) or not tag.startswith("{"):
        return ""
    return tag[1:].split("}", 1)[0]
