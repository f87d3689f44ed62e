"""SMS segment counting and fitting (channels.sms_segments), against golden cases and a
reference written here from the spec tables.

The reference works the way 3GPP TS 23.038 / 23.040 describe an SMS: 1120 bits of user
data, 48 of them taken by the concatenation header in every part of a split message,
7 bits per GSM septet and 16 per UCS-2 code unit. Its alphabet is the GSM 03.38 table
written by code position, not the module's character set.
"""

from __future__ import annotations

import re
import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.sms_segments import (
    SegmentInfo,
    fit,
    gsm7_fold,
    gsm7_punctuation,
    is_gsm7,
    segments,
)

# GSM 03.38 default alphabet by code, 0x00..0x7F; None marks 0x1B, the escape to the extension.
GSM_DEFAULT: list[int | None] = [
    *(0x40, 0xA3, 0x24, 0xA5, 0xE8, 0xE9, 0xF9, 0xEC, 0xF2, 0xC7, 0x0A, 0xD8, 0xF8, 0x0D),
    *(0xC5, 0xE5, 0x394, 0x5F, 0x3A6, 0x393, 0x39B, 0x3A9, 0x3A0, 0x3A8, 0x3A3, 0x398),
    *(0x39E, None, 0xC6, 0xE6, 0xDF, 0xC9),
    *(0x20, 0x21, 0x22, 0x23, 0xA4, *range(0x25, 0x40)),
    *(0xA1, *range(0x41, 0x5B), 0xC4, 0xD6, 0xD1, 0xDC, 0xA7),
    *(0xBF, *range(0x61, 0x7B), 0xE4, 0xF6, 0xF1, 0xFC, 0xE0),
]
GSM_EXTENSION: dict[int, int] = {
    0x0A: 0x0C,  # form feed
    0x14: 0x5E,  # ^
    0x28: 0x7B,  # {
    0x29: 0x7D,  # }
    0x2F: 0x5C,  # backslash
    0x3C: 0x5B,  # [
    0x3D: 0x7E,  # ~
    0x3E: 0x5D,  # ]
    0x40: 0x7C,  # |
    0x65: 0x20AC,  # euro sign
}
assert len(GSM_DEFAULT) == 128

TO_SEPTETS: dict[str, list[int]] = {
    chr(cp): [code] for code, cp in enumerate(GSM_DEFAULT) if cp is not None
}
TO_SEPTETS.update({chr(cp): [0x1B, code] for code, cp in GSM_EXTENSION.items()})

SMS_BITS = 1120
UDH_BITS = 48


def _char_class(codes: list[int]) -> str:
    """A regex character class for ``codes`` (sorted), as ranges of \\U escapes."""
    parts: list[str] = []
    start = prev = codes[0]
    for code in [*codes[1:], -1]:
        if code == prev + 1:
            prev = code
            continue
        parts.append(f"\\U{start:08x}" if start == prev else f"\\U{start:08x}-\\U{prev:08x}")
        start = prev = code
    return "[" + "".join(parts) + "]"


_EXTEND = _char_class(
    sorted(
        {
            cp
            for cp in range(sys.maxunicode + 1)
            if unicodedata.category(chr(cp)) in {"Mn", "Me", "Mc"}
        }
        | set(range(0xFE00, 0xFE10))
        | set(range(0x1F3FB, 0x1F400))
        | set(range(0xE0020, 0xE0080))
        | {0x200C}
    )
)
_RI = r"[\U0001F1E6-\U0001F1FF]"
GRAPHEME = re.compile(rf"(?:{_RI}{_RI}|.)(?:{_EXTEND}|\u200d.?)*", re.DOTALL)


def reference(text: str) -> SegmentInfo:
    """Segments by bit arithmetic over the spec tables, never splitting a character."""
    if all(c in TO_SEPTETS for c in text):
        sizes = [7 * len(TO_SEPTETS[c]) for c in text]
        info = ("GSM-7", sum(len(TO_SEPTETS[c]) for c in text))
    else:
        sizes = []
        for grapheme in GRAPHEME.findall(text):
            bits = 8 * len(grapheme.encode("utf-16-be"))
            if bits <= SMS_BITS - UDH_BITS:
                sizes.append(bits)
            else:  # longer than a part: only code points stay whole
                sizes.extend(8 * len(c.encode("utf-16-be")) for c in grapheme)
        info = ("UCS-2", len(text.encode("utf-16-be")) // 2)
    if sum(sizes) <= SMS_BITS:
        return SegmentInfo(info[0], info[1], 1)  # type: ignore[arg-type]
    parts, free = 1, SMS_BITS - UDH_BITS
    for bits in sizes:
        if bits > free:
            parts, free = parts + 1, SMS_BITS - UDH_BITS
        free -= bits
    return SegmentInfo(info[0], info[1], parts)  # type: ignore[arg-type]


GOLDEN = [
    ("", "GSM-7", 0, 1),
    ("a" * 160, "GSM-7", 160, 1),
    ("a" * 161, "GSM-7", 161, 2),
    ("a" * 306, "GSM-7", 306, 2),
    ("a" * 307, "GSM-7", 307, 3),
    ("a" * 459, "GSM-7", 459, 3),
    ("a" * 460, "GSM-7", 460, 4),
    ("€" * 80, "GSM-7", 160, 1),
    ("a" * 159 + "€", "GSM-7", 161, 2),
    # the escape is not split from its code: 152 | € + 151 | 1
    ("a" * 152 + "€" + "a" * 152, "GSM-7", 306, 3),
    ("Ça coûte 5$ [~10€] {ok} \\ | ^", "UCS-2", 29, 1),  # û is not GSM
    ("Ça va: 5$ [~10€] {ok} \\ | ^\f", "GSM-7", 38, 1),
    ("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà\n\r", "GSM-7", 44, 1),
    ("ç", "UCS-2", 1, 1),  # only the capital C-cedilla is in the table
    ("`", "UCS-2", 1, 1),
    ("\t", "UCS-2", 1, 1),
    ("\u2126", "UCS-2", 1, 1),  # OHM SIGN is not GREEK CAPITAL OMEGA
    ("\u0391", "UCS-2", 1, 1),  # GREEK CAPITAL ALPHA looks like A but is not in the table
    ("ç" * 70, "UCS-2", 70, 1),
    ("ç" * 71, "UCS-2", 71, 2),
    ("ç" * 134, "UCS-2", 134, 2),
    ("ç" * 135, "UCS-2", 135, 3),
    ("😀" * 35, "UCS-2", 70, 1),
    ("😀" * 36, "UCS-2", 72, 2),
    # Twilio's calculator test: an emoji and 133 digits make 67 | 67 | 1
    ("😜" + "1234567890" * 13 + "123", "UCS-2", 135, 3),
    # a surrogate pair is not split: 66 | 😀 + 65 | 1
    ("a" * 66 + "😀" + "a" * 66, "UCS-2", 134, 3),
    # nor a grapheme cluster (thumb + skin tone): 65 | 👍🏽 + 63 | 1
    ("a" * 65 + "👍🏽" + "a" * 64, "UCS-2", 133, 3),
    # nor a zero-width-joiner sequence: 63 | 👨‍👩 + 62 | 3
    ("a" * 63 + "👨\u200d👩" + "a" * 65, "UCS-2", 133, 3),
    ("🇫🇷" * 17 + "a" * 2, "UCS-2", 70, 1),
    ("👨\u200d👩\u200d👧", "UCS-2", 8, 1),
]


@pytest.mark.parametrize(("text", "encoding", "units", "parts"), GOLDEN)
def test_golden(text: str, encoding: str, units: int, parts: int) -> None:
    assert segments(text) == SegmentInfo(encoding, units, parts)  # type: ignore[arg-type]
    assert reference(text) == segments(text)


GSM_CHARS = sorted(TO_SEPTETS)
NON_GSM = [
    *"çÀ`\t–—“”’…ûÿ\u0391\u2126",
    "\U0001f600",
    "\U0001f44d",
    "\U0001f3fd",
    "\u200d",
    "\U0001f1eb",
    "\U0001f1f7",
    "\u0301",
    "\ufe0f",
    "\u20e3",
]
gsm_text = st.text(st.sampled_from(GSM_CHARS), max_size=520)
mixed_text = st.text(
    st.one_of(
        st.sampled_from(GSM_CHARS),
        st.sampled_from(NON_GSM),
        st.characters(exclude_categories=["Cs"]),  # a lone surrogate is no text
    ),
    max_size=220,
)


@given(st.one_of(gsm_text, mixed_text))
def test_counting_matches_the_reference(text: str) -> None:
    assert segments(text) == reference(text)


BOUNDARY_CHARS = ["a", "€", "😀", "👍", "\U0001f3fd", "ç", "\u200d", "\U0001f1eb", "\u0301"]


@given(st.text(st.sampled_from(BOUNDARY_CHARS), min_size=60, max_size=240))
def test_counting_at_part_boundaries(text: str) -> None:
    assert segments(text) == reference(text)


# fit() -------------------------------------------------------------------------------------

LINK = "https://status.example.com/i/42"


def test_fit_keeps_a_text_that_fits() -> None:
    assert fit("Trains stopped. Next update 14:30.  \n", LINK, 1) == (
        f"Trains stopped. Next update 14:30.\n{LINK}"
    )


def test_fit_cuts_after_the_last_sentence_that_fits() -> None:
    text = "Line 4 is stopped at Central. " * 3 + "A replacement bus runs every ten minutes."
    result = fit(text, LINK, 1)  # 131 + 1 + 31 septets do not fit in 160
    assert result == ("Line 4 is stopped at Central. " * 3).rstrip() + "\n" + LINK
    assert segments(result).segments == 1


def test_fit_cuts_at_a_line_break() -> None:
    text = "Line 4 is stopped at Central\n" + "x " * 80
    assert fit(text, LINK, 1) == f"Line 4 is stopped at Central\n{LINK}"


def test_fit_does_not_take_a_decimal_point_or_a_domain_for_a_sentence_end() -> None:
    text = "Delay of 2.5 hours, see example.com for details " + "and more " * 20
    result = fit(text, LINK, 1)
    assert result.endswith("...\n" + LINK)
    assert not result.startswith("Delay of 2.\n")


def test_fit_falls_back_to_whole_words_with_a_gsm_ellipsis() -> None:
    text = "Signal failure between " + "North and South " * 20 + "stations."
    result = fit(text, LINK, 1)
    body = result.removesuffix("\n" + LINK)
    assert body.endswith("...")
    assert text.startswith(body.removesuffix("..."))
    assert text[len(body) - 3] == " "
    assert segments(result) == SegmentInfo("GSM-7", segments(result).units, 1)


def test_fit_uses_the_unicode_ellipsis_when_the_text_is_ucs2_anyway() -> None:
    text = "Zugausfall zwischen Köln und Düsseldorf wegen einer Störung " * 4
    # (Not "û": an accented Latin letter is written the GSM-7 way, test_accented_latin_...)
    result = fit("Ж " + text, LINK, 1)
    assert result.endswith("…\n" + LINK)
    assert segments(result).segments == 1


def test_fit_returns_the_link_alone_when_no_word_fits() -> None:
    assert fit("x" * 400, LINK, 1) == LINK


def test_fit_without_a_link() -> None:
    assert fit("Short.", "", 1) == "Short."
    assert fit("One. " + "two " * 60, "", 1) == "One."
    with pytest.raises(ValueError, match="without cutting a word"):
        fit("x" * 400, "", 1)


def test_fit_does_not_add_the_link_twice() -> None:
    """The composer fits SMS text already; the channel fits again with its own limit."""
    text = "Line 4 is stopped at Central. " * 6
    once = fit(text, LINK, 2)
    assert once.count(LINK) == 1
    assert fit(once, LINK, 2) == once
    assert fit(once, LINK, 1) == ("Line 4 is stopped at Central. " * 4).rstrip() + "\n" + LINK


def test_fit_refuses_a_link_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="link alone"):
        fit("text", "https://example.com/" + "a" * 150, 1)
    with pytest.raises(ValueError, match="max_segments"):
        fit("text", LINK, 0)


WORD = st.text(
    st.sampled_from([*"abcdefghij", *"ABC", *"0123", "é", "€", "ç", "ë", "’", "…", "Ж", "😀"]),
    min_size=1,
)
SEPARATOR = st.sampled_from([" ", " ", " ", ". ", "! ", "? ", ".\n", "\n", ", ", '." '])
TEXT = st.lists(st.tuples(WORD, SEPARATOR), max_size=120).map(
    lambda pairs: "".join(word + sep for word, sep in pairs)
)
LINKS = st.sampled_from([LINK, "https://ex.am/p?a=1&b=2", "https://ex.am/ü", ""])


def _body_is_uncut(text: str, body: str) -> bool:
    """``body`` is a prefix of ``text`` that ends where a word ends, as it is or written the
    GSM-7 way (``gsm7_fold``: each shortened text is folded on its own)."""
    if text.startswith(body) and (len(body) == len(text) or text[len(body)].isspace()):
        return True
    return any(
        gsm7_fold(text[:end]) == body
        for end in range(1, len(text) + 1)
        if end == len(text) or text[end].isspace()
    )


@settings(deadline=None)
@given(TEXT, LINKS, st.integers(1, 4))
def test_fit_properties(text: str, link: str, max_segments: int) -> None:
    try:
        result = fit(text, link, max_segments)
    except ValueError:
        assert not link  # with a link, only a link too long raises, and these are short
        first_word = text.split()[0]
        assert segments(first_word + "...").segments > max_segments
        return
    assert segments(result).segments <= max_segments
    assert result.endswith(link)
    if result == link:
        return
    body = result.removesuffix(link).removesuffix("\n") if link else result
    assert body and not body[-1].isspace()
    if _body_is_uncut(text, body):
        return
    for ellipsis in ("...", "…"):
        if body.endswith(ellipsis) and _body_is_uncut(text, body.removesuffix(ellipsis)):
            return
    raise AssertionError(f"the text was cut inside a word: {body!r}")


@settings(deadline=None)
@given(TEXT, LINKS, st.integers(1, 4))
def test_fit_is_idempotent(text: str, link: str, max_segments: int) -> None:
    try:
        once = fit(text, link, max_segments)
    except ValueError:
        return
    assert fit(once, link, max_segments) == once


def test_typographic_punctuation_is_written_the_gsm7_way_when_that_keeps_it_gsm7() -> None:
    """One curly apostrophe made a message UCS-2 (70 characters a part, not 160)."""
    text = "No metro’s between “Centraal” and Zuid – about 20 minutes… Next update by 09:15."
    fitted = fit(text, "https://x.example/1", 1)
    assert fitted.startswith('No metro\'s between "Centraal" and Zuid - about 20 minutes...')
    assert is_gsm7(fitted) and fitted.endswith("Next update by 09:15.\nhttps://x.example/1")
    # Text that is not GSM-7 anyway (Chinese here) keeps its typography.
    assert gsm7_punctuation("中’s") == "中’s"
    assert gsm7_punctuation("plain") == "plain"


# The letters with accents that the GSM alphabet has (basic table): never folded.
GSM7_ACCENTED = "éèùìòÇØøÅåÄÖÑÜäöñüàÉÆæß"


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Zoë Jansen", "Zoe Jansen"),
        (
            "België: treinen geëvacueerd, naïeve reiziger",
            "Belgie: treinen geevacueerd, naieve reiziger",
        ),
        ("François, Ángel, Łódź, Dvořák, Œuvre", "Francois, Angel, Lodz, Dvorak, OEuvre"),
        (
            "Zoe\u0308 (typed as e and a combining diaeresis)",
            "Zoe (typed as e and a combining diaeresis)",
        ),
        ("Zoë’s trein – vertraagd…", "Zoe's trein - vertraagd..."),  # letters and typography
        (f"{GSM7_ACCENTED} ë", f"{GSM7_ACCENTED} e"),  # the alphabet's own accents stay
        ("Cafe\u0301 Zoë", "Café Zoe"),  # a base and its mark joined: é is GSM-7
    ],
)
def test_accented_latin_letters_are_written_the_gsm7_way_when_that_makes_it_gsm7(
    text: str, folded: str
) -> None:
    """One ``ë`` (a customer's name, "België") made a whole SMS UCS-2: 67 characters a part
    instead of 153, so the message was cut harder and cost more parts."""
    assert gsm7_fold(text) == folded and is_gsm7(folded)
    assert gsm7_punctuation(text) == folded  # the earlier name: templates check uses it


@pytest.mark.parametrize(
    "text",
    [
        "Zoë, поезда не ходят",  # Cyrillic
        "Zoë: 列车停运",  # CJK
        "Zoë 😀",  # an emoji
        "Zoë \u03b1",  # a Greek small letter (only some capitals are in the alphabet)
        f"{GSM7_ACCENTED}ç 1\ufe0f\u20e3",  # a keycap emoji
    ],
)
def test_a_text_that_stays_ucs2_anyway_keeps_its_letters(text: str) -> None:
    assert gsm7_fold(text) == text and not is_gsm7(text)


def test_a_name_with_one_accent_no_longer_cuts_the_message() -> None:
    """Zoë and Zoe got different messages: Zoë's UCS-2 one lost the staff's last sentence."""
    body = (
        "{}: Geen treinen tussen Utrecht en Amersfoort. Volgende update uiterlijk 10:15 CET. "
        "Door een seinstoring rijden er geen treinen. Er rijden bussen vanaf Utrecht "
        "Centraal, perron B. Reizigers in België: kijk op de site."
    )
    link = "https://status.example.org/incidents/1"
    plain = fit(body.format("Zoe Jansen").replace("België", "Belgie"), link, 2)
    accented = fit(body.format("Zoë Jansen"), link, 2)
    assert accented == plain and segments(accented) == SegmentInfo("GSM-7", 264, 2)
    assert accented.endswith("Reizigers in Belgie: kijk op de site.\n" + link)


@settings(deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_folding_gives_gsm7_or_the_text_unchanged(text: str) -> None:
    folded = gsm7_fold(text)
    assert folded == text or is_gsm7(folded)
    if is_gsm7(text):
        assert folded == text


def test_a_shortened_text_is_written_the_gsm7_way_on_its_own() -> None:
    """The emoji that kept the whole text UCS-2 was cut away: what is left goes as GSM-7,
    and fitting it again changes nothing (the channel fits what the composer fitted)."""
    text = "Zoë’s trein rijdt niet. Neem de bus. " + "😀 " * 100
    once = fit(text, LINK, 1)
    assert once == f"Zoe's trein rijdt niet. Neem de bus.\n{LINK}" and is_gsm7(once)
    assert fit(once, LINK, 1) == once
