"""Staff task notices (``followup_task``) in every form and shipped language: which notice
it is (assigned, reminder, escalation), the task's id, the owner, and how to record the
outcome, phrased by each language's templates from the task's facts; the English sentences
of old still given to templates written for them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broadcaster.compose.render import Renderer, RenderRequest
from broadcaster.compose.samples import SAMPLE_NOW, SAMPLE_TASK, sample_facts, sample_personal
from broadcaster.compose.templates import SHIPPED_LANGUAGES, TemplateSet
from broadcaster.config.settings import StaffSettings
from broadcaster.followups.directory import Directory
from broadcaster.followups.notify import task_context_of
from broadcaster.store import Customer, Followup
from channels.sms_segments import segments

NOTICES = ("assigned", "reminder", "escalation")


def renderer(override: Path | None = None, language: str = "en") -> Renderer:
    return Renderer(
        TemplateSet(override, default_language=language),
        organisation="Example Transit",
        public_url="https://status.example.org",
    )


def render(
    form: str, in_language: str, using: Renderer | None = None, /, **task: Any
) -> dict[str, str]:
    """The sample task's notice (with ``task``'s changes) in ``form``."""
    return (using or renderer()).render(
        RenderRequest(
            kind="followup_task",
            form=form,
            facts=sample_facts("followup_task"),
            language=in_language,
            timezone="UTC",
            now=SAMPLE_NOW,
            personal=sample_personal("Maria Jansen"),
            task={**SAMPLE_TASK, **task},
        )
    )


HEADS = {
    "en": {
        "assigned": "Follow-up 318 is yours.",
        "reminder": "Reminder: follow-up 318 is still open.",
        "escalation": "Overdue, escalated to you: follow-up 318. Pieter Bakker (pieter), its owner",
    },
    "nl": {
        "assigned": "Opvolging 318 is voor u.",
        "reminder": "Herinnering: opvolging 318 staat nog open.",
        "escalation": "Te laat, naar u geescaleerd: opvolging 318. Eigenaar Pieter Bakker (pieter)",
    },
}


@pytest.mark.parametrize("language", SHIPPED_LANGUAGES)
@pytest.mark.parametrize("notice", NOTICES)
def test_an_sms_says_which_notice_the_task_and_how_to_record_it(language: str, notice: str) -> None:
    """Staff told by SMS tell an assignment from a reminder and an escalation, read the
    task's id (and, escalated, its owner), and how to record the outcome; whole, within
    ``messages.sms_max_segments`` (3) with typical values."""
    sms = render("sms", language, notice=notice, overdue=notice == "escalation")["sms"]
    assert sms.startswith(HEADS[language][notice]), sms
    assert "broadcaster followups done 318 --as maria --outcome reached --note" in sms
    assert "+31612345678" in sms and "10:00 CET" in sms
    assert ("Pieter Bakker" in sms) is (notice == "escalation")
    assert sms.endswith("klantniveau vip.\nhttps://status.example.org/incidents/1042") or (
        sms.endswith("tier vip.\nhttps://status.example.org/incidents/1042")
    )  # nothing was cut
    assert segments(sms).segments <= 3


@pytest.mark.parametrize("language", SHIPPED_LANGUAGES)
@pytest.mark.parametrize("notice", NOTICES)
def test_the_subject_push_and_email_say_the_notice_and_the_task(language: str, notice: str) -> None:
    email = render("email", language, notice=notice)
    push = render("push", language, notice=notice)
    prefix = {
        "en": {
            "assigned": "",
            "reminder": "Reminder: ",
            "escalation": "Overdue, escalated to you: ",
        },
        "nl": {
            "assigned": "",
            "reminder": "Herinnering: ",
            "escalation": "Te laat, naar u geëscaleerd: ",
        },
    }[language][notice]
    follow_up = {"en": "Follow-up 318: call", "nl": "Opvolging 318: bellen"}[language]
    for title in (email["email_subject"], push["push_title"]):
        assert title == f"{prefix}{follow_up} Anna de Vries " + (
            "by 09:00 UTC" if language == "en" else "uiterlijk 09:00 UTC"
        )
    for text in (email["email_text"], email["email_html"], push["push_body"]):
        assert "318" in text and ("Pieter Bakker" in text) is (notice == "escalation")
        assert "broadcaster followups done 318 --as maria" in text


def test_a_dutch_operation_gets_no_english_sentences() -> None:
    """``messages.default_language: nl``: the staff's templates are Dutch, and so is every
    sentence in them (they were English sentences made in Python)."""
    for notice in NOTICES:
        email = render("email", "nl", notice=notice, language_name="Nederlands")
        for text in (email["email_subject"], email["email_text"], email["email_html"]):
            for english in (
                "How to reach",
                "they read",
                "time zone",
                "affected them",
                "Apologise",
                "Record the outcome",
                "Reminder",
                "Overdue",
                "its owner",
                "what was said",
            ):
                assert english not in text, (notice, english)
        assert (
            "de klant leest Nederlands (nl); tijdzone Europe/Amsterdam, waar de deadline "
            in (email["email_text"])
        )
        assert "3 storingen troffen de klant in de afgelopen 30 dagen" in email["email_text"]


def test_claim_first_only_when_the_commands_say_so_and_none_when_neither_works() -> None:
    claim = render(
        "email", "en", claim_command="broadcaster followups claim 318 --as bram", notice="assigned"
    )["email_text"]
    assert (
        "'broadcaster followups claim 318 --as bram', then 'broadcaster followups done 318 "
        "--as maria --outcome reached" in claim
    )
    console_only = render("sms", "en", done_command=None, notice="reminder", overdue=True)["sms"]
    assert console_only.startswith("Reminder: follow-up 318 is still open, and overdue.")
    assert "broadcaster followups" not in console_only
    assert "Record it on the console." in console_only


def test_an_unowned_task_and_a_whole_history_window() -> None:
    text = render("email", "en", owner=None, owner_id=None, window_count=None, window_unit=None)[
        "email_text"
    ]
    assert "Nobody owns it, and it is overdue: see that it is done." in text
    assert "3 incidents affected them so far; tier vip" in text
    nl = render("email", "nl", incidents=1, window_count=1, window_unit="hour")["email_text"]
    assert "1 storing trof de klant in de afgelopen 1 uur" in nl


def test_what_staff_and_customers_wrote_is_escaped_in_the_html() -> None:
    html = render(
        "email",
        "en",
        customer="<b>Anna</b>",
        incident="Pay & <i>go</i>",
        addresses=["<script>x</script>"],
    )["email_html"]
    assert "<b>Anna</b>" not in html and "&lt;b&gt;Anna&lt;/b&gt;" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "Pay &amp; &lt;i&gt;go&lt;/i&gt;" in html


def _context(notice: str, language: str = "en") -> dict[str, object]:
    now = datetime(2026, 1, 6, 10, 30, tzinfo=UTC)
    staff = Directory(
        StaffSettings.model_validate(
            {
                "people": {
                    "ann": {"name": "Ann Visser", "manager": "maria"},
                    "maria": {"name": "Maria Jansen"},
                }
            }
        )
    )
    task = Followup(
        id=7,
        kind="call",
        owner="ann",
        state="open",
        deadline_at=datetime(2026, 1, 6, 12, 0, tzinfo=UTC),
        escalation=None,
        escalation_level=0,
    )
    customer = Customer(id="V1", name="Vera", language="nl", timezone="Asia/Tokyo", tier="vip")
    return task_context_of(
        task,
        notice,
        "maria",
        customer,
        ["v@example.org"],
        incidents=2,
        window=timedelta(days=30),
        title="Pay down",
        language=language,
        now=now,
        public_url="https://status.example.org/",
        directory=staff,
        told=set(),
    )


def test_the_context_gives_the_facts_and_the_english_sentences_of_old() -> None:
    task = _context("escalation")
    assert {k: task[k] for k in ("id", "notice", "owner", "owner_id", "overdue")} == {
        "id": 7,
        "notice": "escalation",
        "owner": "Ann Visser",
        "owner_id": "ann",
        "overdue": False,
    }
    assert task["language_name"] == "Dutch" and task["local_deadline"] == "21:00 JST"
    assert (task["window_count"], task["window_unit"], task["incidents"]) == (30, "day", 2)
    assert task["console"] == "https://status.example.org/console/followups"
    assert (task["claim_command"], task["done_command"]) == (
        None,
        "broadcaster followups done 7 --as maria",  # ann's manager
    )
    assert task["contact"] == (
        "v@example.org; they read Dutch (nl); their time zone is Asia/Tokyo, where the "
        "deadline is 21:00 JST"
    )
    assert task["history"] == "2 incidents affected them in the last 30 days; tier vip"
    assert str(task["what_to_say"]).startswith(
        "Ann Visser (ann), its owner, recorded no outcome by the deadline"
    )
    assert _context("assigned", "nl")["language_name"] == "Nederlands"


def test_a_template_written_for_the_old_keys_still_renders(tmp_path: Path) -> None:
    """An admin's override from before the facts were given: its keys are still there."""
    folder = tmp_path / "en" / "followup_task"
    folder.mkdir(parents=True)
    (folder / "sms.j2").write_text(
        "{{ task.customer }} by {{ task.deadline }}. {{ task.contact }}. {{ task.history }}. "
        "{{ task.what_to_say }}",
        encoding="utf-8",
    )
    sms = render("sms", "en", renderer(tmp_path), **_context("reminder"))["sms"]
    assert sms.startswith("Vera by 12:00 UTC. v@example.org; they read Dutch (nl)")


def test_a_visit_s_context_gives_the_postal_address_as_its_lines_a_call_s_no_sentence() -> None:
    """``postal_address`` is the customer's address as its lines ([] when none is on file);
    the English ``contact`` of old names it for a visit only."""
    staff = Directory(StaffSettings.model_validate({"people": {"ann": {"name": "Ann"}}}))
    now = datetime(2026, 1, 6, 10, 30, tzinfo=UTC)

    def context(kind: str, address: str | None) -> dict[str, object]:
        task = Followup(
            id=9,
            kind=kind,
            owner="ann",
            state="open",
            deadline_at=now + timedelta(hours=2),
            escalation=None,
            escalation_level=0,
        )
        customer = Customer(
            id="V1",
            name="Vera",
            language="en",
            timezone="UTC",
            tier="vip",
            postal_address=address,
        )
        return task_context_of(
            task,
            "assigned",
            "ann",
            customer,
            [],
            incidents=1,
            window=timedelta(days=30),
            title="Pay down",
            language="en",
            now=now,
            public_url="https://status.example.org",
            directory=staff,
            told=set(),
        )

    visit = context("visit", "Markt 1\n1234 AB Stad")
    assert visit["postal_address"] == ["Markt 1", "1234 AB Stad"]
    assert str(visit["contact"]).endswith("; their postal address is Markt 1, 1234 AB Stad")
    bare = context("visit", None)
    assert bare["postal_address"] == []
    assert str(bare["contact"]).endswith("; no postal address is on file")
    call = context("call", "Markt 1")
    assert "postal address" not in str(call["contact"])


@pytest.mark.parametrize("language", SHIPPED_LANGUAGES)
@pytest.mark.parametrize("form", ["email", "sms", "push"])
def test_a_visit_without_an_address_says_so_plainly(language: str, form: str) -> None:
    parts = render(form, language, kind="visit", postal_address=[])
    said = {
        "en": ("no postal address is on file", "No postal address on file."),
        "nl": ("er is geen postadres bekend", "Geen postadres bekend."),
    }[language]
    text = " ".join(parts.values())
    assert any(words in text for words in said), text
    assert "Keizersgracht" not in text
    if form == "sms":
        assert segments(parts["sms"]).segments <= 3


SAME_ZONE = {"staff_timezone": "Europe/Amsterdam", "deadline": "10:00 CET"}
"""The sample task told to staff in the customer's own zone (the sample's differ: UTC)."""


@pytest.mark.parametrize("language", SHIPPED_LANGUAGES)
@pytest.mark.parametrize("notice", NOTICES)
def test_in_the_customer_s_zone_the_deadline_is_not_repeated_for_them(
    language: str, notice: str
) -> None:
    """Staff in the customer's zone read the deadline once: no "10:00 CET for them" beside
    "by 10:00 CET"; the SMS still says what the customer reads, the email their zone."""
    overdue = notice == "escalation"
    sms = render("sms", language, notice=notice, overdue=overdue, **SAME_ZONE)["sms"]
    push = render("push", language, notice=notice, **SAME_ZONE)["push_body"]
    email = render("email", language, notice=notice, **SAME_ZONE)
    said = {
        "en": {
            "sms": "by 10:00 CET (they read Dutch): +31612345678",
            "push": "by 10:00 CET: +31612345678",
            "email": "they read Dutch (nl); their time zone is Europe/Amsterdam, as yours",
        },
        "nl": {
            "sms": "uiterlijk 10:00 CET (leest Dutch): +31612345678",
            "push": "uiterlijk 10:00 CET: +31612345678",
            "email": "de klant leest Dutch (nl); tijdzone Europe/Amsterdam, dezelfde als de uwe",
        },
    }[language]
    repeated = {
        "en": ("for them", "where the deadline is"),
        "nl": ("bij de klant", "waar de deadline"),
    }[language]
    assert said["sms"] in sms, sms
    assert said["push"] in push, push
    for text in (email["email_text"], email["email_html"]):
        assert said["email"] in text, text
    for text in (sms, push, email["email_text"], email["email_html"]):
        assert text.count("10:00 CET") == 1, text
        for words in repeated:
            assert words not in text, (words, text)
    assert segments(sms).segments <= 3


@pytest.mark.parametrize("language", SHIPPED_LANGUAGES)
def test_in_another_zone_the_customer_s_deadline_is_still_given(language: str) -> None:
    """The sample's staff zone (UTC) is not the customer's (Europe/Amsterdam): the
    customer's deadline stays beside the staff member's."""
    sms = render("sms", language)["sms"]
    push = render("push", language)["push_body"]
    email = render("email", language)
    said = {
        "en": {
            "sms": "by 09:00 UTC (10:00 CET for them; they read Dutch): ",
            "push": "by 09:00 UTC (10:00 CET for them): ",
            "email": "their time zone is Europe/Amsterdam, where the deadline is 10:00 CET",
        },
        "nl": {
            "sms": "uiterlijk 09:00 UTC (10:00 CET bij de klant; leest Dutch): ",
            "push": "uiterlijk 09:00 UTC (10:00 CET bij de klant): ",
            "email": "tijdzone Europe/Amsterdam, waar de deadline 10:00 CET is",
        },
    }[language]
    assert said["sms"] in sms, sms
    assert said["push"] in push, push
    for text in (email["email_text"], email["email_html"]):
        assert said["email"] in text, text


LONG_ADDRESS = ["Keizersgracht 123 achterhuis", *[f"Gebouw {n} " + "x" * 36 for n in range(8)]]
"""A postal address of 10 lines and about 400 characters (500 with its breaks is the most
a customer's may have: customers.rows.MAX_POSTAL_ADDRESS)."""


@pytest.mark.parametrize("language", SHIPPED_LANGUAGES)
@pytest.mark.parametrize("notice", NOTICES)
def test_a_long_postal_address_is_shortened_in_the_sms_not_the_record_instruction(
    language: str, notice: str
) -> None:
    """The SMS is cut from its end to fit its segments: a long address before the record
    instruction pushed the instruction out. The address gives way instead: cut after a
    whole word, with "..." and where to read it whole; the email keeps all of it."""
    address = [*LONG_ADDRESS, "x" * (500 - len("\n".join(LONG_ADDRESS)) - 1)]
    assert len("\n".join(address)) == 500
    task = {"kind": "visit", "postal_address": address, "notice": notice}
    sms = render("sms", language, **task, overdue=notice == "escalation")["sms"]
    said = {
        "en": (
            "Address: Keizersgracht",
            "... (in full on the console).",
            '"what was said", or on the console.',
        ),
        "nl": (
            "Adres: Keizersgracht",
            "... (volledig in de console).",
            '"wat er gezegd is", of in de console.',
        ),
    }[language]
    start, cut, record = said
    assert start in sms and cut in sms, sms
    assert sms.endswith(record + "\nhttps://status.example.org/incidents/1042"), sms
    assert segments(sms).segments <= 3
    assert "\ue002" not in sms and "\ue004" not in sms
    email = render("email", language, **task)
    assert all(line in email["email_text"] for line in address[-2:])
    assert "\ue002" not in "".join(email.values())
    # A short one is given whole, without the note.
    short = render("sms", language, kind="visit", notice=notice)["sms"]
    assert "Keizersgracht 123, 1015 CJ Amsterdam." in short and cut not in short


def test_an_address_with_the_marks_own_characters_leaves_no_mark_in_the_sms() -> None:
    """The characters that mark a shortenable span, in the value itself, would unmatch the
    span and leave the marks in the message (and make the SMS UCS-2): they go."""
    task = {"kind": "visit", "postal_address": ["Markt\ue003 1", "\ue004Stad\ue002"]}
    text = render("sms", "en", **task, notice="assigned")["sms"]
    assert not any(mark in text for mark in "\ue002\ue003\ue004"), text
    assert "Markt 1, Stad" in text


@pytest.mark.parametrize("language", SHIPPED_LANGUAGES)
def test_an_address_of_one_long_word_is_cut_within_it(language: str) -> None:
    """No space to cut after: the address is cut within its one word, as far as needed, and
    the record instruction still ends the SMS."""
    task = {"kind": "visit", "postal_address": ["Keizersgracht" + "x" * 480], "notice": "assigned"}
    sms = render("sms", language, **task)["sms"]
    record = {"en": "or on the console.", "nl": "of in de console."}[language]
    assert sms.endswith(record + "\nhttps://status.example.org/incidents/1042"), sms
    assert "Keizersgrachtxx" in sms and "x" * 480 not in sms
    assert segments(sms).segments <= 3


def test_a_short_span_is_never_made_longer_by_its_note() -> None:
    from broadcaster.compose.render import shorten_spans

    text = "A" * 500 + " \ue002Markt 1\ue003 (in full on the console)\ue004 Record it."
    shortened = shorten_spans(text, "", 1)
    assert len(shortened) <= len("A" * 500 + " Markt 1 Record it.")
    assert "\ue002" not in shortened
