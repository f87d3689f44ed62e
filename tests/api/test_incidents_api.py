"""The incident API: declare, update, resolve, close, list, show; errors with their field;
every action in the audit log."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from broadcaster.dispatch.channels import build_channels
from broadcaster.engine import Engine
from broadcaster.store import Database
from tests.api.support import api_client, settings

DECLARE = {
    "title": "Signal failure at Central",
    "severity": "major",
    "message": "Trains between Central and North are delayed.",
    "components": ["north-line"],
    "regions": ["north"],
}


async def test_an_incident_runs_from_declaration_to_close(database: Database) -> None:
    async with api_client(database) as api:
        made = await api.call("POST", "/api/v1/incidents", "operator", json=DECLARE)
        assert made.status_code == 201, made.text
        incident = made.json()
        assert incident["status"] == "investigating"
        assert incident["declared_by"] == "operator-bot"
        number = incident["id"]

        api.clock.advance(timedelta(minutes=5))
        update = await api.call(
            "POST",
            f"/api/v1/incidents/{number}/updates",
            "operator",
            json={"message": "Engineers are on site.", "status": "identified"},
        )
        assert update.status_code == 201, update.text
        resolved = await api.call(
            "POST",
            f"/api/v1/incidents/{number}/resolve",
            "operator",
            json={"message": "Trains run normally again.", "regret": "We are sorry."},
        )
        assert resolved.status_code == 201, resolved.text
        early = await api.call("POST", f"/api/v1/incidents/{number}/close", "operator")
        assert early.status_code == 409  # the resolution round is not sent yet
        assert "cannot be closed yet" in early.json()["error"]["message"]
        engine = await Engine.create(
            api.state.settings, database, api.clock, build_channels(api.state.settings)
        )
        try:
            await engine.process_due_rounds()  # the daemon sends it
        finally:
            await engine.aclose()
        closed = await api.call("POST", f"/api/v1/incidents/{number}/close", "operator")
        assert closed.status_code == 200, closed.text
        assert closed.json()["status"] == "closed"

        shown = (await api.call("GET", f"/api/v1/incidents/{number}", "viewer")).json()
        assert [e["kind"] for e in shown["timeline"]] == [
            "declared",
            "update",
            "resolved",
            "closed",
        ]
        assert shown["components"] == ["north-line"] and shown["regions"] == ["north"]
        # The one pending round was pulled forward and is now the resolution.
        assert [r["kind"] for r in shown["rounds"]] == ["resolution"]
        timeline = (await api.call("GET", f"/api/v1/incidents/{number}/timeline", "viewer")).json()
        assert [e["message"] for e in timeline][:2] == [
            DECLARE["message"],
            "Engineers are on site.",
        ]

        audit = (await api.call("GET", "/api/v1/audit", "admin")).json()["items"]
        actions = [(a["action"], a["actor"], a["target"], a["outcome"]) for a in audit]
        assert ("incident.declare", "token:operator-bot", f"incident:{number}", "ok") in actions
        assert ("incident.update", "token:operator-bot", f"incident:{number}", "ok") in actions
        assert ("incident.resolve", "token:operator-bot", f"incident:{number}", "ok") in actions
        assert ("incident.close", "token:operator-bot", f"incident:{number}", "ok") in actions


async def test_api_changes_wake_the_daemon_at_once(database: Database) -> None:
    async with api_client(database) as api:
        wakes: list[str] = []
        api.state.wake = lambda: wakes.append("now")
        number = (await api.call("POST", "/api/v1/incidents", json=DECLARE)).json()["id"]
        await api.call("POST", f"/api/v1/incidents/{number}/updates", json={"message": "More."})
        await api.call("POST", f"/api/v1/incidents/{number}/resolve", json={"message": "Done."})
        refused = await api.call("POST", "/api/v1/incidents", json={**DECLARE, "title": ""})
        assert refused.status_code == 422
        assert wakes == ["now", "now", "now"]


async def test_bad_input_names_the_field_and_changes_nothing(database: Database) -> None:
    async with api_client(database) as api:
        missing = await api.call("POST", "/api/v1/incidents", json={**DECLARE, "title": ""})
        assert missing.status_code == 422
        error = missing.json()["error"]
        assert error["field"] == "body.title"
        assert "body.title" in error["message"]

        unknown = await api.call("POST", "/api/v1/incidents", json={**DECLARE, "colour": "red"})
        assert unknown.status_code == 422
        assert unknown.json()["error"]["field"] == "body.colour"

        bad_severity = await api.call(
            "POST", "/api/v1/incidents", json={**DECLARE, "severity": "x"}
        )
        assert bad_severity.json()["error"]["field"] == "body.severity"

        no_scope = await api.call(
            "POST", "/api/v1/incidents", json={**DECLARE, "components": [], "regions": []}
        )
        assert no_scope.status_code == 422
        assert no_scope.json()["error"]["field"] == "body.components"

        not_json = await api.call(
            "POST",
            "/api/v1/incidents",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        assert not_json.status_code == 422
        assert "error" in not_json.json()

        listed = (await api.call("GET", "/api/v1/incidents")).json()
        assert listed["items"] == []
        # The refusal is audited too.
        audit = (await api.call("GET", "/api/v1/audit")).json()["items"]
        assert [(a["action"], a["outcome"]) for a in audit] == [("incident.declare", "refused")]
        assert "scope" in audit[0]["detail"]["reason"]


async def test_wrong_transitions_conflict_and_unknown_ids_are_404(database: Database) -> None:
    async with api_client(database) as api:
        number = (await api.call("POST", "/api/v1/incidents", json=DECLARE)).json()["id"]
        early_close = await api.call("POST", f"/api/v1/incidents/{number}/close")
        assert early_close.status_code == 409
        assert "resolved" in early_close.json()["error"]["message"]
        missing = await api.call("GET", "/api/v1/incidents/999")
        assert missing.status_code == 404
        assert missing.json()["error"]["field"] == "path.incident_id"
        update_missing = await api.call(
            "POST", "/api/v1/incidents/999/updates", json={"message": "x"}
        )
        assert update_missing.status_code == 404


async def test_the_list_filters_and_pages(database: Database) -> None:
    async with api_client(database) as api:
        for n, severity in enumerate(["minor", "major", "critical", "major", "minor"]):
            made = await api.call(
                "POST",
                "/api/v1/incidents",
                json={**DECLARE, "title": f"Incident {n} 50%_off", "severity": severity},
            )
            assert made.status_code == 201
        first = (await api.call("GET", "/api/v1/incidents", params={"limit": 2})).json()
        assert [i["title"] for i in first["items"]] == ["Incident 4 50%_off", "Incident 3 50%_off"]
        second = (
            await api.call(
                "GET", "/api/v1/incidents", params={"limit": 2, "cursor": first["next_cursor"]}
            )
        ).json()
        assert [i["title"] for i in second["items"]] == ["Incident 2 50%_off", "Incident 1 50%_off"]
        majors = (await api.call("GET", "/api/v1/incidents", params={"severity": "major"})).json()
        assert len(majors["items"]) == 2 and majors["next_cursor"] is None
        found = (await api.call("GET", "/api/v1/incidents", params={"q": "ent 2 50%"})).json()
        assert [i["title"] for i in found["items"]] == ["Incident 2 50%_off"]
        # LIKE wildcards in a filter are literal characters, not patterns.
        wildcard = (await api.call("GET", "/api/v1/incidents", params={"q": "%"})).json()
        assert len(wildcard["items"]) == 5
        nothing = (await api.call("GET", "/api/v1/incidents", params={"q": "_x%"})).json()
        assert nothing["items"] == []
        injection = await api.call(
            "GET", "/api/v1/incidents", params={"q": "' OR 1=1 --", "source": "x' OR '1'='1"}
        )
        assert injection.status_code == 200 and injection.json()["items"] == []
        bad_status = await api.call("GET", "/api/v1/incidents", params={"status": "sideways"})
        assert bad_status.status_code == 422
        assert bad_status.json()["error"]["field"] == "query.status"


RULES = """\
version: 1
policies:
  standard:
    steps:
      - after: 0m
        every: 30m
        channels: [console]
rules:
  - name: critical-apology
    match:
      incident:
        severity: critical
    require_for_resolution: [cause, remedy, prevention]
    continue: true
  - name: every-incident
    policy: standard
"""


async def test_resolution_is_refused_without_what_the_rules_require(
    database: Database, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    async with api_client(database, settings(rules)) as api:
        number = (
            await api.call("POST", "/api/v1/incidents", json={**DECLARE, "severity": "critical"})
        ).json()["id"]
        refused = await api.call(
            "POST", f"/api/v1/incidents/{number}/resolve", json={"message": "Fixed."}
        )
        assert refused.status_code == 422, refused.text
        message = refused.json()["error"]["message"]
        # The rule that requires them (not every rule that matched), and no CLI flags.
        assert message == (
            "the rules (critical-apology) require cause, prevention, remedy before this "
            "incident can be resolved (a cause counts with cause_kind known or suspected)"
        )
        accepted = await api.call(
            "POST",
            f"/api/v1/incidents/{number}/resolve",
            json={
                "message": "Fixed.",
                "cause_kind": "known",
                "cause": "A cable fault.",
                "remedy": "We replaced the cable.",
                "prevention": "We now monitor the cables.",
            },
        )
        assert accepted.status_code == 201, accepted.text
        explained = await api.call(
            "GET", "/api/v1/rules/explain", "operator", params={"incident_id": number}
        )
        assert explained.status_code == 200, explained.text
        assert explained.json()["matched_rules"] == ["critical-apology", "every-incident"]
