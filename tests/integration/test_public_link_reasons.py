"""Why a customer's link does not work, told in the page's language: the link checker gives
each reason a stable code (malformed, tampered, wrong purpose, expired) beside its English
message; the pages say the code's own sentence in the reader's language and keep the
English message for the log."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from broadcaster.compose.links import (
    REASONS,
    ExpiredLink,
    InvalidLink,
    make_token,
    verify_token,
    verify_unsubscribe,
)
from broadcaster.store import Database
from broadcaster.web.words import say, word
from tests.api.support import SECRET, START, api_client
from tests.integration.test_pages_language import language_of, seed_customer, settings

LATER = START + timedelta(days=30)
ENGLISH_REASONS = (
    "malformed link",
    "signature does not match",
    "the link is for",
    "the link has expired",
)
"""What the checker's messages say: for the log, never on a page."""


def _cut(token: str) -> str:
    """The token as a mail client that wrapped the line might leave it: its end missing."""
    return token[:-6]


def _tokens() -> dict[str, tuple[str, str]]:
    """A link of each kind that does not work, for a customer c1: its path and its reason."""
    fresh = make_token(SECRET, "c1", "unsubscribe", LATER, issued=START)
    return {
        "not a token": ("/u/not-a-link", "malformed"),
        "too few parts": ("/preferences/YzE.1767780000.preferences", "malformed"),
        "not ascii": ("/u/YzE.1.2.unsubscribe.sïgnature", "malformed"),
        "another secret": (
            "/u/" + make_token("another-secret", "c1", "unsubscribe", LATER, issued=START),
            "tampered",
        ),
        "cut short": ("/u/" + _cut(fresh), "tampered"),
        "customer changed": ("/u/" + fresh.replace("YzE", "YzI", 1), "tampered"),
        "preferences link at /u": (
            "/u/" + make_token(SECRET, "c1", "preferences", LATER, issued=START),
            "wrong_purpose",
        ),
        "unsubscribe link at /preferences": ("/preferences/" + fresh, "wrong_purpose"),
        # An earlier build's unsubscribe link (no issue time) past its expiry.
        "expired": ("/u/" + make_token(SECRET, "c1", "unsubscribe", START), "expired"),
    }


def test_each_refusal_has_its_code_and_keeps_its_english_message() -> None:
    now = START + timedelta(seconds=1)
    fresh = make_token(SECRET, "c1", "unsubscribe", LATER, issued=START)
    cases: list[tuple[str, str, str]] = [
        ("x", "malformed", "malformed link"),
        ("é.1.2.unsubscribe.s", "malformed", "malformed link"),
        ("!!!.1.2.unsubscribe." + "s", "tampered", "signature does not match"),
        (_cut(fresh), "tampered", "signature does not match"),
        (make_token(SECRET, "c1", "preferences", LATER), "wrong_purpose", "not unsubscribe"),
        (make_token(SECRET, "c1", "unsubscribe", START), "expired", "expired"),
    ]
    for token, code, message in cases:
        with pytest.raises(InvalidLink, match=message) as raised:
            verify_token(SECRET, token, "unsubscribe", now)
        assert raised.value.code == code, token
    with pytest.raises(ExpiredLink) as expired:
        verify_unsubscribe(SECRET, make_token(SECRET, "c1", "unsubscribe", START), now)
    assert expired.value.code == "expired"
    assert {code for _, code, _ in cases} == set(REASONS)


@pytest.mark.parametrize("default_language", ["en", "nl"])
@pytest.mark.parametrize("case", sorted(_tokens()))
async def test_the_reason_is_told_in_the_page_s_language(
    database: Database,
    caplog: pytest.LogCaptureFixture,
    default_language: str,
    case: str,
) -> None:
    path, code = _tokens()[case]
    caplog.set_level(logging.INFO, logger="broadcaster.web")
    async with api_client(database, settings(default_language)) as api:
        api.clock.advance(timedelta(seconds=1))  # the expired case's expiry has passed
        await seed_customer(database, "en")  # a link that does not work names no customer
        for method in ("GET", "POST"):
            answer = await api.http.request(method, path)
            assert answer.status_code == 400, (method, answer.text)
            lang = language_of(answer)
            assert lang == default_language
            title = "link_expired" if code == "expired" else "link_broken"
            assert f"<h1>{say(lang, title)}</h1>" in answer.text
            assert say(lang, f"link_reason.{code}") in answer.text
            for other in set(REASONS) - {code}:
                assert say(lang, f"link_reason.{other}") not in answer.text, other
            for english in ENGLISH_REASONS:
                assert english not in answer.text, english
        assert api.state.counters[f"link_refused_{code}"] == 2
    logged = [r for r in caplog.records if r.getMessage() == "refused a customer link"]
    assert [r.__dict__["reason"] for r in logged] == [code, code]
    assert all(any(e in r.__dict__["detail"] for e in ENGLISH_REASONS) for r in logged)


async def test_dutch_pages_say_each_reason_in_dutch(database: Database) -> None:
    """Spelled out, so that a reason told from the wrong table (English) fails."""
    tokens = _tokens()
    expected = {
        "not a token": "Deze link herkennen we niet",
        "another secret": "Deze link komt niet overeen met de link die we stuurden",
        "preferences link at /u": "Deze link hoort bij een andere pagina van ons",
        "expired": "Voor uw veiligheid werkt deze link maar een beperkte tijd",
    }
    async with api_client(database, settings("nl")) as api:
        api.clock.advance(timedelta(seconds=1))
        for case, sentence in expected.items():
            answer = await api.http.get(tokens[case][0])
            assert sentence in answer.text, (case, answer.text)
            assert "This link" not in answer.text and "This is not" not in answer.text
    # The expired page still says how to stop the messages without the link.
    assert "antwoord STOP op een van onze sms-berichten" in answer.text


async def test_an_expired_preferences_link_of_an_earlier_build_says_why_in_the_customer_s_language(
    database: Database,
) -> None:
    """Such a link (no issue time) cannot be told from one of an erased customer: its page,
    in its customer's language, says why it does not work and how to stop all the same."""
    async with api_client(database, settings("en")) as api:
        await seed_customer(database, "nl")
        token = make_token(SECRET, "c1", "preferences", START)
        api.clock.advance(timedelta(seconds=1))
        answer = await api.http.get(f"/preferences/{token}")
    assert answer.status_code == 400 and language_of(answer) == "nl"
    assert f"<h1>{word('nl', 'link_expired')}</h1>" in answer.text
    assert say("nl", "link_reason.expired") in answer.text
    assert "afmeldlink in onze meest recente e-mail" in answer.text


def test_the_tokens_are_what_they_claim() -> None:
    """The cases above are refused for the reason they name (a guard on the fixtures)."""
    now = START + timedelta(seconds=1)
    for case, (path, code) in _tokens().items():
        purpose = "unsubscribe" if path.startswith("/u/") else "preferences"
        token = path.split("/", 2)[2]
        with pytest.raises(InvalidLink) as raised:
            verify_token(SECRET, token, purpose, now)
        assert raised.value.code == code, case
