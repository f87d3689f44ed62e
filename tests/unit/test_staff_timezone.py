"""Staff read their notices' times in their own zone: ``staff.people.<id>.timezone``, else
``staff.timezone``, else UTC; an unknown zone is a located configuration error. The
deadline of a task, the incident's start and the step's in a step notice are given there,
the zone named; the customer's local deadline stays in the customer's zone."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broadcaster.compose.context import StepFacts
from broadcaster.compose.render import Renderer, RenderRequest
from broadcaster.compose.samples import sample_facts, sample_personal
from broadcaster.compose.templates import TemplateSet
from broadcaster.config.settings import StaffSettings
from broadcaster.followups.directory import Directory
from broadcaster.followups.notify import task_context_of
from broadcaster.store import Customer, Followup
from tests.unit.test_config import at, problems_of, write_config

NOW = datetime(2026, 1, 6, 10, 30, tzinfo=UTC)
DEADLINE = datetime(2026, 1, 6, 12, 0, tzinfo=UTC)


def directory(zone: str | None = None, **zones: str | None) -> Directory:
    people = {
        "ann": {"name": "Ann Visser", "timezone": zones.get("ann")},
        "maria": {"name": "Maria Jansen", "timezone": zones.get("maria")},
    }
    return Directory(StaffSettings.model_validate({"people": people, "timezone": zone}))


def context(staff: str, staff_directory: Directory, language: str = "en") -> dict[str, object]:
    task = Followup(
        id=7,
        kind="call",
        owner="ann",
        state="open",
        deadline_at=DEADLINE,
        escalation=None,
        escalation_level=0,
    )
    customer = Customer(id="V1", name="Vera", language="nl", timezone="Asia/Tokyo", tier="vip")
    return task_context_of(
        task,
        "assigned",
        staff,
        customer,
        ["v@example.org"],
        incidents=1,
        window=timedelta(days=30),
        title="Pay down",
        language=language,
        now=NOW,
        public_url="https://status.example.org",
        directory=staff_directory,
        told=set(),
    )


# -- the configuration --------------------------------------------------------------------


def test_an_unknown_zone_is_a_located_error_at_the_person_or_the_directory(
    tmp_path: Path,
) -> None:
    path = write_config(
        tmp_path,
        """
        staff:
          timezone: Mars/Olympus_Mons
          people:
            ann: {name: Ann, email: ann@example.org, timezone: europe/amsterdam}
            bram: {name: Bram, email: bram@example.org, timezone: Europe/Amsterdam}
        """,
    )
    assert problems_of(path) == [
        f"{at(path, 'europe/amsterdam')}: staff.people.ann.timezone: unknown time zone "
        "'europe/amsterdam' (did you mean 'Europe/Amsterdam'?)",
        f"{at(path, 'Mars/')}: staff.timezone: unknown time zone 'Mars/Olympus_Mons' "
        "(an IANA name, e.g. Europe/Amsterdam or UTC)",
    ]


def test_a_zone_set_from_the_environment_is_located_there(tmp_path: Path) -> None:
    path = write_config(tmp_path, "staff:\n  people:\n    ann: {name: Ann}\n")
    environ = {"BROADCASTER_STAFF__PEOPLE__ANN__TIMEZONE": "CET/Nowhere"}
    assert problems_of(path, environ) == [
        "environment BROADCASTER_STAFF__PEOPLE__ANN__TIMEZONE: staff.people.ann.timezone: "
        "unknown time zone 'CET/Nowhere' (an IANA name, e.g. Europe/Amsterdam or UTC)"
    ]


@pytest.mark.parametrize(
    ("own", "default", "expected"),
    [
        ("Asia/Tokyo", "Europe/Amsterdam", "Asia/Tokyo"),
        (None, "Europe/Amsterdam", "Europe/Amsterdam"),
        (None, None, "UTC"),
    ],
)
def test_a_person_s_zone_then_the_directory_s_then_utc(
    own: str | None, default: str | None, expected: str
) -> None:
    staff = directory(default, ann=own).staff
    assert staff.timezone_of("ann") == expected
    assert staff.timezone_of("nobody") == (default or "UTC")


# -- a task's notice ----------------------------------------------------------------------


def test_a_task_s_deadline_is_in_the_recipient_s_zone_and_the_customer_s_beside_it() -> None:
    staff = directory("Europe/Amsterdam", maria="America/New_York")
    for recipient, deadline, zone in (
        ("ann", "13:00 CET", "Europe/Amsterdam"),  # the directory's zone
        ("maria", "07:00 EST", "America/New_York"),  # her own
    ):
        task = context(recipient, staff)
        assert (task["deadline"], task["staff_timezone"]) == (deadline, zone)
        assert task["local_deadline"] == "21:00 JST"  # the customer's, as before
    assert context("ann", directory())["deadline"] == "12:00 UTC"  # none set: UTC


def test_a_task_s_notice_says_the_deadline_in_the_recipient_s_zone() -> None:
    renderer = Renderer(
        TemplateSet(None), organisation="Example Transit", public_url="https://status.example.org"
    )
    staff = directory(maria="Europe/Amsterdam")
    for form, part in (("email", "email_subject"), ("sms", "sms")):
        parts = renderer.render(
            RenderRequest(
                kind="followup_task",
                form=form,
                facts=sample_facts("followup_task"),
                language="en",
                timezone="Europe/Amsterdam",
                now=NOW,
                personal=sample_personal("Maria Jansen"),
                task=context("maria", staff),
            )
        )
        assert "by 13:00 CET" in parts[part], parts[part]
        assert "12:00 UTC" not in parts[part]


# -- an escalation step's notice ---------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "opened", "started"),
    [
        ("UTC", "06:00 UTC", "08:00 UTC"),
        ("Europe/Amsterdam", "07:00 CET", "09:00 CET"),
        ("Asia/Kolkata", "11:30 IST", "13:30 IST"),
    ],
)
def test_a_step_notice_gives_the_start_and_the_step_s_time_in_the_zone(
    zone: str, opened: str, started: str
) -> None:
    now = datetime(2026, 1, 6, 8, 7, tzinfo=UTC)
    facts = replace(
        sample_facts("incident_step"),
        opened_at=datetime(2026, 1, 6, 6, 0, tzinfo=UTC),
        escalation_step=StepFacts(2, 2, "critical", timedelta(hours=2)),
    )
    renderer = Renderer(
        TemplateSet(None), organisation="Example Transit", public_url="https://status.example.org"
    )
    request = RenderRequest(
        kind="incident_step",
        form="email",
        facts=facts,
        language="en",
        timezone=zone,
        now=now,
        personal=sample_personal("Maria Jansen"),
    )
    step = renderer.context(request)["step"]
    assert (step["opened_at"], step["started_at"]) == (opened, started)
    text = renderer.render(request)["email_text"]
    assert f"has been open for 2 hours and 7 minutes (since {opened})" in text
    assert f"from 2 hours on (since {started})" in text
