"""SMS segment arithmetic: GSM-7 or UCS-2, how many segments, and fitting a text to N.

An SMS carries 140 octets. A message whose every character is in the GSM 03.38 default
alphabet (basic table, or extension table at two septets each: escape + code) is sent as
GSM-7: 160 septets in one SMS, 153 per part when it has to be split (the 6-octet
concatenation header takes the rest). A single character outside that alphabet switches
the *whole* message to UCS-2: 70 UTF-16 code units in one SMS, 67 per part.

Before counting, :func:`fit` writes a text in the GSM alphabet when that makes the whole
of it GSM-7 (:func:`gsm7_fold`: typographic punctuation, accented Latin letters the alphabet
lacks), so that one ``ë`` in a name or one curly apostrophe does not cost more than half of
every part.

Splitting never separates what a phone must render together, as Twilio's segment
calculator (and Android's encoder) do: an escape from its code, a surrogate pair, or a
grapheme cluster (a base with its combining marks, variation selectors, skin-tone
modifiers, zero-width-joiner sequences, flag pairs). A part can therefore hold slightly
fewer than 153 / 67 units, and a message can need one part more than ``units / 153``.

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

GSM7_BASIC: frozenset[str] = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039eÆæßÉ"  # Δ_ΦΓΛΩΠΨΣΘΞ, no ESC
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
"""The GSM 03.38 basic table (127 characters: 0x1B is the escape, not a character)."""

GSM7_EXTENSION: frozenset[str] = frozenset("\f^{}\\[~]|€")
"""The extension table: each costs two septets (escape + code)."""

_GSM7: frozenset[str] = GSM7_BASIC | GSM7_EXTENSION

SINGLE_LIMIT: dict[Encoding, int] = {"GSM-7": 160, "UCS-2": 70}
MULTI_LIMIT: dict[Encoding, int] = {"GSM-7": 153, "UCS-2": 67}

LINK_SEPARATOR = "\n"
"""Between the text and the link: one septet either way, and the link gets its own line."""

_ZWJ = "\u200d"
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]»”’]*(?=\s|$)")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """How a text goes out: its encoding, its size in units, and the number of SMS parts.

    ``units`` are septets for GSM-7 (extension characters count two) and UTF-16 code
    units for UCS-2 (characters beyond the BMP, most emoji, count two).
    """

    encoding: Encoding
    units: int
    segments: int


def is_gsm7(text: str) -> bool:
    """True when every character is in the GSM 03.38 basic or extension table."""
    return _GSM7.issuperset(text)


def segments(text: str) -> SegmentInfo:
    """Encoding, size and number of parts of ``text`` (an empty text is one SMS)."""
    encoding: Encoding = "GSM-7" if is_gsm7(text) else "UCS-2"
    if encoding == "GSM-7":
        # Counted in C: the escape of each extension character is its second septet.
        units = len(text) + sum(map(text.count, GSM7_EXTENSION))
        if units <= SINGLE_LIMIT["GSM-7"]:
            return SegmentInfo("GSM-7", units, 1)
        if units == len(text):  # one septet each: no escape to keep with its code
            return SegmentInfo("GSM-7", units, -(-units // MULTI_LIMIT["GSM-7"]))
        costs = [2 if c in GSM7_EXTENSION else 1 for c in text]
    else:
        units = len(text.encode("utf-16-le", "surrogatepass")) // 2
        if units <= SINGLE_LIMIT["UCS-2"]:
            return SegmentInfo("UCS-2", units, 1)
        costs = []
        for cluster in _clusters(text):
            size = _utf16_units(cluster)
            if size <= MULTI_LIMIT["UCS-2"]:
                costs.append(size)
            else:  # a pathological cluster (a base with hundreds of marks): split it anyway
                costs.extend(_utf16_units(c) for c in cluster)
    units = sum(costs)
    if units <= SINGLE_LIMIT[encoding]:
        return SegmentInfo(encoding, units, 1)
    return SegmentInfo(encoding, units, _pack(costs, MULTI_LIMIT[encoding]))


def fits(text: str, max_segments: int) -> bool:
    return segments(text).segments <= max_segments


@functools.lru_cache(maxsize=1024)
def fit(text: str, link: str, max_segments: int) -> str:
    """``text``, then ``link`` on its own line, in at most ``max_segments`` parts; typographic
    punctuation and accented Latin letters written the GSM-7 way where that makes the
    message GSM-7 (:func:`gsm7_fold`).

    When everything fits it is returned whole (trailing blank space of ``text`` dropped).
    Otherwise the text is cut after the last complete sentence (ending in ``.``, ``!`` or
    ``?``) or line that still leaves room for the link (each shortened text written the
    GSM-7 way on its own, when that makes it GSM-7). When not even the first sentence
    fits, it is cut after the last whole word that fits and marked with an ellipsis:
    ``...`` while the message is GSM-7 (``…`` is not in the GSM alphabet and would
    switch the whole message to UCS-2, cutting its room from 160 to 70), ``…`` when it is
    UCS-2 anyway. When not even the first word fits, the link alone is returned.

    A text that already ends with ``link`` is not given it twice, so fitting is
    idempotent: ``fit(fit(t, link, n), link, n) == fit(t, link, n)``.

    An empty ``link`` means: no link, only the (shortened) text. Raises ``ValueError``
    when ``max_segments`` is below 1, when the link alone does not fit, or when there is
    no link and not even the first word fits (cutting inside a word is never done).

    Cached: the composer fits each message and the channel fits it again, and a round's
    messages are mostly the same text.
    """
    if max_segments < 1:
        raise ValueError(f"max_segments must be at least 1, not {max_segments}")
    link = link.strip()
    # Written the GSM-7 way only when the link is GSM-7 too: else the message is UCS-2
    # whatever its text, and folding would change letters for nothing.
    fold = gsm7_fold if is_gsm7(link) else str
    text = fold(text.rstrip())
    if link and text.endswith(link):  # fitted before (by the composer): fit again, not twice
        text = text.removesuffix(link).rstrip()
    whole = _join(text, link)
    if fits(whole, max_segments):  # then the link alone fits too
        return whole
    if link and not fits(link, max_segments):
        raise ValueError(
            f"the link alone needs {segments(link).segments} SMS segments, "
            f"more than max_segments={max_segments}"
        )
    # Each shortened text is folded on its own: the whole could not be written in GSM-7
    # (an emoji, a Cyrillic name), but the sentences before it may, with room for more of
    # them; and fitting the result again must give the same result.
    for end in sorted(_sentence_ends(text), reverse=True):
        candidate = _join(fold(text[:end].rstrip()), link)
        if fits(candidate, max_segments):
            return candidate
    for match in reversed(list(_WORD.finditer(text))):
        body = fold(text[: match.end()])
        ellipsis = "..." if is_gsm7(body + link) else "…"
        candidate = _join(body + ellipsis, link)
        if fits(candidate, max_segments):
            return candidate
    if link:
        return link
    raise ValueError(
        f"the text cannot be shortened to {max_segments} SMS segments without cutting a word"
    )


_TYPOGRAPHY = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
        "\u2212": "-", "\u2026": "...", "\u00a0": " ", "\u202f": " ", "\u2009": " ",
    }
)  # fmt: skip

_LATIN_LETTERS: dict[str, str] = {
    "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "ħ": "h", "Ħ": "H",
    "ı": "i", "ŧ": "t", "Ŧ": "T", "œ": "oe", "Œ": "OE", "ĳ": "ij", "Ĳ": "IJ",
    "þ": "th", "Þ": "Th", "ẞ": "SS", "ſ": "s", "ŀ": "l", "Ŀ": "L",
}  # fmt: skip
"""Latin letters outside the GSM alphabet that Unicode does not decompose into a base
letter and marks, with the letters they are written as."""


def gsm7_fold(text: str) -> str:
    """``text`` written in the GSM alphabet when that can make the whole of it GSM-7; else
    as it is. One character outside the alphabet makes a whole message UCS-2: 70 characters
    a part instead of 160, and the sentences after the first (the promise of the next
    update, the staff's message) cut to fit. So, as Twilio's Smart Encoding does:

    - typographic quotes, dashes and ellipses (``metro’s``, as a word processor writes it)
      become ``' " - ...``; no-break and narrow spaces become spaces;
    - Latin letters with accents the alphabet lacks lose them (``Zoë`` → ``Zoe``,
      ``België`` → ``Belgie``, ``ç`` → ``c``, ``á`` → ``a``, ``ł`` → ``l``); those it has
      (``é è ù ì ò à ä ö ñ ü å Å Ä Ö Ñ Ü Ç Ø ø É Æ æ ß``) stay. A letter typed as a base and
      a combining accent is first joined (``é`` is one GSM character).

    A text with anything else outside the alphabet (Cyrillic, Greek beyond the alphabet's
    capitals, CJK, an emoji) stays UCS-2 and is returned unchanged: folding part of it
    would only change its letters, not its encoding."""
    if is_gsm7(text):
        return text
    folded = unicodedata.normalize("NFC", text.translate(_TYPOGRAPHY))
    table: dict[int, str] = {}
    for char in set(folded).difference(_GSM7):
        replacement = _latin_fold(char)
        if replacement is None:
            return text
        table[ord(char)] = replacement
    return folded.translate(table)


gsm7_punctuation = gsm7_fold
"""The earlier name of :func:`gsm7_fold`, from when it folded only punctuation and spaces."""


@functools.lru_cache(maxsize=512)
def _latin_fold(char: str) -> str | None:
    """What a character outside the GSM alphabet is written as in GSM-7, or None when it
    is no Latin letter (or stray combining mark) that has a GSM-7 form."""
    if char in _LATIN_LETTERS:
        return _LATIN_LETTERS[char]
    if unicodedata.combining(char):  # a mark no letter composed with: dropped
        return ""
    if not unicodedata.name(char, "").startswith("LATIN "):
        return None
    base = "".join(c for c in unicodedata.normalize("NFD", char) if not unicodedata.combining(c))
    return base if base and _GSM7.issuperset(base) else None


def _join(body: str, link: str) -> str:
    if body and link:
        return f"{body}{LINK_SEPARATOR}{link}"
    return body or link


def _sentence_ends(text: str) -> set[int]:
    """Offsets where a prefix of ``text`` is whole sentences or whole lines."""
    ends = {m.end() for m in _SENTENCE_END.finditer(text)}
    ends.update(m.start() for m in re.finditer("\n", text))
    return {end for end in ends if text[:end].strip()}


def _pack(costs: list[int], capacity: int) -> int:
    """Parts needed to hold ``costs`` in order, never splitting one item across parts."""
    parts, used = 1, 0
    for cost in costs:
        if used + cost > capacity:
            parts += 1
            used = 0
        used += cost
    return parts


def _utf16_units(text: str) -> int:
    return sum(2 if ord(c) > 0xFFFF else 1 for c in text)


def _extends(char: str) -> bool:
    """Does ``char`` attach to the character before it (UAX #29 Extend, roughly)?"""
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Me", "Mc")
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= code <= 0xE007F  # emoji tag sequences (subdivision flags)
        or char == "\u200c"  # zero-width non-joiner
    )


def _is_regional_indicator(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def _clusters(text: str) -> Iterator[str]:
    """Grapheme clusters, close enough to UAX #29 for emoji, flags and combining marks."""
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        if _is_regional_indicator(text[i]) and j < n and _is_regional_indicator(text[j]):
            j += 1  # a flag is a pair of regional indicators
        while j < n:
            if _extends(text[j]):
                j += 1
            elif text[j] == _ZWJ:
                j += 2 if j + 1 < n else 1  # the joiner and what it joins
            else:
                break
        yield text[i:j]
        i = j
