"""The customers' web pages in the reader's language and time zone: the incident page by
``?lang=``, ``Accept-Language`` or the default language; the preferences and unsubscribe
pages in the customer's own; every time a ``<time>`` that the page's one script (a file of
ours, allowed by a strict CSP) shows in the reader's zone."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urljoin

import httpx
import pytest
from sqlalchemy import insert, update

from broadcaster.compose.context import Offer
from broadcaster.compose.links import make_token
from broadcaster.config.settings import Settings
from broadcaster.store import ContactPoint, Customer, Database
from broadcaster.web import pages
from tests.api.support import PUBLIC, SECRET, START, Api, api_client

DECLARE = {
    "title": "Card payments failing",
    "severity": "critical",
    "message": "Card payments fail for some customers.",
    "components": ["payments"],
}


def settings(default_language: str = "en") -> Settings:
    return Settings.model_validate(
        {
            "messages": {
                "public_url": PUBLIC,
                "organisation": "Example Transit",
                "default_language": default_language,
            }
        }
    )


async def declare(api: Api, **fields: object) -> int:
    answer = await api.call("POST", "/api/v1/incidents", json={**DECLARE, **fields})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


async def seed_customer(database: Database, language: str, customer_id: str = "c1") -> None:
    async with database.session() as session, session.begin():
        await session.execute(
            insert(Customer).values(
                id=customer_id,
                name="Anna",
                language=language,
                timezone="Europe/Amsterdam",
                created_at=START,
                updated_at=START,
            )
        )
        await session.execute(
            insert(ContactPoint).values(
                customer_id=customer_id,
                kind="email",
                address="anna@example.nl",
                opted_out=False,
                disabled=False,
                updated_at=START,
            )
        )


def language_of(answer: httpx.Response) -> str:
    found = re.match(r'<!doctype html><html lang="([^"]+)">', answer.text)
    assert found is not None, answer.text
    assert answer.headers["content-language"] == found.group(1)
    return found.group(1)


# -- the incident page ---------------------------------------------------------------------


async def test_the_incident_page_is_in_the_default_language_without_a_preference(
    database: Database,
) -> None:
    async with api_client(database, settings()) as api:
        incident = await declare(api)
        answer = await api.http.get(f"/incidents/{incident}")
    assert answer.status_code == 200
    assert language_of(answer) == "en"
    assert answer.headers["vary"] == "Accept-Language"
    assert "Status: <strong>Investigating</strong> · severity critical · affects payments" in (
        answer.text
    )
    assert "<strong>Next update by <time " in answer.text
    assert "<strong>Reported</strong>" in answer.text


async def test_the_incident_page_speaks_dutch_when_the_browser_asks_for_it(
    database: Database,
) -> None:
    async with api_client(database, settings()) as api:
        incident = await declare(api)
        answer = await api.http.get(
            f"/incidents/{incident}", headers={"Accept-Language": "nl-NL,nl;q=0.9,en;q=0.8"}
        )
    assert answer.status_code == 200
    assert language_of(answer) == "nl"
    assert answer.headers["vary"] == "Accept-Language"
    text = answer.text
    assert "Status: <strong>We onderzoeken het</strong> · ernst: kritiek · betreft payments" in text
    assert "<strong>Volgende update uiterlijk <time " in text
    assert "<strong>Gemeld</strong>" in text
    assert "Investigating" not in text and "Next update" not in text


@pytest.mark.parametrize(
    ("accept", "shown"),
    [
        ("fr-FR, nl;q=0.5, en;q=0.7", "en"),  # the higher quality wins, not the order
        ("en;q=0.3, nl-BE", "nl"),  # a regional tag reads as its language
        ("nl;q=0, en", "en"),  # q=0: not wanted
        ("fr, de;q=0.9", "en"),  # none written: the default
        ("nl;q=nonsense, en;q=0.1", "en"),  # a malformed quality is dropped
        ("*", "en"),
    ],
)
async def test_the_incident_page_honours_the_accept_language_qualities(
    database: Database, accept: str, shown: str
) -> None:
    async with api_client(database, settings()) as api:
        incident = await declare(api)
        answer = await api.http.get(f"/incidents/{incident}", headers={"Accept-Language": accept})
    assert language_of(answer) == shown


@pytest.mark.parametrize(
    ("asked", "accept", "shown"),
    [
        ("nl", "en", "nl"),  # ?lang= before the browser's wish
        ("nl-BE", "en", "nl"),  # a regional tag reads as its language
        ("NL_be", None, "nl"),
        ("en", "nl", "en"),
        ("fr", "nl", "nl"),  # a language the page is not written in: the browser's wish
        ("", "nl", "nl"),
    ],
)
async def test_lang_in_the_address_chooses_the_incident_page_language(
    database: Database, asked: str, accept: str | None, shown: str
) -> None:
    async with api_client(database, settings()) as api:
        incident = await declare(api)
        headers = {"Accept-Language": accept} if accept else {}
        answer = await api.http.get(
            f"/incidents/{incident}", params={"lang": asked}, headers=headers
        )
    assert answer.status_code == 200
    assert language_of(answer) == shown


async def test_the_configured_default_language_is_used_when_the_reader_states_none(
    database: Database,
) -> None:
    async with api_client(database, settings("nl")) as api:
        incident = await declare(api)
        plain = await api.http.get(f"/incidents/{incident}")
        anything = await api.http.get(f"/incidents/{incident}", headers={"Accept-Language": "*"})
        unknown = await api.http.get(f"/incidents/{incident}", headers={"Accept-Language": "fr"})
        english = await api.http.get(f"/incidents/{incident}", headers={"Accept-Language": "en"})
        missing = await api.http.get("/incidents/999")
    assert [language_of(a) for a in (plain, anything, unknown, english)] == ["nl", "nl", "nl", "en"]
    assert missing.status_code == 404
    assert language_of(missing) == "nl" and "Deze storing bestaat niet." in missing.text
    assert missing.headers["vary"] == "Accept-Language"


async def test_a_dutch_incident_page_escapes_every_value(database: Database) -> None:
    async with api_client(database, settings()) as api:
        incident = await declare(
            api,
            title="<script>alert(1)</script>",
            message="<b>bold</b> & {braces}",
            components=["pay<i>ments"],
        )
        answer = await api.http.get(f"/incidents/{incident}", params={"lang": "nl"})
    text = answer.text
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; {braces}" in text
    assert "betreft pay&lt;i&gt;ments" in text


def test_compensation_offers_are_told_in_the_page_language() -> None:
    offers = [Offer("credit", "10.00", "EUR"), Offer("voucher", "5", "EUR")]
    told = "een tegoed van €\u00a010,00 en een waardebon van €\u00a05,00"  # no-break spaces
    assert pages._offers("nl", offers) == told
    assert pages._offers("en", offers) == "a credit of €10.00 and a voucher of €5.00"


# -- times ---------------------------------------------------------------------------------


async def test_each_time_is_utc_text_with_its_instant_for_the_script(database: Database) -> None:
    async with api_client(database, settings()) as api:
        incident = await declare(api)
        answer = await api.http.get(f"/incidents/{incident}")
        path = f"/incidents/{incident}"
        scripts = re.findall(r"<script[^>]*>", answer.text)
        assert scripts == ['<script src="../static/local-time.js" defer>']
        script = await api.http.get(urljoin(path, "../static/local-time.js"))
    stamp = START.strftime("%Y-%m-%d %H:%M")
    # Declared at START, round 1 due at once: the entry's time and the next update's.
    expected = f'<time datetime="{START.isoformat()}" data-local>{stamp} UTC</time>'
    assert START.isoformat() == "2026-03-02T09:00:00+00:00"
    assert answer.text.count(expected) == 2, answer.text
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert script.headers["x-content-type-options"] == "nosniff"
    assert "Intl.DateTimeFormat" in script.text and "time[data-local]" in script.text


async def test_the_incident_page_allows_only_its_own_script(database: Database) -> None:
    async with api_client(database, settings()) as api:
        incident = await declare(api)
        answer = await api.http.get(f"/incidents/{incident}")
        token = make_token(SECRET, "c1", "preferences", START + timedelta(days=1))
        personal = await api.http.get(f"/preferences/{token}")
    policy = answer.headers["content-security-policy"]
    directives = {}
    for directive in policy.split(";"):
        name, _, value = directive.strip().partition(" ")
        directives[name] = value
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert "frame-ancestors" in directives and directives["base-uri"] == "'none'"
    assert "<script>" not in answer.text  # nothing inline, which the policy would block
    # The personal pages run no script at all.
    assert "script-src" not in personal.headers["content-security-policy"]


# -- the customer's own pages --------------------------------------------------------------


async def test_the_preferences_page_of_a_dutch_customer_is_in_dutch(database: Database) -> None:
    async with api_client(database, settings()) as api:
        await seed_customer(database, "nl-BE")
        token = make_token(SECRET, "c1", "preferences", START + timedelta(days=30), issued=START)
        shown = await api.http.get(f"/preferences/{token}")
        assert shown.status_code == 200
        assert language_of(shown) == "nl"
        text = shown.text
        assert "<title>Uw meldingsvoorkeuren</title>" in text
        assert "Hoe Example Transit u op de hoogte houdt van storingen." in text
        assert "E-mail: a•••@example.nl" in text
        assert ">Opslaan</button>" in text and ">Alle updates stoppen (afmelden)</button>" in text
        assert "Save" not in text
        # The form still shows the language of their messages chosen.
        assert '<option value="nl" selected>' in text

        saved = await api.http.post(f"/preferences/{token}", data={"action": "save"})
        assert saved.status_code == 200 and "Opgeslagen." in saved.text
        not_the_form = await api.http.post(f"/preferences/{token}", data={})
        assert not_the_form.status_code == 422 and "Niet opgeslagen" in not_the_form.text

        api.clock.advance(timedelta(days=31))
        expired = await api.http.get(f"/preferences/{token}")
    assert expired.status_code == 400 and language_of(expired) == "nl"
    assert "Deze link is verlopen" in expired.text
    assert "Het volgende bericht dat Example Transit u stuurt" in expired.text


@pytest.mark.parametrize(("stored", "shown"), [("en-GB", "en"), ("de", "en"), ("NL", "nl")])
async def test_the_preferences_page_follows_the_language_of_the_messages(
    database: Database, stored: str, shown: str
) -> None:
    async with api_client(database, settings()) as api:
        await seed_customer(database, stored)
        token = make_token(SECRET, "c1", "preferences", START + timedelta(days=30))
        answer = await api.http.get(f"/preferences/{token}")
    assert language_of(answer) == shown


async def test_the_unsubscribe_pages_of_a_dutch_customer_are_in_dutch(database: Database) -> None:
    async with api_client(database, settings()) as api:
        await seed_customer(database, "nl")
        token = make_token(SECRET, "c1", "unsubscribe", START + timedelta(days=30), issued=START)
        asked = await api.http.get(f"/u/{token}")
        done = await api.http.post(f"/u/{token}")
    assert asked.status_code == 200 and language_of(asked) == "nl"
    assert "Alle storingsupdates van Example Transit stoppen?" in asked.text
    assert '<button type="submit">Afmelden</button>' in asked.text
    assert done.status_code == 200 and language_of(done) == "nl"
    assert "<h1>U bent afgemeld</h1>" in done.text
    assert "U ontvangt geen storingsupdates meer." in done.text


async def test_a_link_whose_customer_is_not_known_gets_the_default_language(
    database: Database,
) -> None:
    async with api_client(database, settings("nl")) as api:
        await seed_customer(database, "en")
        forged = await api.http.get("/preferences/forged")
        expires = START + timedelta(days=1)
        unknown = await api.http.get(f"/u/{make_token(SECRET, 'c9', 'unsubscribe', expires)}")
        known = await api.http.get(f"/u/{make_token(SECRET, 'c1', 'unsubscribe', expires)}")
        async with database.session() as session, session.begin():
            await session.execute(update(Customer).values(language="nl-BE"))
        dutch = await api.http.get(f"/u/{make_token(SECRET, 'c1', 'unsubscribe', expires)}")
    assert forged.status_code == 400 and language_of(forged) == "nl"
    assert "<h1>Deze link werkt niet</h1>" in forged.text
    assert unknown.status_code == 404 and language_of(unknown) == "nl"
    assert "Deze link is niet meer geldig" in unknown.text
    # A known customer's own language wins over the default.
    assert language_of(known) == "en" and language_of(dutch) == "nl"
