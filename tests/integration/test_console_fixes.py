"""The console's counts, promises, refusals, update form, lists and double submits, on both
stores: undelivered is not sent, an overdue promise is said in words, a refused action keeps
its error and what was typed, an emptied field withdraws it, severity can be raised, long
lists are paged or bounded, and a form submitted twice acts once."""

from __future__ import annotations

import asyncio
import html
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select, update

from broadcaster import reports
from broadcaster.access import credentials
from broadcaster.incidents import service
from broadcaster.store import Customer, Delivery, Followup, Incident, IncidentUpdate
from broadcaster.web import console
from tests.integration.test_console import (
    DECLARE,
    START,
    Console,
    app,
    audit_rows,
    declare,
    hidden,
    incidents_in,
    run_rounds,
    signed_in,
)

__all__ = ["app"]  # the fixture, used by name


def alert(page: str) -> str:
    """The page-level alert's text, tags removed."""
    found = re.search(r'<div class="error" role="alert" id="action-error">(.*?)</div>', page, re.S)
    assert found, page[:3000]
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(1))))


async def api_headers(app: Console, role: str) -> dict[str, str]:
    _, secret = await credentials.create_token(
        app.state.database, app.clock, name=f"{role}-bot", role=role
    )
    return {"Authorization": f"Bearer {secret}"}


# --- 1. Delivery counts -----------------------------------------------------------------------


async def test_undelivered_counts_as_failed_and_the_counts_table_adds_up(app: Console) -> None:
    csrf = await signed_in(app.http, "ann")
    incident_id = await declare(app, csrf)
    await run_rounds(app)
    async with app.state.database.session() as session, session.begin():
        # As a carrier's status callback (web/twilio.py) records a rejected message.
        await session.execute(
            update(Delivery).where(Delivery.customer_id == "S1").values(state="undelivered")
        )
        await session.execute(
            update(Delivery).where(Delivery.customer_id == "V1").values(state="cancelled")
        )
    rows = (await app.http.get("/console/incidents/rows")).text
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", rows)]
    assert cells[7:10] == ["1", "0", "1"]  # sent, pending, failed
    live = (await app.http.get(f"/console/incidents/{incident_id}/live")).text
    assert 'data-sent="1" data-total="3"' in live and "1 / 3 sent" in live
    table = re.search(r'<table class="counts">(.*?)</table>', live, re.S)
    assert table
    heads = re.findall(r"</span>(\w+)</th>", table.group(1))
    cells = re.findall(r"<td class=\"num\">(\d+)</td>", table.group(1))
    counts = dict(zip(heads, map(int, cells), strict=True))
    assert counts["undelivered"] == 1 and counts["cancelled"] == 1 and counts["sent"] == 1
    assert sum(counts.values()) == 3
    assert '<td class="num total">3</td>' in table.group(1)


# --- 2. Overdue promises ----------------------------------------------------------------------


async def test_a_missed_promise_is_overdue_in_words_and_in_the_api(app: Console) -> None:
    csrf = await signed_in(app.http, "ann")
    incident_id = await declare(app, csrf, severity="major")
    await run_rounds(app)  # round 1 out: "next update by 10:30"
    viewer = await api_headers(app, "viewer")
    app.clock.advance(timedelta(minutes=30, seconds=30))  # within the grace: not yet
    live = (await app.http.get(f"/console/incidents/{incident_id}/live")).text
    assert "overdue" not in live
    detail = (await app.http.get(f"/api/v1/incidents/{incident_id}", headers=viewer)).json()
    assert detail["promises"]["overdue"] == 0
    app.clock.advance(timedelta(minutes=14, seconds=30))  # 10:45, the scheduler stalled
    live = (await app.http.get(f"/console/incidents/{incident_id}/live")).text
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", live))
    assert "2026-03-02 10:30:00Z overdue by 15m 00s" in text  # in words, not colour alone
    assert "0 late · 1 open · 1 overdue by 15m 00s" in text
    detail = (await app.http.get(f"/api/v1/incidents/{incident_id}", headers=viewer)).json()
    assert detail["promises"] == {
        "kept": 0,
        "late": 0,
        "open": 1,
        "overdue": 1,
        "worst_lateness_seconds": None,
    }
    metrics = (await app.http.get("/metrics", headers=viewer)).text
    assert "broadcaster_promises_overdue 1.0" in metrics  # the same rule


# --- 3. A refusal whose form is gone ----------------------------------------------------------


async def test_a_refused_action_whose_form_is_gone_shows_the_error_and_what_was_typed(
    app: Console,
) -> None:
    csrf = await signed_in(app.http, "ann")
    incident_id = await declare(app, csrf, severity="major")
    await run_rounds(app)
    done = await app.http.post(
        f"/console/incidents/{incident_id}/resolve", data={"message": "Fixed.", "csrf_token": csrf}
    )
    assert done.status_code == 303
    typed = "B's carefully written apology\nsecond line"
    again = await app.http.post(
        f"/console/incidents/{incident_id}/resolve",
        data={"message": "All good", "regret": typed, "csrf_token": csrf},
    )
    assert again.status_code == 422 and 'id="resolve-form"' not in again.text
    said = alert(again.text)
    assert "The incident was not resolved" in said and "resolved" in said
    assert "All good" in said and "B's carefully written apology second line" in said
    await run_rounds(app)
    assert (
        await app.http.post(f"/console/incidents/{incident_id}/close", data={"csrf_token": csrf})
    ).status_code == 303
    typed = "Update B wrote while A closed it"
    late = await app.http.post(
        f"/console/incidents/{incident_id}/update",
        data={"message": typed, "workaround": "Take the bus", "csrf_token": csrf},
    )
    assert late.status_code == 422 and 'id="update-form"' not in late.text
    said = alert(late.text)
    assert "The update was not sent" in said and typed in said and "Take the bus" in said
    assert csrf not in said  # the form's own fields are not echoed

    await declare(app, csrf, severity="critical")
    await run_rounds(app)
    queue = (await app.http.get("/console/followups")).text
    task = int(re.findall(r'data-followup="(\d+)"', queue)[0])
    first = await app.http.post(
        f"/console/followups/{task}/done",
        data={"outcome": "reached", "note": "spoke", "csrf_token": csrf},
    )
    assert first.status_code == 303
    note = "B's call notes: customer wants a refund"
    second = await app.http.post(
        f"/console/followups/{task}/done",
        data={"outcome": "reached", "note": note, "csrf_token": csrf},
    )
    assert second.status_code == 422 and f'data-followup="{task}"' not in second.text
    said = alert(second.text)
    assert f"Follow-up #{task}:" in said and note in said


# --- 4 and 5. The update form: current values, withdrawing, severity -------------------------


async def test_the_update_form_shows_the_current_values_and_an_emptied_field_withdraws_it(
    app: Console,
) -> None:
    csrf = await signed_in(app.http, "ann")
    incident_id = await declare(
        app,
        csrf,
        severity="major",
        workaround="Take bus 5 from Central",
        actions="Engineers on site",
        expected_resolution_at="2026-03-02T14:00",
    )
    page = (await app.http.get(f"/console/incidents/{incident_id}")).text
    assert 'name="workaround" value="Take bus 5 from Central"' in page
    assert 'name="actions" value="Engineers on site"' in page
    assert 'name="expected_resolution_at" type="datetime-local" step="1"' in page
    assert hidden(page, "expected_resolution_at_was") == "2026-03-02T14:00:00"
    form = {
        name: hidden(page, name)
        for name in (
            "workaround_was",
            "actions_was",
            "cause_was",
            "cause_kind_was",
            "severity_was",
            "expected_resolution_at_was",
            "nonce",
        )
    }
    # Meanwhile another operator changes what is being done.
    api = await api_headers(app, "operator")
    other = await app.http.post(
        f"/api/v1/incidents/{incident_id}/updates",
        headers=api,
        json={"message": "Crews on the way", "actions": "Crews on the way"},
    )
    assert other.status_code == 201
    posted = await app.http.post(
        f"/console/incidents/{incident_id}/update",
        data={
            **form,
            "message": "Bus 5 is cancelled too.",
            "workaround": "",  # emptied: withdrawn
            "actions": form["actions_was"],  # left as shown: keeps the other's newer one
            "cause_kind": "unknown",
            "cause": "",
            "severity": "major",
            "expected_resolution_at": form["expected_resolution_at_was"],
            "csrf_token": csrf,
        },
    )
    assert posted.status_code == 303, posted.text
    async with app.state.database.session() as session:
        last = await service.latest_update(session, incident_id)
    assert last is not None
    assert last.message == "Bus 5 is cancelled too."
    assert last.workaround is None
    assert last.actions == "Crews on the way"
    assert last.expected_resolution_at is not None
    assert last.expected_resolution_at.hour == 14
    page = (await app.http.get(f"/console/incidents/{incident_id}")).text
    assert 'name="workaround" value=""' in page
    # An emptied expected resolution withdraws it: the time told no longer holds.
    withdrawn = await app.http.post(
        f"/console/incidents/{incident_id}/update",
        data={
            "message": "No time any more",
            "expected_resolution_at": "",
            "expected_resolution_at_was": "2026-03-02T14:00:00",
            "csrf_token": csrf,
        },
    )
    assert withdrawn.status_code == 303, withdrawn.text
    async with app.state.database.session() as session:
        latest = await service.latest_update(session, incident_id)
    assert latest is not None
    assert (latest.message, latest.expected_resolution_at) == ("No time any more", None)


async def test_the_console_raises_the_severity_and_the_audit_says_so(app: Console) -> None:
    csrf = await signed_in(app.http, "ann")
    incident_id = await declare(app, csrf, severity="minor")
    page = (await app.http.get(f"/console/incidents/{incident_id}")).text
    select_ = re.search(r'<select name="severity">(.*?)</select>', page, re.S)
    assert select_ and "<option selected>minor</option>" in select_.group(1)
    assert re.findall(r"<option[^>]*>(\w+)</option>", select_.group(1)) == [
        "minor",
        "major",
        "critical",
    ]
    nonce = hidden(page, "nonce")
    same = await app.http.post(
        f"/console/incidents/{incident_id}/update",
        data={
            "message": "Looking into it",
            "severity": "minor",
            "severity_was": "minor",
            "nonce": nonce,
            "csrf_token": csrf,
        },
    )
    assert same.status_code == 303
    raised = await app.http.post(
        f"/console/incidents/{incident_id}/update",
        data={
            "message": "Worse than thought",
            "severity": "critical",
            "severity_was": "minor",
            "csrf_token": csrf,
        },
    )
    assert raised.status_code == 303, raised.text
    [incident] = await incidents_in(app.state.database)
    assert incident.severity == "critical"
    first, second = await audit_rows(app.state.database, "incident.update")
    assert "severity" not in (first.detail or {})  # unchanged: not passed
    assert second.detail == {"severity": "critical"}
    page = (await app.http.get(f"/console/incidents/{incident_id}")).text
    assert "<option selected>critical</option>" in page


# --- 6. Long lists ---------------------------------------------------------------------------


async def test_the_incident_list_pages_to_older_incidents(
    app: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    csrf = await signed_in(app.http, "ann")
    ids = [await declare(app, csrf, title=f"Incident {n}") for n in range(5)]
    monkeypatch.setattr(console.incidents, "LIST_LIMIT", 2)
    seen: list[int] = []
    url: str | None = "/console/incidents?status=all"
    while url is not None:
        page = (await app.http.get(url)).text
        shown = [int(i) for i in re.findall(r'<tr data-incident="(\d+)"', page)]
        assert 1 <= len(shown) <= 2
        before = re.search(r"before=(\d+)", url)
        if before:  # the live fragment keeps to the same page
            rows = await app.http.get(f"/console/incidents/rows?status=all&before={before[1]}")
            assert [int(i) for i in re.findall(r'data-incident="(\d+)"', rows.text)] == shown
            assert 'id="newest"' in page
        seen += shown
        older = re.search(r'<a href="([^"]+)" id="older"', page)
        url = html.unescape(older.group(1)) if older else None
    assert seen == sorted(ids, reverse=True)


async def test_an_incident_page_bounds_its_follow_ups_and_links_to_the_queue(
    app: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    csrf = await signed_in(app.http, "ann")
    incident_id = await declare(app, csrf)  # critical: a call for each of V1, V2
    other = await declare(app, csrf, title="Another")
    await run_rounds(app)
    async with app.state.database.session() as session, session.begin():
        await session.execute(
            insert(Customer),
            [
                {
                    "id": f"C{n}",
                    "name": f"C {n}",
                    "language": "en",
                    "timezone": "UTC",
                    "tier": "vip",
                    "account_manager": "ann",
                    "created_at": START,
                    "updated_at": START,
                }
                for n in range(3)
            ],
        )
        await session.execute(
            insert(Followup),
            [
                {
                    "incident_id": incident_id,
                    "customer_id": f"C{n}",
                    "rule": "r",
                    "kind": "visit",
                    "owner": "ann",
                    "state": "done",
                    "deadline_at": START + timedelta(minutes=n),
                    "created_at": START,
                }
                for n in range(3)
            ],
        )
    monkeypatch.setattr(reports, "FOLLOWUPS_SHOWN", 1)
    live = (await app.http.get(f"/console/incidents/{incident_id}/live")).text
    section = live[live.index("<h2>Follow-ups") :]
    assert "(2 open)" in section
    assert "3 done · 2 open" in section
    assert section.count("<td>call</td>") == 1 and "<td>visit</td>" not in section  # open first
    assert "1 of 5 shown" in section
    link = f"/console/followups?incident={incident_id}&amp;state=all"
    assert link in section
    queue = (await app.http.get(html.unescape(link))).text
    assert queue.count("data-followup=") == 5
    assert f"incident #{incident_id}" in queue
    tasks = re.findall(r'<a href="/console/incidents/(\d+)">#', queue)
    assert set(tasks) == {str(incident_id)}
    async with app.state.database.session() as session:
        others = (
            await session.execute(select(func.count()).where(Followup.incident_id == other))
        ).scalar_one()
    assert others == 2  # there were others to leave out


# --- 7. Double submits -----------------------------------------------------------------------


async def test_a_form_submitted_twice_acts_once(app: Console) -> None:
    csrf = await signed_in(app.http, "ann")
    page = (await app.http.get("/console/incidents/new")).text
    assert "data-once" in page
    form = {**DECLARE, "severity": "major", "csrf_token": csrf, "nonce": hidden(page, "nonce")}
    first = await app.http.post("/console/incidents", data=form)
    second = await app.http.post("/console/incidents", data=form)
    assert first.status_code == second.status_code == 303
    assert first.headers["location"] == second.headers["location"]
    [incident] = await incidents_in(app.state.database)
    assert first.headers["location"] == f"/console/incidents/{incident.id}?ok=declared"
    # Two at once (a double click reaching two workers): one acts, both see it.
    page = (await app.http.get("/console/incidents/new")).text
    form = {**form, "title": "Another", "nonce": hidden(page, "nonce")}
    both = await asyncio.gather(*(app.http.post("/console/incidents", data=form) for _ in "ab"))
    assert [r.status_code for r in both] == [303, 303]
    assert both[0].headers["location"] == both[1].headers["location"]
    assert len(await incidents_in(app.state.database)) == 2
    assert len(await audit_rows(app.state.database, "incident.declare")) == 2

    page = (await app.http.get(f"/console/incidents/{incident.id}")).text
    nonces = re.findall(r'name="nonce" value="([^"]+)"', page)
    assert len(set(nonces)) == 2  # the update and the resolve forms, one each
    update_form = {"message": "Still on it", "csrf_token": csrf, "nonce": nonces[0]}
    for _ in range(2):
        sent = await app.http.post(f"/console/incidents/{incident.id}/update", data=update_form)
        assert sent.headers["location"] == f"/console/incidents/{incident.id}?ok=updated"
    # The nonce with other contents (the back button, an edit, a send): refused, not taken
    # for the first submit (which dropped it and said it was sent).
    edited = await app.http.post(
        f"/console/incidents/{incident.id}/update", data={**update_form, "message": "Other"}
    )
    assert edited.status_code == 422
    assert "This form was sent already, with other contents" in alert(edited.text)
    assert "Other" in edited.text  # what was typed is given back
    resolve_form = {"message": "Fixed", "csrf_token": csrf, "nonce": nonces[1]}
    for _ in range(2):  # the second is not refused as "already resolved": it was this one
        sent = await app.http.post(f"/console/incidents/{incident.id}/resolve", data=resolve_form)
        assert sent.status_code == 303
        assert sent.headers["location"] == f"/console/incidents/{incident.id}?ok=resolved"
    async with app.state.database.session() as session:
        kinds = (
            await session.execute(
                select(IncidentUpdate.kind)
                .where(IncidentUpdate.incident_id == incident.id)
                .order_by(IncidentUpdate.id)
            )
        ).scalars()
        assert list(kinds) == ["declared", "update", "resolved"]
        assert (await session.execute(select(func.count()).select_from(Incident))).scalar_one() == 2
    assert len(await audit_rows(app.state.database, "incident.update")) == 1
