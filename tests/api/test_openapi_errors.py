"""The OpenAPI document describes the errors the API answers: the body they have
(``{"error": {...}, "errors": [...]}``, not FastAPI's ``{"detail": ...}``) and every status a
route answers. Fields named in errors are fields the body has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broadcaster.access.roles import ROLES
from broadcaster.store import Database
from tests.api.support import api_client, settings
from tests.api.test_authorisation import EXPECTED, _concrete, _query
from tests.api.test_incidents_api import RULES

REF = "#/components/schemas/ErrorOut"


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    ]


async def test_the_document_describes_the_error_body_the_api_answers(database: Database) -> None:
    async with api_client(database) as api:
        document = (await api.http.get("/openapi.json")).json()
        schemas = document["components"]["schemas"]
        assert "HTTPValidationError" not in schemas
        error = schemas["ErrorOut"]
        assert set(error["properties"]) == {"error", "errors"}
        assert error["required"] == ["error"]
        assert set(schemas["ErrorDetail"]["properties"]) == {"message", "field"}
        assert set(schemas["FieldError"]["properties"]) == {"field", "message"}
        documented_422 = 0
        for method, path, operation in _operations(document):
            for status, answer in operation["responses"].items():
                if status.startswith("4"):
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": REF}, (method, path, status)
                    documented_422 += status == "422"
        assert documented_422 > 30
        # And the body is that: a 422 of the schema, a 401.
        refused = await api.call("POST", "/api/v1/incidents", "operator", json={"title": ""})
        assert refused.status_code == 422
        assert set(refused.json()) == {"error", "errors"}
        assert set(refused.json()["errors"][0]) == {"field", "message"}
        anonymous = await api.call("GET", "/api/v1/incidents", None)
        assert anonymous.status_code == 401 and set(anonymous.json()) == {"error"}


async def test_each_route_documents_the_statuses_it_answers(database: Database) -> None:
    async with api_client(database) as api:
        document = (await api.http.get("/openapi.json")).json()
        for (method, template), need in EXPECTED.items():
            if not template.startswith("/api/v1/") or need not in ROLES:
                continue
            documented = set(document["paths"][template][method.lower()]["responses"])
            assert {"401", "403", "422"} <= documented, (method, template)
            for caller in (None, *ROLES):
                for body in ({}, {"message": "x"}, None):
                    response = await api.call(
                        method,
                        _concrete(template),
                        caller,
                        json=body if method in ("POST", "PUT") else None,
                        params=_query(template),
                    )
                    where = (method, template, caller, body, response.text[:200])
                    assert str(response.status_code) in documented, where
        paths = document["paths"]
        assert {"404", "409"} <= set(
            paths["/api/v1/incidents/{incident_id}/close"]["post"]["responses"]
        )
        for action in ("updates", "resolve"):
            answers = set(paths[f"/api/v1/incidents/{{incident_id}}/{action}"]["post"]["responses"])
            assert {"400", "401", "403", "404", "409", "413", "415", "422"} <= answers
        assert "404" in paths["/api/v1/incidents/{incident_id}"]["get"]["responses"]


async def test_a_declaration_without_scope_names_the_components(database: Database) -> None:
    async with api_client(database) as api:
        refused = await api.call(
            "POST",
            "/api/v1/incidents",
            "operator",
            json={"title": "Outage", "severity": "major", "message": "Down."},
        )
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] == "body.components"
        document = (await api.http.get("/openapi.json")).json()
        assert "components" in document["components"]["schemas"]["DeclareIn"]["properties"]


async def test_a_refused_resolution_names_each_missing_field(
    database: Database, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    async with api_client(database, settings(rules)) as api:
        number = (
            await api.call(
                "POST",
                "/api/v1/incidents",
                json={
                    "title": "Outage",
                    "severity": "critical",
                    "message": "Down.",
                    "components": ["north-line"],
                },
            )
        ).json()["id"]
        refused = await api.call(
            "POST",
            f"/api/v1/incidents/{number}/resolve",
            json={"message": "Fixed.", "remedy": "We replaced the cable."},
        )
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert body["error"]["field"] == "body.cause"
        assert [e["field"] for e in body["errors"]] == ["body.cause", "body.prevention"]
        assert "the rules require prevention" in body["errors"][1]["message"]
        document = (await api.http.get("/openapi.json")).json()
        fields = document["components"]["schemas"]["ResolveIn"]["properties"]
        assert {e["field"].removeprefix("body.") for e in body["errors"]} <= set(fields)
