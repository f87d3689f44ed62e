"""The rules' compensation in the customer's language (``resolution.offers``).

The rules' offers were English text in ``resolution.compensation`` ("a credit of 10.00
EUR"), told as they were to Dutch customers. They are data now, and every resolution part
says them in its own language, the amount as its readers write it (Babel); an operator's
own text is told instead, as written.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broadcaster.compose.check import check_templates
from broadcaster.compose.context import (
    VARIABLES,
    IncidentFacts,
    Offer,
    describe_offers,
    format_amount,
    offers_of,
)
from broadcaster.compose.samples import sample_facts
from broadcaster.dispatch.content import facts_of
from broadcaster.store import Incident, IncidentUpdate
from channels.sms_segments import segments
from tests.unit.test_templates import renderer, request

CREDIT = Offer("credit", "10.00", "EUR", "long-outage-credit")
VOUCHER = Offer("voucher", "5", "EUR", "vip-voucher")
NBSP = "\u00a0"
LABEL = {"en": "To make up for it: ", "nl": "Om het goed te maken: "}
PARTS = {"sms": ("sms",), "email": ("email_text", "email_html"), "push": ("push_body",)}


def facts(*offers: Offer, compensation: str | None = None) -> IncidentFacts:
    return replace(
        sample_facts("resolution"), compensation=compensation, compensation_offers=offers
    )


def told(language: str, form: str, *offers: Offer, compensation: str | None = None) -> list[str]:
    """The parts of a resolution that tell the compensation, NBSP read as a space."""
    parts = renderer().render(
        request(
            "resolution",
            form,
            language,
            cache_key=None,
            facts=facts(*offers, compensation=compensation),
        )
    )
    return [parts[name].replace(NBSP, " ") for name in PARTS[form]]


@pytest.mark.parametrize("form", PARTS)
def test_a_dutch_resolution_says_the_credit_in_dutch(form: str) -> None:
    for text in told("nl", form, CREDIT):
        assert "een tegoed van € 10,00." in text, text
        assert "credit" not in text and "EUR" not in text and "10.00" not in text


@pytest.mark.parametrize("form", PARTS)
def test_an_english_resolution_says_the_credit_in_english(form: str) -> None:
    for text in told("en", form, CREDIT):
        assert "a credit of €10.00." in text, text


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("en", "a credit of €10.00 and a voucher of €5.00."),
        ("nl", "een tegoed van € 10,00 en een waardebon van € 5,00."),
    ],
)
def test_several_offers_read_as_one_sentence(language: str, expected: str) -> None:
    for form in PARTS:
        for text in told(language, form, CREDIT, VOUCHER):
            assert f"{LABEL[language]}{expected}" in text.replace("</strong> ", " "), text


@pytest.mark.parametrize(
    ("kind", "en", "nl"),
    [
        ("credit", "a credit of", "een tegoed van"),
        ("refund", "a refund of", "een terugbetaling van"),
        ("voucher", "a voucher of", "een waardebon van"),
        ("discount", "a discount of", "een korting van"),
        ("upgrade", "an upgrade of", "een upgrade van"),
        ("free_ride", "a free ride of", "een free ride van"),
    ],
)
def test_each_kind_is_named_in_the_language(kind: str, en: str, nl: str) -> None:
    offer = Offer(kind, "3.50", "EUR", "r")
    [english] = told("en", "email", offer)[:1]
    assert f"{en} €3.50." in english
    [dutch] = told("nl", "email", offer)[:1]
    assert f"{nl} € 3,50." in dutch


@pytest.mark.parametrize("language", ["en", "nl"])
@pytest.mark.parametrize("form", PARTS)
def test_the_operator_s_own_words_win_as_written(language: str, form: str) -> None:
    own = "A free day ticket for your next trip"
    for text in told(language, form, CREDIT, compensation=own):
        assert f"{LABEL[language]}{own}" in text.replace("</strong> ", " "), text
        assert "€" not in text


@pytest.mark.parametrize("language", ["en", "nl"])
def test_no_offer_and_no_text_say_nothing_of_compensation(language: str) -> None:
    for form in PARTS:
        for text in told(language, form):
            assert LABEL[language].strip() not in text


def test_a_dutch_sms_with_the_credit_stays_gsm7() -> None:
    """Babel writes "€ 10,00" with a no-break space, which is not in the GSM alphabet: the
    message would be UCS-2 (70 characters a part, not 160), and shortened."""
    parts = renderer().render(
        request("resolution", "sms", "nl", cache_key=None, facts=facts(CREDIT))
    )
    info = segments(parts["sms"])
    assert info.encoding == "GSM-7" and info.segments <= 3
    assert "Om het goed te maken: een tegoed van € 10,00." in parts["sms"]


def test_an_offer_is_escaped_in_html() -> None:
    hostile = Offer('<b onclick="x">', "1", "EUR", "r")
    html = renderer().render(
        request("resolution", "email", "en", cache_key=None, facts=facts(hostile))
    )["email_html"]
    assert "<b onclick" not in html and "&lt;b onclick=" in html


def test_amounts_are_written_as_each_language_writes_them() -> None:
    assert format_amount("10.00", "EUR", "en") == "€10.00"
    assert format_amount("10.00", "EUR", "nl") == f"€{NBSP}10,00"
    assert format_amount("5", "EUR", "en") == "€5.00"
    assert format_amount("1234.5", "USD", "nl") == f"US${NBSP}1.234,50"
    assert format_amount("2500", "JPY", "en") == "¥2,500"
    assert format_amount("10.00", "EUR", "xx-unknown") == "€10.00"  # Babel's fallback: en
    assert format_amount("lots", "EUR", "en") == "lots EUR"  # not a number: as it is
    assert format_amount("NaN", "EUR", "en") == "NaN EUR"
    assert format_amount("1E+999999", "EUR", "en") == "1E+999999 EUR"


def test_staff_read_the_offers_in_english() -> None:
    assert describe_offers([]) == ""
    assert describe_offers([CREDIT]) == "a credit of €10.00"
    assert describe_offers([CREDIT, VOUCHER]) == "a credit of €10.00 and a voucher of €5.00"
    three = [CREDIT, Offer("refund", "2", "EUR"), VOUCHER]
    assert describe_offers(three) == "a credit of €10.00, a refund of €2.00 and a voucher of €5.00"
    assert describe_offers([CREDIT], rules=True) == "a credit of €10.00 (rule long-outage-credit)"


def test_stored_offers_are_read_leniently() -> None:
    assert offers_of(None) == ()
    assert offers_of({"kind": "credit"}) == ()
    stored = [
        CREDIT.as_json(),
        {"kind": "voucher", "amount": "5", "currency": "EUR"},  # no rule
        {"kind": "credit", "amount": 5, "currency": "EUR"},  # not as written: left out
        "a credit of 10.00 EUR",
    ]
    assert offers_of(stored) == (CREDIT, Offer("voucher", "5", "EUR", ""))


def test_a_round_s_facts_carry_the_stored_offers() -> None:
    at = datetime(2026, 1, 6, 9, 0, tzinfo=UTC)
    incident = Incident(id=7, title="Down", severity="major")
    update = IncidentUpdate(
        id=3,
        incident_id=7,
        kind="resolved",
        status="resolved",
        message="Fixed.",
        cause_kind="unknown",
        created_at=at,
        compensation_offers=[CREDIT.as_json(), VOUCHER.as_json()],
    )
    carried = facts_of(incident, update, [], None)
    assert carried.compensation is None
    assert carried.compensation_offers == (CREDIT, VOUCHER)
    hash(carried)  # immutable, as a cached round's content is


def test_offers_is_a_documented_resolution_field() -> None:
    assert "offers" in VARIABLES["resolution"]


def test_check_warns_of_a_template_that_tells_only_the_operator_s_text(tmp_path: Path) -> None:
    """An admin's resolution template written before: it showed the rules' compensation
    through ``resolution.compensation``, and would now leave it out."""
    old = (
        "{{ resolution.responsibility }} {{ resolution.regret }} {{ resolution.cause }} "
        "{{ resolution.remedy }} {{ resolution.prevention }} {{ resolution.compensation }}"
    )
    path = tmp_path / "en" / "resolution" / "email_text.j2"
    path.parent.mkdir(parents=True)
    path.write_text(old, encoding="utf-8")
    r = renderer(tmp_path)
    report = check_templates(r.templates, r, 3)
    assert report.errors == []
    [warning] = [w for w in report.warnings if "resolution.offers" in w]
    assert "en/resolution/email_text.j2" in warning
    assert "the compensation the rules grant is not told" in warning
    shipped = renderer()
    assert not [
        w
        for w in check_templates(shipped.templates, shipped, 3).warnings
        if "resolution.offers" in w
    ]
