"""Text from untrusted sources made safe to store and send: cleaning, HTML to text, URLs.

Feeds are written by others; what we keep must be plain, printable, bounded text. Control
characters, lone surrogates (they make UTF-8 encoding fail later, far from here) and
bidirectional overrides (they can make a message read differently than it is stored) are
removed; HTML is reduced to its text, never interpreted; only http(s) URLs are kept.
"""

from __future__ import annotations

import html
import re
import unicodedata
from html.parser import HTMLParser
from typing import Final
from urllib.parse import urlsplit

ELLIPSIS: Final = "…"
_BIDI_CONTROLS: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_LINE_BREAKS: Final = str.maketrans({"\r": "\n", "\u2028": "\n", "\u2029": "\n", "\x85": "\n"})
_SPACES: Final = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_TAG: Final = re.compile(r"<[^<>]*>")
_SCRIPTS: Final = re.compile(r"<(script|style)\b.*?(</\1\s*>|$)", re.I | re.S)
_BLANK_LINES: Final = re.compile(r"\n{3,}")
_ANY_WHITESPACE: Final = re.compile(r"\s+")

_SKIPPED_ELEMENTS: Final = frozenset({"script", "style", "template", "head", "iframe", "object"})
_BLOCK_ELEMENTS: Final = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
        "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header",
        "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul",
    }
)  # fmt: skip
_HTML_INPUT_FACTOR: Final = 8
"""HTML read per character of text kept: bounds the parser's work on a hostile document."""


def _keep(char: str) -> bool:
    if char in "\n\t":
        return True
    if char in _BIDI_CONTROLS or char == "\ufeff":
        return False
    return unicodedata.category(char) not in ("Cc", "Cs")


def printable(value: str) -> str:
    """``value`` in NFC with ``\\n`` line breaks and nothing invisible that could change how
    it reads or break its encoding: no control characters but newline and tab, no
    bidirectional overrides, no byte-order mark, no lone surrogates. Spacing is kept."""
    # A lone surrogate cannot be normalised; drop those first.
    value = "".join(c for c in value if not "\ud800" <= c <= "\udfff")
    value = unicodedata.normalize("NFC", value.replace("\r\n", "\n").translate(_LINE_BREAKS))
    return "".join(c for c in value if _keep(c))


def clean_text(value: str, *, single_line: bool = False) -> str:
    """Printable text: NFC, no control characters, tidy whitespace.

    ``single_line`` folds every run of whitespace (newlines included) into one space.
    """
    value = printable(value)
    if single_line:
        return _ANY_WHITESPACE.sub(" ", value).strip()
    lines = [_SPACES.sub(" ", line).strip() for line in value.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def truncate(value: str, limit: int) -> str:
    """``value`` cut to at most ``limit`` characters, an ellipsis marking the cut."""
    if len(value) <= limit:
        return value
    return value[: max(limit - 1, 0)].rstrip() + ELLIPSIS


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_ELEMENTS:
            self._skipping.append(tag)
        elif tag in _BLOCK_ELEMENTS:
            self.parts.append("\n")
        if tag == "li" and not self._skipping:
            self.parts.append("- ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_ELEMENTS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self._skipping:
            if tag == self._skipping[-1]:
                self._skipping.pop()
            return
        if tag in _BLOCK_ELEMENTS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(markup: str, *, limit: int) -> str:
    """The text of an HTML fragment (tags dropped, entities decoded), at most ``limit`` chars.

    Nothing is rendered or fetched: links keep their text, images and scripts vanish.
    """
    extractor = _TextExtractor()
    cut = markup[: limit * _HTML_INPUT_FACTOR]
    try:
        extractor.feed(cut)
        extractor.close()
        text = "".join(extractor.parts)
    except (AssertionError, ValueError):
        # The standard parser gives up on some malformed markup (``<![phase 2]``, an
        # unknown marked section): keep the text, with tags dropped the plain way.
        text = html.unescape(_TAG.sub(" ", _SCRIPTS.sub(" ", cut)))
    # Inline whitespace in HTML is not significant: fold it, keep the block breaks.
    text = "\n".join(_SPACES.sub(" ", line) for line in text.replace("\r", " ").split("\n"))
    return truncate(clean_text(text), limit)


def plain_text(value: str, *, limit: int, single_line: bool = False) -> str:
    """Cleaned and truncated text; the input is cut first, so a huge field costs little."""
    return truncate(clean_text(value[: limit * 2 + 16], single_line=single_line), limit)


def safe_url(value: str | None, *, limit: int) -> str | None:
    """``value`` if it is an absolute http(s) URL of at most ``limit`` characters, else None.

    ``javascript:``, ``data:`` and relative URLs are refused: the URL ends up as a link on
    a public incident page and in messages.
    """
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > limit or any(not c.isprintable() or c.isspace() for c in value):
        return None
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or not port_ok:
        return None
    # Schemes are case-insensitive (RFC 3986): write it the canonical way.
    return scheme + value[len(parts.scheme) :]
