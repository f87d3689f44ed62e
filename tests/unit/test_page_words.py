"""The customers' web pages' words: every word in every language, the English fallback,
escaping, and which language a reader gets."""

from __future__ import annotations

import re
import string

import pytest

from broadcaster.compose.links import REASONS
from broadcaster.web import words
from broadcaster.web.words import (
    SMS_WORDS,
    WORDS,
    Html,
    accepted,
    negotiate,
    say,
    sms_text,
    word,
    written_in,
)
from channels.sms_segments import segments


@pytest.mark.parametrize("language", sorted(WORDS))
def test_every_word_exists_in_every_language(language: str) -> None:
    keys = {key for table in WORDS.values() for key in table}
    assert sorted(keys - set(WORDS[language])) == []
    assert all(text.strip() for text in WORDS[language].values())


@pytest.mark.parametrize("language", sorted(WORDS))
def test_every_language_fills_the_same_places(language: str) -> None:
    """A translation that dropped or misspelled ``{org}`` would raise or show less."""
    for key, english in WORDS["en"].items():
        places = {name for _, name, _, _ in string.Formatter().parse(english) if name}
        theirs = {n for _, n, _, _ in string.Formatter().parse(WORDS[language][key]) if n}
        assert theirs == places, (language, key)


def test_a_missing_word_falls_back_to_english(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(words, "WORDS", {"en": {"save": "Save"}, "nl": {}})
    assert word("nl", "save") == "Save"
    assert word("fr", "save") == "Save"
    assert word("nl", "status.paused", "paused") == "paused"
    with pytest.raises(KeyError, match="no page word 'nope'"):
        word("nl", "nope")


def test_say_escapes_the_word_and_every_value_but_markup_of_the_page() -> None:
    said = say("en", "unsubscribe_question", org='<b>"Ex" & Co</b>')
    assert said == "Stop all disruption updates from &lt;b&gt;&quot;Ex&quot; &amp; Co&lt;/b&gt;?"
    told = say("nl", "next_update", time=Html("<time>10:00</time>"))
    assert told == "Volgende update uiterlijk <time>10:00</time>."
    assert say("en", "unsubscribe_question", org="the link's {0} <x>") == (
        "Stop all disruption updates from the link&#x27;s {0} &lt;x&gt;?"
    )


@pytest.mark.parametrize(
    ("candidates", "language"),
    [
        (["nl-BE"], "nl"),
        (["NL_be"], "nl"),
        (["en-GB"], "en"),
        (["de", "nl"], "nl"),
        (["de"], "en"),
        ([], "en"),
    ],
)
def test_written_in_reads_a_regional_tag_as_its_language(
    candidates: list[str], language: str
) -> None:
    assert written_in(candidates) == language


def test_accepted_orders_by_quality_and_drops_the_unwanted() -> None:
    header = "fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5, nl;q=0, x;q=2, y;q=abc, , z;q=nan"
    assert accepted(header) == ["fr-CH", "fr", "en", "de", "*"]
    assert accepted("nl;q=0.5, en") == ["en", "nl"]
    assert accepted("en;q=0.5, nl;q=0.5") == ["en", "nl"]  # equal: in the header's order
    assert accepted(None) == [] and accepted("") == []
    assert accepted(", ".join(f"l{i}" for i in range(100))) == [f"l{i}" for i in range(32)]


@pytest.mark.parametrize(
    ("asked", "header", "default", "language"),
    [
        (None, None, "en", "en"),
        (None, None, "nl", "nl"),
        (None, None, "de", "en"),
        ("nl-BE", "en", "en", "nl"),
        ("xx", "nl", "en", "nl"),
        (None, "de, nl;q=0.5", "en", "nl"),
        (None, "*", "nl", "nl"),
        (None, "de", "nl", "nl"),
    ],
)
def test_negotiate(asked: str | None, header: str | None, default: str, language: str) -> None:
    assert negotiate(asked, header, default) == language


def test_the_words_are_plain_text() -> None:
    """Markup is the page's, never a word's: each is escaped where it is used."""
    for table in WORDS.values():
        for key, text in table.items():
            assert not re.search(r"[<>&]", text), key


@pytest.mark.parametrize("language", sorted(WORDS))
def test_every_link_reason_has_its_own_sentence(language: str) -> None:
    """The link checker's codes, each told in every language, no two alike (expired,
    altered and unknown links each say why)."""
    said = [WORDS[language][f"link_reason.{code}"] for code in REASONS]
    assert len(set(said)) == len(REASONS)


def test_the_sms_answers_exist_in_every_page_language_with_the_same_places() -> None:
    assert sorted(SMS_WORDS) == sorted(WORDS)
    for language, table in SMS_WORDS.items():
        assert table.keys() == SMS_WORDS["en"].keys(), language
        for key, english in SMS_WORDS["en"].items():
            places = {name for _, name, _, _ in string.Formatter().parse(english) if name}
            theirs = {n for _, n, _, _ in string.Formatter().parse(table[key]) if n}
            assert theirs == places == {"org", "url"}, (language, key)


@pytest.mark.parametrize("language", sorted(SMS_WORDS))
@pytest.mark.parametrize(
    ("org", "url"),
    [
        ("Example Transit", "https://status.example.org"),
        ("Metropolitan Regional Transit", "https://status.metro-transit.example.com"),
    ],
)
def test_the_help_answer_is_one_gsm7_sms_with_a_typical_name_and_url(
    language: str, org: str, url: str
) -> None:
    text = sms_text(language, "help", org=org, url=url)
    assert text.startswith(f"{org}: ") and text.endswith(f" {url}")
    assert "STOP" in text and "START" in text
    info = segments(text)
    assert (info.encoding, info.segments) == ("GSM-7", 1), (info, text)


def test_an_sms_answer_in_a_language_without_words_is_english() -> None:
    assert sms_text("fr", "help", org="O", url="U") == sms_text("en", "help", org="O", url="U")
    assert sms_text("nl", "help", org="{x}", url="U").startswith("{x}: updates over storingen")
