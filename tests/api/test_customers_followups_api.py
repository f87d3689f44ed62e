"""Customers (create, read, replace, delete, import), deliveries, follow-ups and rules
through the API."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from broadcaster.daemon import warn_of_unknown_owners
from broadcaster.store import AuditEntry, Database, Delivery, Followup, Round
from tests.api.support import START, api_client, settings

ANN = {
    "id": "c-ann",
    "name": "Ann Example",
    "email": "ann@example.org",
    "phone": "+31612345678",
    "components": ["north-line"],
    "language": "nl",
    "timezone": "Europe/Amsterdam",
}


async def test_customers_are_created_replaced_and_deleted(database: Database) -> None:
    async with api_client(database) as api:
        made = await api.call("POST", "/api/v1/customers", json=ANN)
        assert made.status_code == 201, made.text
        body = made.json()
        assert [(p["kind"], p["address"]) for p in body["contact_points"]] == [
            ("email", "ann@example.org"),
            ("sms", "+31612345678"),
        ]
        assert body["subscriptions"] == [{"kind": "component", "value": "north-line"}]
        again = await api.call("POST", "/api/v1/customers", json=ANN)
        assert again.status_code == 409

        replaced = await api.call(
            "PUT",
            "/api/v1/customers/c-ann",
            json={**ANN, "phone": None, "regions": ["north"], "name": "Ann E."},
        )
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["name"] == "Ann E."
        points = (await api.call("GET", "/api/v1/customers/c-ann/contact-points")).json()
        assert [p["kind"] for p in points] == ["email"]
        topics = (await api.call("GET", "/api/v1/customers/c-ann/subscriptions")).json()
        assert {(t["kind"], t["value"]) for t in topics} == {
            ("component", "north-line"),
            ("region", "north"),
        }
        fresh = await api.call("PUT", "/api/v1/customers/c-new", json={**ANN, "id": "c-new"})
        assert fresh.status_code == 201
        assert (await api.call("DELETE", "/api/v1/customers/c-new")).status_code == 204
        mismatch = await api.call("PUT", "/api/v1/customers/c-ann", json={**ANN, "id": "other"})
        assert mismatch.status_code == 422 and mismatch.json()["error"]["field"] == "body.id"

        bad = await api.call("POST", "/api/v1/customers", json={**ANN, "id": "c2", "email": "x@"})
        assert bad.status_code == 422
        assert bad.json()["error"]["field"] == "body.email"

        listed = (
            await api.call("GET", "/api/v1/customers", "operator", params={"q": "Ann"})
        ).json()
        assert [c["id"] for c in listed["items"]] == ["c-ann"]
        assert (await api.call("GET", "/api/v1/customers", "viewer")).status_code == 403

        deleted = await api.call("DELETE", "/api/v1/customers/c-ann")
        assert deleted.status_code == 204
        assert (await api.call("GET", "/api/v1/customers/c-ann")).status_code == 404
        assert (await api.call("DELETE", "/api/v1/customers/c-ann")).status_code == 404
        async with database.session() as session:
            actions = [
                (a.action, a.outcome)
                for a in (
                    await session.execute(select(AuditEntry).order_by(AuditEntry.id))
                ).scalars()
            ]
        assert actions == [
            ("customer.create", "ok"),
            ("customer.create", "refused"),  # the id was taken
            ("customer.update", "ok"),
            ("customer.create", "ok"),
            ("customer.delete", "ok"),
            ("customer.update", "refused"),  # a body for another customer
            ("GET /api/v1/customers", "refused"),  # the viewer's, refused for the role
            ("customer.delete", "ok"),
            ("customer.delete", "refused"),  # no such customer any more
        ]


async def test_concurrent_creations_of_one_customer_tell_one_that_it_created_it(
    database: Database,
) -> None:
    """Both requests found no customer before either wrote: both answered 201 and the
    second silently replaced the first."""
    async with api_client(database) as api:
        posts = await asyncio.gather(
            *(
                api.call("POST", "/api/v1/customers", json={**ANN, "name": f"Ann {n}"})
                for n in range(4)
            )
        )
        assert sorted(answer.status_code for answer in posts) == [201, 409, 409, 409]
        made = next(answer for answer in posts if answer.status_code == 201).json()["name"]
        shown = await api.call("GET", "/api/v1/customers/c-ann")
        assert shown.json()["name"] == made
        puts = await asyncio.gather(
            *(
                api.call("PUT", "/api/v1/customers/c-bob", json={**ANN, "id": "c-bob"})
                for _ in range(4)
            )
        )
        assert sorted(answer.status_code for answer in puts) == [200, 200, 200, 201]
    async with database.session() as session:
        audited = (
            await session.execute(
                select(AuditEntry.outcome).where(
                    AuditEntry.action == "customer.create", AuditEntry.target == "customer:c-ann"
                )
            )
        ).scalars()
        assert sorted(audited) == ["ok", "refused", "refused", "refused"]


async def test_an_import_keeps_good_rows_and_locates_bad_ones(database: Database) -> None:
    async with api_client(database) as api:
        csv = (
            "id,name,email,phone,components\n"
            "c1,Ann,ann@example.org,,north\n"
            "c2,Bob,not-an-email,,north\n"
            "c3,Cy,,+31612345678,south\n"
        )
        result = await api.call(
            "POST",
            "/api/v1/customers/import",
            content=csv.encode(),
            headers={"Content-Type": "text/csv"},
        )
        assert result.status_code == 200, result.text
        body = result.json()
        assert body["imported"] == 2 and body["rejected"] == 1
        assert body["errors"] == [
            {"line": 3, "field": "email", "message": body["errors"][0]["message"]}
        ]
        assert "email" in body["errors"][0]["message"]
        jsonl = b'{"id": "c4", "name": "Di", "email": "di@example.org", "regions": ["x"]}\n'
        as_lines = await api.call(
            "POST",
            "/api/v1/customers/import",
            content=jsonl,
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert as_lines.json()["imported"] == 1
        unknown = await api.call(
            "POST",
            "/api/v1/customers/import",
            content=b"x",
            headers={"Content-Type": "application/pdf"},
        )
        assert unknown.status_code == 415
        header = await api.call(
            "POST",
            "/api/v1/customers/import",
            content=b"nope,nothing\n1,2\n",
            headers={"Content-Type": "text/csv"},
        )
        assert header.status_code == 422
        assert "body" in header.json()["error"]["message"]
        ids = [c["id"] for c in (await api.call("GET", "/api/v1/customers")).json()["items"]]
        assert ids == ["c1", "c3", "c4"]


async def _followup(database: Database, incident_id: int, owner: str, rule: str) -> int:
    async with database.session() as session, session.begin():
        result = await session.execute(
            insert(Followup)
            .values(
                incident_id=incident_id,
                customer_id="c1",
                rule=rule,
                kind="call",
                owner=owner,
                state="open",
                deadline_at=START + timedelta(hours=2),
                escalation_level=0,
                created_at=START,
            )
            .returning(Followup.id)
        )
        return int(result.scalar_one())


async def _customer_and_incident(api: Any, severity: str) -> int:
    """Customer c1 on north-line, and an incident of ``severity`` there; its id."""
    await api.call("POST", "/api/v1/customers", json={**ANN, "id": "c1"})
    declared = await api.call(
        "POST",
        "/api/v1/incidents",
        json={
            "title": "Outage",
            "severity": severity,
            "message": "Down.",
            "components": ["north-line"],
        },
    )
    return int(declared.json()["id"])


async def test_follow_ups_are_claimed_done_and_waived_by_the_right_people(
    database: Database,
) -> None:
    async with api_client(database) as api:
        number = await _customer_and_incident(api, "critical")
        first = await _followup(database, number, "operator-bot", "vip-call")
        claimed = await api.call("POST", f"/api/v1/followups/{first}/claim", "operator")
        assert claimed.status_code == 200 and claimed.json()["state"] == "claimed"
        twice = await api.call("POST", f"/api/v1/followups/{first}/claim", "operator")
        assert twice.status_code == 409
        no_note = await api.call(
            "POST", f"/api/v1/followups/{first}/done", "operator", json={"outcome": "reached"}
        )
        assert no_note.status_code == 422 and no_note.json()["error"]["field"] == "body.note"
        done = await api.call(
            "POST",
            f"/api/v1/followups/{first}/done",
            "operator",
            json={"outcome": "reached", "note": "Called; she understands."},
        )
        assert done.status_code == 200 and done.json()["state"] == "done"

        second = await _followup(database, number, "ann", "vip-visit")
        for_someone = await api.call(
            "POST", f"/api/v1/followups/{second}/claim", "operator", json={"staff": "ann"}
        )
        assert for_someone.status_code == 403  # only admins act for someone else
        # An operator who is not ann's manager may not waive her task; an admin may.
        refused = await api.call(
            "POST", f"/api/v1/followups/{second}/waive", "operator", json={"reason": "dup"}
        )
        assert refused.status_code == 403
        waived = await api.call(
            "POST", f"/api/v1/followups/{second}/waive", "admin", json={"reason": "Duplicate."}
        )
        assert waived.status_code == 200 and waived.json()["state"] == "waived"
        # An admin acts for a member of staff only, and the audit says for whom.
        third = await _followup(database, number, "ann", "vip-call-later")
        for url, body in (("claim", {}), ("done", {"outcome": "reached", "note": "Called."})):
            for nobody in ("nobody", "   "):
                unknown = await api.call(
                    "POST",
                    f"/api/v1/followups/{third}/{url}",
                    "admin",
                    json={**body, "staff": nobody},
                )
                assert unknown.status_code == 422, unknown.text
                assert "is not a member of staff" in unknown.json()["error"]["message"]
        for_ann = await api.call(
            "POST", f"/api/v1/followups/{third}/claim", "admin", json={"staff": "ann"}
        )
        assert for_ann.status_code == 200 and for_ann.json()["owner"] == "ann"
        claims = (
            await api.call("GET", "/api/v1/audit", params={"action": "followup.claim"})
        ).json()
        assert claims["items"][0]["detail"] == {"for": "ann"}
        await api.call(
            "POST", f"/api/v1/followups/{third}/waive", "admin", json={"reason": "Tidy."}
        )
        queue = (
            await api.call("GET", "/api/v1/followups", "viewer", params={"state": "all"})
        ).json()["items"]
        assert [(f["id"], f["state"]) for f in queue] == [
            (first, "done"),
            (second, "waived"),
            (third, "waived"),
        ]
        # Customer data is for operators and admins: a viewer reads the queue without the
        # customers and the notes staff wrote about them.
        assert {(f["customer_id"], f["note"]) for f in queue} == {(None, None)}
        seen = (
            await api.call("GET", "/api/v1/followups", "operator", params={"state": "all"})
        ).json()["items"]
        assert seen[0]["customer_id"] is not None and seen[0]["note"] == "Called; she understands."
        assert (await api.call("GET", "/api/v1/followups/999/claim")).status_code == 405
        missing = await api.call("POST", "/api/v1/followups/999/claim", "operator")
        assert missing.status_code == 404

        audit = (await api.call("GET", "/api/v1/audit")).json()["items"]
        waives = [(a["actor"], a["outcome"]) for a in audit if a["action"] == "followup.waive"]
        assert waives == [
            ("token:admin-bot", "ok"),
            ("token:admin-bot", "ok"),
            ("token:operator-bot", "refused"),
        ]


async def test_deliveries_filter_by_incident_customer_channel_and_state(
    database: Database,
) -> None:
    async with api_client(database) as api:
        for cid in ("c1", "c2"):
            await api.call("POST", "/api/v1/customers", json={**ANN, "id": cid})
        number = (
            await api.call(
                "POST",
                "/api/v1/incidents",
                json={"title": "t", "severity": "minor", "message": "m", "components": ["x"]},
            )
        ).json()["id"]
        async with database.session() as session, session.begin():
            round_id = (await session.execute(select(Round.id))).scalar_one()
            for customer, channel, state in (
                ("c1", "email", "sent"),
                ("c1", "sms", "failed"),
                ("c2", "email", "pending"),
            ):
                session.add(
                    Delivery(
                        round_id=round_id,
                        incident_id=number,
                        customer_id=customer,
                        channel=channel,
                        address="a",
                        state=state,
                        next_attempt_at=START,
                        created_at=START,
                    )
                )
        found = (
            await api.call(
                "GET", "/api/v1/deliveries", "operator", params={"customer_id": "c1", "limit": 1}
            )
        ).json()
        assert [(d["channel"], d["state"]) for d in found["items"]] == [("sms", "failed")]
        rest = (
            await api.call(
                "GET",
                "/api/v1/deliveries",
                "operator",
                params={"customer_id": "c1", "limit": 1, "cursor": found["next_cursor"]},
            )
        ).json()
        assert [(d["channel"], d["state"]) for d in rest["items"]] == [("email", "sent")]
        assert rest["next_cursor"] is None
        emails = (
            await api.call(
                "GET",
                "/api/v1/deliveries",
                params={"incident_id": number, "channel": "email", "state": "pending"},
            )
        ).json()
        assert [d["customer_id"] for d in emails["items"]] == ["c2"]
        counts = (
            await api.call(
                "GET", "/api/v1/deliveries/counts", "viewer", params={"incident_id": number}
            )
        ).json()
        assert counts == {"email": {"pending": 1, "sent": 1}, "sms": {"failed": 1}}


GOOD = """\
version: 1
policies:
  standard:
    steps:
      - after: 0m
        every: 30m
        channels: [console]
"""


async def test_rules_are_checked_and_reloaded(database: Database, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    async with api_client(database, settings(path)) as api:
        status = (await api.call("GET", "/api/v1/rules", "viewer")).json()
        assert status["loaded"] and status["policies"] == 1
        deep = await api.call("POST", "/api/v1/rules/check", "operator", json={"text": "[" * 5000})
        assert deep.status_code == 200 and "nested too deeply" in deep.json()["problems"][0]
        checked = (
            await api.call("POST", "/api/v1/rules/check", "operator", json={"text": "rules: 5\n"})
        ).json()
        assert not checked["ok"]
        assert checked["problems"][0].startswith("<request>:1:")
        configured = (await api.call("POST", "/api/v1/rules/check", json={})).json()
        assert configured["ok"] and configured["warnings"] == []
        # A follow-up whose owner can name nobody: accepted, with the warning rules check gives.
        nobody = GOOD + (
            "rules:\n  - name: vip-call\n    match: {customer: {tier: vip}}\n"
            "    followup: {kind: call, owner: account_manager, deadline: 1h}\n"
        )
        warned = (
            await api.call("POST", "/api/v1/rules/check", "operator", json={"text": nobody})
        ).json()
        assert warned["ok"] and warned["problems"] == []
        [warning] = warned["warnings"]
        assert warning.startswith("<request>:") and "rule 'vip-call'" in warning
        assert "followup.owner account_manager names nobody" in warning

        path.write_text(GOOD.replace("30m", "thirty minutes"))
        refused = (await api.call("POST", "/api/v1/rules/reload")).json()
        assert refused["reloaded"] is False and "rules.yaml:6" in refused["error"]
        after = (await api.call("GET", "/api/v1/rules", "viewer")).json()
        assert after["loaded"] and after["last_reload_error"] == refused["error"]
        path.write_text(GOOD.replace("30m", "20m"))
        ok = (await api.call("POST", "/api/v1/rules/reload")).json()
        assert ok == {"reloaded": True, "error": None}
        # Emptied (an editor that truncates before writing): refused, the rules stay.
        path.write_text("# being edited\n\n")
        empty = (await api.call("POST", "/api/v1/rules/reload")).json()
        assert empty["reloaded"] is False and "the file is empty" in empty["error"]
        kept = (await api.call("GET", "/api/v1/rules", "viewer")).json()
        assert kept["loaded"] and kept["policies"] == 1
        audit = (await api.call("GET", "/api/v1/audit", params={"action": "rules.reload"})).json()
        assert [(a["outcome"], a["target"]) for a in audit["items"]] == [
            ("refused", f"rules:{path}"),
            ("ok", f"rules:{path}"),
            ("refused", f"rules:{path}"),
        ]
        (problem,) = audit["items"][0]["detail"]["problems"]
        assert problem.startswith(f"{path}: the file is empty")


async def test_a_reload_without_a_rules_file_is_refused_and_audited(database: Database) -> None:
    """As the console's: the API answered 409 and wrote nothing to the audit log."""
    async with api_client(database) as api:
        answer = await api.call("POST", "/api/v1/rules/reload")
        assert answer.status_code == 409 and "rules.path" in answer.text
        audit = (await api.call("GET", "/api/v1/audit", params={"action": "rules.reload"})).json()
    assert [(a["outcome"], a["target"]) for a in audit["items"]] == [("refused", "rules")]


async def test_a_daemon_warns_at_start_of_open_follow_ups_whose_owner_left(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Their reminders and escalations reach no one, and the incident cannot be closed."""
    async with api_client(database) as api:
        number = await _customer_and_incident(api, "major")
    await _followup(database, number, "ann", "vip-call")
    await _followup(database, number, "carla", "vip-visit")
    done = await _followup(database, number, "dirk", "vip-gift")
    async with database.session() as session, session.begin():
        await session.execute(update(Followup).where(Followup.id == done).values(state="done"))
    caplog.set_level(logging.WARNING, "broadcaster.daemon")
    assert await warn_of_unknown_owners(database, {"ann", "maria"}) == ["carla"]
    [record] = [r for r in caplog.records if "no longer in the configuration" in r.getMessage()]
    assert "(carla)" in record.getMessage()


async def test_a_visit_s_postal_address_is_in_the_follow_ups_for_those_who_read_customers(
    database: Database,
) -> None:
    """Where a visit goes, as the console's queue shows it: the customer's postal address as
    its lines to operators and admins ([] when none is on file), null to a viewer and on a
    call; in the queue, an incident's follow-ups, its detail and an action's answer."""
    async with api_client(database) as api:
        number = await _customer_and_incident(api, "critical")
        visit = await _followup(database, number, "operator-bot", "vip-visit")
        call = await _followup(database, number, "operator-bot", "vip-call")
        await api.call("POST", "/api/v1/customers", json={**ANN, "id": "c2"})
        bare = await _followup(database, number, "operator-bot", "vip-visit-bare")
        async with database.session() as session, session.begin():
            await session.execute(
                update(Followup).where(Followup.id.in_((visit, bare))).values(kind="visit")
            )
            await session.execute(
                update(Followup).where(Followup.id == bare).values(customer_id="c2")
            )
        await api.call(
            "PUT",
            "/api/v1/customers/c1",
            json={**ANN, "id": "c1", "postal_address": "Markt 1\nStad"},
        )
        pages: list[tuple[str, dict[str, str | int]]] = [
            ("/api/v1/followups", {"incident_id": number}),
            (f"/api/v1/incidents/{number}/followups", {}),
        ]
        for path, params in pages:
            for role in ("operator", "admin"):
                items = (await api.call("GET", path, role, params=params)).json()["items"]
                assert {f["id"]: f["postal_address"] for f in items} == {
                    visit: ["Markt 1", "Stad"],
                    call: None,
                    bare: [],
                }, (path, role)
            items = (await api.call("GET", path, "viewer", params=params)).json()["items"]
            assert {f["postal_address"] for f in items} == {None}, path
        detail = (await api.call("GET", f"/api/v1/incidents/{number}", "operator")).json()
        assert {f["id"]: f["postal_address"] for f in detail["followups"]}[visit] == [
            "Markt 1",
            "Stad",
        ]
        shown = (await api.call("GET", f"/api/v1/incidents/{number}", "viewer")).json()
        assert {f["postal_address"] for f in shown["followups"]} == {None}
        claimed = await api.call("POST", f"/api/v1/followups/{visit}/claim", "operator")
        assert claimed.json()["postal_address"] == ["Markt 1", "Stad"], claimed.text
