"""SMS and push are cut from the end when too long (``channels.sms_segments.fit``,
``channels.push_common.shorten``): the promise of the next update, the follow-up, the
compensation and the apology's responsibility come before the staff's free text, so a cut
takes that text and never them. Where staff wrote no apology element, the general wording
of the email stands in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from broadcaster.compose.check import check_templates
from broadcaster.compose.context import Personal
from broadcaster.compose.samples import SAMPLE_FOLLOWUP, sample_facts
from channels.push_common import shorten
from channels.sms_segments import gsm7_fold, segments
from tests.unit.test_templates import renderer, request

# Staff text with a warning sign (and typographic apostrophes): the whole SMS is UCS-2, 67
# characters a part. (Apostrophes alone are written the GSM-7 way: test_sms_segments.)
LONG = (
    "⚠ We’ve found that the payment gateway’s certificate expired overnight. Our engineers "
    "are renewing it with the card processor now. Payments in the app and web shop will "
    "keep failing until the new certificate is active. Bank transfer still works."
)
PROMISE = {"en": "Next update by 09:15 CET.", "nl": "Volgende update uiterlijk 09:15 CET."}
COMPENSATION = {"en": "To make up for it: ", "nl": "Om het goed te maken: "}
# The sample's compensation, granted by the rules: told in each language (Babel writes the
# Dutch amount with a no-break space, which an SMS that is GSM-7 anyway gets as a space).
OFFER = {"en": "a credit of €5.00.", "nl": "een tegoed van €\u00a05,00."}
RESPONSIBILITY = {
    "en": "This was our responsibility: you rely on Example Transit, and we let you down.",
    "nl": "Dit was onze verantwoordelijkheid: u rekent op Example Transit en wij hebben u "
    "teleurgesteld.",
}
REMEDY = {"en": "We restored the service.", "nl": "We hebben de dienst hersteld."}
PREVENTION = {
    "en": "We are reviewing this incident and will share what we change to prevent it.",
    "nl": "We evalueren deze storing en laten u weten wat we veranderen om herhaling te voorkomen.",
}


def _render(kind: str, form: str, language: str, **changes: object) -> dict[str, str]:
    return renderer().render(request(kind, form, language, cache_key=None, **changes))


@pytest.mark.parametrize("language", ["en", "nl"])
@pytest.mark.parametrize("kind", ["first", "update"])
@pytest.mark.parametrize("followup", [None, SAMPLE_FOLLOWUP])
def test_a_long_message_is_cut_but_keeps_its_promise(
    kind: str, language: str, followup: dict[str, str] | None
) -> None:
    facts = dataclasses.replace(sample_facts(kind), summary=LONG)
    sms = _render(kind, "sms", language, facts=facts, followup=followup)["sms"]
    assert segments(sms).segments <= 3 and "Bank transfer still works." not in sms
    if followup is None:  # with it, no whole sentence of the summary has room left
        assert segments(sms).encoding == "UCS-2"
        assert "payment gateway’s certificate expired overnight." in sms  # cut, not dropped
    assert PROMISE[language] in sms and sms.endswith("/incidents/1042")
    assert followup is None or "Pieter Bakker" in sms
    push = _render(kind, "push", language, facts=facts, followup=followup)["push_body"]
    cut = shorten(push, 120)
    assert PROMISE[language] in cut and (followup is None or "Pieter Bakker" in cut)


@pytest.mark.parametrize("language", ["en", "nl"])
def test_a_cut_resolution_keeps_the_compensation_and_the_responsibility(language: str) -> None:
    facts = dataclasses.replace(
        sample_facts("resolution"), cause=LONG, remedy=LONG, prevention=LONG
    )
    sms = _render("resolution", "sms", language, facts=facts)["sms"]
    assert segments(sms).segments <= 3
    # The cut took every sentence with the warning sign: what is left goes as GSM-7, the
    # amount's no-break space written as a space.
    assert segments(sms).encoding == "GSM-7"
    assert gsm7_fold(f"{COMPENSATION[language]}{OFFER[language]}") in sms
    assert "Renewing certificates is our job, and we missed it." in sms
    push = _render("resolution", "push", language, facts=facts)["push_body"]
    assert f"{COMPENSATION[language]}{OFFER[language]}" in push
    cut = shorten(push, 200)
    assert COMPENSATION[language] in cut and "Renewing certificates is our job" in cut


@pytest.mark.parametrize("language", ["en", "nl"])
@pytest.mark.parametrize("form", ["sms", "push"])
def test_apology_elements_staff_left_out_get_the_emails_general_wording(
    language: str, form: str
) -> None:
    facts = dataclasses.replace(
        sample_facts("resolution"),
        responsibility=None,
        regret=None,
        remedy=None,
        prevention=None,
        cause="A power cut.",
        compensation="a credit of 10.00 EUR",  # an operator's text without a full stop
    )
    parts = _render("resolution", form, language, facts=facts)
    text = parts["sms"] if form == "sms" else parts["push_body"]
    for wording in (RESPONSIBILITY, REMEDY, PREVENTION):
        assert wording[language] in text, (wording[language], text)
    assert f"{COMPENSATION[language]}a credit of 10.00 EUR. " in text
    email = _render("resolution", "email", language, facts=facts)["email_text"]
    for wording in (RESPONSIBILITY, REMEDY, PREVENTION):
        assert wording[language] in email
    if form == "sms":
        assert segments(text).segments <= 3 and text.endswith("/incidents/1042")


SUMMARY_NL = (
    "Door een seinstoring rijden er geen treinen tussen Utrecht en Amersfoort. Er rijden "
    "bussen vanaf Utrecht Centraal, perron B. Reizigers uit België: de IC naar Brussel rijdt "
    "wel. Kijk voor uw reis in de app of op de site van de vervoerder."
)


def test_an_accent_in_the_name_does_not_cut_the_staffs_message() -> None:
    """One letter outside the GSM alphabet (the ë of Zoë, or of België in the staff's text)
    made the whole SMS UCS-2: 67 characters a part, and fitting it to three parts dropped
    the staff's last sentences. Zoë now gets what Zoe gets, written the GSM-7 way."""
    facts = dataclasses.replace(sample_facts("first"), summary=SUMMARY_NL)

    def sms(name: str) -> str:
        personal = Personal(name, "https://x/u/t", "https://x/p/t")
        return _render("first", "sms", "nl", facts=facts, personal=personal)["sms"]

    zoe, zoe_accented = sms("Zoe Jansen"), sms("Zoë Jansen")
    assert zoe_accented == zoe and segments(zoe).encoding == "GSM-7"
    assert "Reizigers uit Belgie: de IC naar Brussel rijdt wel." in zoe
    assert "van de vervoerder." in zoe and PROMISE["nl"] in zoe
    # A name in another script keeps its letters (and the message is UCS-2, cut harder).
    cyrillic = sms("Зоя Янсен")
    assert cyrillic.startswith("Зоя Янсен: ") and PROMISE["nl"] in cyrillic
    assert segments(cyrillic).encoding == "UCS-2" and segments(cyrillic).segments <= 3


def test_templates_check_counts_an_sms_as_it_is_sent(tmp_path: Path) -> None:
    """An override with an accented letter the GSM alphabet lacks: sent as GSM-7 (the
    letter written without its accent), so the check counts it as GSM-7 too."""
    path = tmp_path / "nl" / "first" / "sms.j2"
    path.parent.mkdir(parents=True)
    text = "Reizigers in België: " + "de treinen rijden niet, neem de bus. " * 8
    path.write_text(text + "{{ next_update }}", encoding="utf-8")
    assert segments(text).encoding == "UCS-2" and segments(text).segments > 3
    r = renderer(tmp_path)
    assert [e for e in check_templates(r.templates, r, 3).errors if "nl/first/sms" in e] == []
    sent = r.render(request("first", "sms", "nl", cache_key=None))["sms"]
    assert segments(sent).encoding == "GSM-7" and "Reizigers in Belgie: " in sent
