"""Templates: golden output per kind × part × language, safety, personalisation, fallback."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.exceptions import SecurityError, UndefinedError

from broadcaster.compose.check import check_templates
from broadcaster.compose.context import Personal, StepFacts, format_span
from broadcaster.compose.render import Filler, Renderer, RenderRequest
from broadcaster.compose.samples import (
    SAMPLE_FOLLOWUP,
    SAMPLE_NOW,
    SAMPLE_TASK,
    SAMPLE_VISIT_TASK,
    sample_facts,
    sample_personal,
)
from broadcaster.compose.templates import FORMS, KINDS, PARTS, SHIPPED_LANGUAGES, TemplateSet
from channels.sms_segments import segments

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "templates"
UPDATE = os.environ.get("UPDATE_GOLDENS") == "1"


def renderer(override: Path | None = None) -> Renderer:
    return Renderer(
        TemplateSet(override),
        organisation="Example Transit",
        public_url="https://status.example.org",
    )


def request(kind: str, form: str, language: str = "en", **changes: object) -> RenderRequest:
    base = RenderRequest(
        kind=kind,
        form=form,
        facts=sample_facts(kind),
        language=language,
        timezone="Europe/Amsterdam",
        now=SAMPLE_NOW,
        personal=sample_personal(),
        cache_key=("golden", kind),
        followup=SAMPLE_FOLLOWUP if kind == "followup_announcement" else None,
        task=SAMPLE_TASK if kind == "followup_task" else None,
    )
    return base._replace(**changes)  # type: ignore[arg-type]


CASES = [
    (language, kind, part) for language in SHIPPED_LANGUAGES for kind in KINDS for part in PARTS
]


@pytest.mark.parametrize(("language", "kind", "part"), CASES)
def test_golden(language: str, kind: str, part: str) -> None:
    form = next(f for f, parts in FORMS.items() if part in parts)
    out = renderer().render(request(kind, form, language))[part]
    golden = GOLDEN / language / kind / f"{part}.txt"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(out, encoding="utf-8")
    assert golden.exists(), f"no golden file {golden}; run with UPDATE_GOLDENS=1 and review"
    assert out == golden.read_text(encoding="utf-8")


VISIT_CASES = [(language, part) for language in SHIPPED_LANGUAGES for part in PARTS]


@pytest.mark.parametrize(("language", "part"), VISIT_CASES)
def test_golden_visit(language: str, part: str) -> None:
    """A visit task's notice: where to go (the customer's postal address), in every part."""
    form = next(f for f, parts in FORMS.items() if part in parts)
    out = renderer().render(request("followup_task", form, language, task=SAMPLE_VISIT_TASK))[part]
    golden = GOLDEN / language / "followup_task_visit" / f"{part}.txt"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(out, encoding="utf-8")
    assert golden.exists(), f"no golden file {golden}; run with UPDATE_GOLDENS=1 and review"
    assert out == golden.read_text(encoding="utf-8")


def test_every_non_final_customer_message_promises_the_next_update() -> None:
    r = renderer()
    for language in SHIPPED_LANGUAGES:
        for kind in ("first", "update", "no_news"):
            for form in FORMS:
                parts = r.render(request(kind, form, language))
                assert any("09:15 CET" in text for text in parts.values()), (language, kind, form)


def test_resolution_has_all_five_elements_and_the_compensation() -> None:
    facts = sample_facts("resolution")
    text = renderer().render(request("resolution", "email"))["email_text"]
    for element in (
        facts.responsibility,
        facts.regret,
        facts.cause,
        facts.remedy,
        facts.prevention,
        "To make up for it: a credit of €5.00.",  # the sample's, granted by the rules
    ):
        assert element is not None and element in text
    assert "next update" not in text.lower()


def test_resolution_without_apology_fields_still_apologises_truthfully() -> None:
    bare = replace(
        sample_facts("resolution"),
        responsibility=None,
        regret=None,
        remedy=None,
        prevention=None,
        compensation=None,
        compensation_offers=(),
        cause=None,
    )
    text = renderer().render(request("resolution", "email", facts=bare))["email_text"]
    assert "our responsibility" in text
    assert "sorry" in text
    assert "still establishing the cause" in text
    assert "make up for it" not in text  # no compensation promised that nobody offered


def test_staff_text_is_escaped_in_html_but_never_evaluated() -> None:
    facts = replace(sample_facts("update"), summary="<script>alert(1)</script> {{ 7*7 }}")
    parts = renderer().render(request("update", "email", facts=facts))
    assert "<script>" not in parts["email_html"]
    assert "&lt;script&gt;" in parts["email_html"]
    assert "{{ 7*7 }}" in parts["email_text"] and "49" not in parts["email_text"]


HOSTILE = '<a href="https://evil.example/">Claim</a> & <b>'


@pytest.mark.parametrize("language", ["en", "nl"])
@pytest.mark.parametrize("kind", ["first", "update", "no_news", "resolution"])
def test_every_text_staff_write_is_escaped_in_every_html_part(kind: str, language: str) -> None:
    """The shared macros (the status line and its cause) went into HTML emails unescaped:
    an operator's cause could put links and markup into every customer's email."""
    facts = replace(
        sample_facts(kind),
        title=f"Title {HOSTILE}",
        summary=f"Summary {HOSTILE}",
        cause_kind="known",
        cause=f"Cause {HOSTILE}",
        actions=f"Actions {HOSTILE}",
        workaround=f"Workaround {HOSTILE}",
        responsibility=f"Responsibility {HOSTILE}",
        regret=f"Regret {HOSTILE}",
        remedy=f"Remedy {HOSTILE}",
        prevention=f"Prevention {HOSTILE}",
        compensation=f"Compensation {HOSTILE}",
    )
    html = renderer().render(request(kind, "email", language, facts=facts))["email_html"]
    assert "evil.example" in html  # the texts are there...
    assert '<a href="https://evil.example/">' not in html and "<b>" not in html  # ...inert
    assert "Cause &lt;a href=" in html or kind == "resolution"


@pytest.mark.parametrize("language", ["en", "nl"])
@pytest.mark.parametrize("kind", ["first", "update", "no_news"])
def test_an_sms_keeps_its_promise_whatever_the_title(kind: str, language: str) -> None:
    """The title comes first in an SMS: a long one, or one with a curly apostrophe (UCS-2,
    70 characters a part), cut every sentence after it, the promise of the next update
    included."""
    title = "Lines 51, 53 and 54: no metro’s between Centraal and Van der Madeweg " * 3
    facts = replace(sample_facts(kind), title=title)
    sms = renderer().render(request(kind, "sms", language, facts=facts))["sms"]
    promise = "Next update by" if language == "en" else "Volgende update"
    assert promise in sms and segments(sms).encoding == "GSM-7", sms
    assert "metro's" in sms and "...." not in sms


def test_an_expected_resolution_already_past_is_not_promised_again() -> None:
    """Carried over from update to update, "we expect this to be resolved by 11:00" still
    went out at 12:30."""
    facts = replace(
        sample_facts("no_news"), expected_resolution_at=SAMPLE_NOW - timedelta(minutes=90)
    )
    text = renderer().render(request("no_news", "email", facts=facts))["email_text"]
    assert "We expect this to be resolved by" not in text
    ahead = replace(facts, expected_resolution_at=SAMPLE_NOW + timedelta(hours=1))
    text = renderer().render(request("no_news", "email", facts=ahead))["email_text"]
    assert "We expect this to be resolved by" in text


@pytest.mark.parametrize(
    ("cause_kind", "expected"),
    [
        ("known", "What happened: A certificate expired."),
        ("suspected", "What happened (we believe): A certificate expired."),
        ("unknown", "What happened: We are still establishing the cause"),
    ],
)
def test_the_apology_says_how_sure_the_cause_is(cause_kind: str, expected: str) -> None:
    """A suspected cause, or the old text of one staff no longer know, was stated as fact."""
    facts = replace(
        sample_facts("resolution"), cause_kind=cause_kind, cause="A certificate expired."
    )
    parts = renderer().render(request("resolution", "email", facts=facts))
    assert expected in parts["email_text"]
    sms = renderer().render(request("resolution", "sms", facts=facts))["sms"]
    assert ("A certificate expired" in sms) == (cause_kind != "unknown")


@pytest.mark.parametrize(
    ("language", "cause_kind", "expected", "never"),
    [
        ("en", "unknown", "Status: we know what is wrong and are working on a fix.", "cause"),
        ("en", "suspected", "working on a fix. Suspected cause: A signal failed.", "found"),
        ("en", "known", "we found the cause and are working on a fix. Cause: A signal", "know"),
        ("nl", "unknown", "Status: we weten wat er mis is en werken aan een oplossing.", "oorzaak"),
        ("nl", "suspected", "oplossing. Vermoedelijke oorzaak: A signal failed.", "gevonden"),
    ],
)
def test_identified_never_says_the_cause_is_found_and_unknown(
    language: str, cause_kind: str, expected: str, never: str
) -> None:
    """ "We found the cause" beside "we do not know the cause yet" (an update to identified
    without a known cause)."""
    facts = replace(
        sample_facts("update"), status="identified", cause_kind=cause_kind, cause="A signal failed."
    )
    text = renderer().render(request("update", "email", language, facts=facts))["email_text"]
    line = next(row for row in text.splitlines() if row.startswith("Status:"))
    assert expected in line
    assert never not in line.split(". ", 1)[0]


@pytest.mark.parametrize(
    ("language", "expected"),
    [("en", "Please write to Anna de Vries"), ("nl", "Anna de Vries (schrijven)")],
)
def test_a_staff_task_names_what_to_do_in_words(language: str, expected: str) -> None:
    """The rule's kind went out as it is written in the rules: "Please personal_email"."""
    task = {**SAMPLE_TASK, "kind": "personal_email"}
    text = renderer().render(request("followup_task", "email", language, task=task))["email_text"]
    assert expected in text and "personal_email" not in text


SSTI = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ customer.__class__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ self._TemplateReference__context }}",
    "{{ lipsum.__globals__['os'].listdir('/') }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "{{ incident.components.append('x') }}",
    "{{ config }}",
    "{% include '/etc/passwd' %}",
    "{% import '../../pyproject.toml' as x %}",
]


@pytest.mark.parametrize("payload", SSTI)
def test_template_injection_payloads_fail(tmp_path: Path, payload: str) -> None:
    target = tmp_path / "en" / "update" / "email_text.j2"
    target.parent.mkdir(parents=True)
    target.write_text(payload, encoding="utf-8")
    with pytest.raises((SecurityError, UndefinedError, Exception)) as caught:
        out = renderer(tmp_path).render(request("update", "email"))["email_text"]
        # Reaching here means it rendered: it must not have leaked anything.
        assert "root" not in out and "class" not in out and "[project]" not in out
        raise AssertionError(f"payload rendered harmlessly: {out!r}")
    assert not isinstance(caught.value, AssertionError) or "harmlessly" in str(caught.value)


def test_admin_override_wins_and_can_extend_the_shipped_file(tmp_path: Path) -> None:
    target = tmp_path / "en" / "first" / "email_subject.j2"
    target.parent.mkdir(parents=True)
    target.write_text("OUTAGE: {{ incident.title }}", encoding="utf-8")
    subject = renderer(tmp_path).render(request("first", "email"))["email_subject"]
    assert subject == "OUTAGE: Card payments failing"
    extend = tmp_path / "en" / "update" / "email_subject.j2"
    extend.parent.mkdir(parents=True)
    extend.write_text('{% include "default/en/update/email_subject.j2" %} (1/3)', encoding="utf-8")
    assert renderer(tmp_path).render(request("update", "email"))["email_subject"] == (
        "Update: Card payments failing (1/3)"
    )


def test_missing_translation_falls_back_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = renderer()
    with caplog.at_level(logging.WARNING, logger="broadcaster.compose"):
        for _ in range(3):
            out = r.render(request("first", "email", language="de", cache_key=None))
    assert out["email_subject"].startswith("[Major disruption]")
    warnings = [rec for rec in caplog.records if "no de translation" in rec.getMessage()]
    assert len(warnings) == 3  # once per part (subject, text, html), not once per message


def test_a_fallback_message_reads_its_times_in_its_own_language() -> None:
    """A German customer without German templates gets the English text, with English
    dates: not "by Mi. 7 Jan." inside an English sentence."""
    r = renderer()
    earlier = SAMPLE_NOW - timedelta(days=1)  # so that the times carry their day
    english = r.render(request("update", "email", language="en", now=earlier, cache_key=None))
    german = r.render(request("update", "email", language="de", now=earlier, cache_key=None))
    assert "Jan" in english["email_text"]
    assert german["email_text"] == english["email_text"]


def test_a_follow_up_deadline_reads_in_the_message_s_language() -> None:
    """The deadline a message announces is handed over as a time and written out in the
    language of the templates used: English words for a German customer without German
    templates, not "Do. 8 Jan."."""
    r = renderer()
    followup = {"owner": "Ann Visser", "kind": "call", "deadline": SAMPLE_NOW + timedelta(days=1)}
    english = r.render(
        request("followup_announcement", "email", language="en", followup=followup, cache_key=None)
    )
    german = r.render(
        request("followup_announcement", "email", language="de", followup=followup, cache_key=None)
    )
    assert "Jan" in english["email_text"] and german["email_text"] == english["email_text"]


def test_a_broken_subject_is_reported_at_its_own_file(tmp_path: Path) -> None:
    """Rendering the other parts of the e-mail looks up the subject's language; a subject
    that does not compile must still be reported at the subject's file, not at theirs."""
    target = tmp_path / "en" / "first" / "email_subject.j2"
    target.parent.mkdir(parents=True)
    target.write_text("{% if %}", encoding="utf-8")
    templates = TemplateSet(tmp_path)
    r = Renderer(templates, organisation="Org", public_url="https://status.example")
    errors = [e for e in check_templates(templates, r, 3).errors if "/first/" in e]
    assert errors and all("email_subject.j2" in e for e in errors), errors


def test_regional_language_uses_its_base_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="broadcaster.compose"):
        out = renderer().render(request("first", "email", language="nl-BE"))
    assert out["email_text"].startswith("Beste")
    assert not caplog.records


def test_personalisation_is_cached_per_round_and_matches_a_full_render() -> None:
    r = renderer()
    names = ["Ann", "Bob <b>&", "Zoë", "O'Neil"]
    for name in names:
        personal = Personal(name, f"https://x/u/{name}", f"https://x/p/{name}")
        cached = r.render(request("update", "email", personal=personal))
        fresh = renderer().render(request("update", "email", personal=personal, cache_key=None))
        assert cached == fresh
        assert f"Dear {name}," in cached["email_text"]
    # Three parts rendered once each, plus the one-time check of each template.
    assert r.full_renders == 3 + 3 * 2


def test_a_template_that_transforms_the_name_is_rendered_in_full(tmp_path: Path) -> None:
    target = tmp_path / "en" / "update" / "email_subject.j2"
    target.parent.mkdir(parents=True)
    target.write_text("{{ customer.name|upper }}: {{ incident.title }}", encoding="utf-8")
    r = renderer(tmp_path)
    subject = r.render(request("update", "email", personal=sample_personal("Zoë")))
    assert subject["email_subject"] == "ZOË: Card payments failing"


names = st.text(min_size=1, max_size=60).filter(lambda s: s.strip() != "")


@settings(max_examples=60, deadline=None)
@given(name=names, language=st.sampled_from(SHIPPED_LANGUAGES), kind=st.sampled_from(KINDS))
def test_any_unicode_name_renders_without_leftovers(name: str, language: str, kind: str) -> None:
    personal = Personal(name, "https://x/u/t", "https://x/p/t")
    for form in FORMS:
        parts = renderer().render(request(kind, form, language, personal=personal))
        for part, text in parts.items():
            assert "\ue000" not in text and "{{" not in text.replace(name, "")
            if part == "sms":
                assert segments(text).segments <= 3


def test_shipped_templates_pass_the_check() -> None:
    r = renderer()
    report = check_templates(r.templates, r, 3)
    assert report.errors == []
    assert report.checked == len(SHIPPED_LANGUAGES) * len(KINDS) * len(PARTS)


def test_check_finds_each_kind_of_problem(tmp_path: Path) -> None:
    bad = {
        "en/update/email_text.j2": "Hi {{ customer.nmae }} {{ weather }}",
        "en/resolution/email_text.j2": "{{ resolution.regret }} {{ resolution.cause }}",
        "en/first/sms.j2": "{{ update.summary }} " * 12,
        "en/no_news/push_title.j2": "{% if %}",
        "en/first/email_html.html.j2": '{% import "en/_macros.j2" as m %}'
        "<p>{{ m.status_line(incident, update) }} {{ next_update }}</p>",
    }
    for name, source in bad.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    r = renderer(tmp_path)
    errors = "\n".join(check_templates(r.templates, r, 3).errors)
    assert "unknown field customer.nmae" in errors
    assert "unknown variable 'weather'" in errors
    for element in ("responsibility", "remedy", "prevention"):
        assert f"apology lacks its {element}" in errors
    assert "segments with typical values" in errors
    assert "no_news/push_title.j2:1" in errors
    assert "first/email_html.html.j2:1: import en/_macros.html.j2 in an HTML part" in errors


@pytest.mark.parametrize("language", SHIPPED_LANGUAGES)
@pytest.mark.parametrize("kind", ["first", "update", "no_news", "resolution"])
def test_a_customer_with_a_forced_follow_up_reads_who_will_contact_them(
    language: str, kind: str
) -> None:
    for form in FORMS:
        parts = renderer().render(
            request(kind, form, language, followup=SAMPLE_FOLLOWUP, cache_key=None)
        )
        text = parts.get("email_text") or parts.get("sms") or parts["push_body"]
        assert "Pieter Bakker" in text and "10:00 CET" in text, (kind, form)


fillable_names = (
    st.text(alphabet=st.sampled_from(list("aZéü0%&<>\"'{}#$ ")), min_size=1, max_size=24)
    .map(lambda s: " ".join(s.split()))  # subjects are tidied to single spaces either way
    .filter(bool)
)


@settings(max_examples=60, deadline=None)
@given(name=fillable_names, kind=st.sampled_from(KINDS), form=st.sampled_from(sorted(FORMS)))
def test_the_cached_fill_is_the_full_render(name: str, kind: str, form: str) -> None:
    """Each customer's copy comes from the round's rendered parts filled with their values
    (one % formatting; HTML-escaped only where a value needs it): the same text as
    rendering the template with those values, percent signs and HTML specials included."""
    personal = Personal(name, "https://x/u/t%20?a=1&b=2", "https://x/p/t")
    r = renderer()
    wanted = request(kind, form, personal=personal)
    filled = r.render(wanted)
    context = r.context(wanted)
    for part, text in filled.items():
        if part != "sms":  # fitted to its segments after rendering
            assert text == r._render_part(wanted, part, context), part


def test_a_filler_keeps_percent_signs_and_repeats_values() -> None:
    values = ("Ann %s", "https://x/u/1", "https://x/p/1")
    assert Filler(("100% sure, ", 0, "; ", 0, " ", 2))(values) == (
        "100% sure, Ann %s; Ann %s https://x/p/1"
    )
    assert Filler(("Dear ", 1, " (50%)"))(values) == "Dear https://x/u/1 (50%)"
    assert Filler(("no values, 5% of them",))(values) == "no values, 5% of them"


@pytest.mark.parametrize(
    ("span", "en", "nl"),
    [
        (timedelta(seconds=59), "0 minutes", "0 minuten"),
        (timedelta(hours=2, minutes=7), "2 hours and 7 minutes", "2 uur en 7 minuten"),
        (timedelta(hours=23, minutes=59), "23 hours and 59 minutes", "23 uur en 59 minuten"),
        (timedelta(days=10, hours=1), "10 days and 1 hour", "10 dagen en 1 uur"),
        (timedelta(days=1, hours=4, minutes=20), "1 day, 4 hours, and 20 minutes", None),
    ],
)
def test_a_step_notice_says_how_long_in_words_never_rounded_up(
    span: timedelta, en: str, nl: str | None
) -> None:
    """Babel alone rounds into the next unit ("1 day" for 23 h 59 min, "1 week" for 10
    days): an incident's age is told as it is, to the minute."""
    assert format_span(span, "en") == en
    if nl is not None:
        assert format_span(span, "nl") == nl


LONG_STEP = replace(
    sample_facts("incident_step"),
    title="Lines 51, 53 and 54: no metros between Centraal and Van der Madeweg " * 3,
    opened_at=SAMPLE_NOW - timedelta(days=10, hours=23, minutes=59),
    escalation_step=StepFacts(12, 12, "critical-infrastructure-weekend", timedelta(days=10)),
)


@pytest.mark.parametrize("language", SHIPPED_LANGUAGES)
def test_a_step_notice_by_sms_fits_and_keeps_the_step(language: str) -> None:
    sms = renderer().render(request("incident_step", "sms", language, facts=LONG_STEP))["sms"]
    info = segments(sms)
    assert info.encoding == "GSM-7" and info.segments <= 3, (info, sms)
    told = {
        "en": "open 10 days, 23 hours, and 59 minutes: step 12 of 12 of the critical-",
        "nl": "al 10 dagen, 23 uur en 59 minuten open: stap 12 van 12 van het beleid critical-",
    }
    assert told[language] in sms
    assert sms.endswith("https://status.example.org/incidents/1042")


@pytest.mark.parametrize("language", SHIPPED_LANGUAGES)
def test_a_step_notice_without_a_known_step_or_age_says_what_it_knows(language: str) -> None:
    """A preview of a stored incident, or a notice whose round is not known, has neither."""
    bare = replace(sample_facts("incident_step"), opened_at=None, escalation_step=None)
    r = renderer()
    for form in FORMS:
        parts = r.render(request("incident_step", form, language, facts=bare, cache_key=None))
        text = " ".join(parts.values())
        assert "Card payments failing" in text and "1042" in text
        for unknown in ("step ", "stap ", "minute", "hour", "uur", "None"):
            assert unknown not in text.lower(), (form, unknown, text)


@pytest.mark.parametrize("language", SHIPPED_LANGUAGES)
def test_a_step_notice_escapes_the_title_in_html(language: str) -> None:
    facts = replace(sample_facts("incident_step"), title=f"Title {HOSTILE}")
    html = renderer().render(request("incident_step", "email", language, facts=facts))
    assert "Title &lt;a href=" in html["email_html"]
    assert '<a href="https://evil.example/">' not in html["email_html"]


def test_check_knows_the_step_notice(tmp_path: Path) -> None:
    bad = {
        "en/incident_step/email_text.j2": "{{ step.nmae }} {{ step.open_for }}",
        "nl/incident_step/sms.j2": "{{ step.console }} " * 12,
    }
    for name, source in bad.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    r = renderer(tmp_path)
    errors = check_templates(r.templates, r, 3).errors
    assert any("incident_step/email_text.j2:1: unknown field step.nmae" in e for e in errors)
    assert any("nl/incident_step/sms.j2: " in e and "segments" in e for e in errors), errors
    assert all("/incident_step/" in e for e in errors), errors


def test_an_admin_override_of_the_step_notice_wins_and_can_extend_the_shipped_one(
    tmp_path: Path,
) -> None:
    target = tmp_path / "nl" / "incident_step" / "email_subject.j2"
    target.parent.mkdir(parents=True)
    target.write_text(
        '{% include "default/nl/incident_step/email_subject.j2" %} [stap {{ step.number }}]',
        encoding="utf-8",
    )
    subject = renderer(tmp_path).render(request("incident_step", "email", "nl"))["email_subject"]
    assert (
        subject == "[Escalatie] Card payments failing (critical, 2 uur en 7 minuten open) [stap 2]"
    )
