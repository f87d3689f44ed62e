"""What the store cannot keep is the caller's error, named, on SQLite and PostgreSQL alike:
NUL characters (PostgreSQL text cannot hold them), dates that leave years 1-9999 in UTC,
ids that are not ASCII digits or overflow 64 bits, and a body that is not JSON."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError

from broadcaster.store import Database
from broadcaster.store.ids import MAX_ID
from broadcaster.web import errors
from broadcaster.web.inputs import row_id
from tests.api.support import api_client

DECLARE = {
    "title": "Signal failure at Central",
    "severity": "major",
    "message": "Trains between Central and North are delayed.",
    "components": ["north-line"],
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"title": "Signal\x00failure"}, "body.title"),
        ({"message": "No trains\x00"}, "body.message"),
        ({"components": ["north\x00line"]}, "body.components.0"),
        ({"cause_kind": "suspected", "cause": "a\x00b"}, "body.cause"),
    ],
)
async def test_a_nul_in_a_body_field_is_a_422_naming_it(
    database: Database, change: dict[str, object], field: str
) -> None:
    async with api_client(database) as api:
        response = await api.call("POST", "/api/v1/incidents", json={**DECLARE, **change})
        assert response.status_code == 422
        assert response.json()["error"]["field"] == field
        assert "contains a NUL character" in response.json()["error"]["message"]
        assert (await api.call("GET", "/api/v1/incidents")).json()["items"] == []


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/incidents?q=a%00b", "query.q"),
        ("/api/v1/incidents?source=x%00", "query.source"),
        ("/api/v1/customers/a%00b", "path"),
        ("/api/v1/audit?actor=%00", "query.actor"),
        ("/console/audit?actor=%00", "query.actor"),
    ],
)
async def test_a_nul_in_the_path_or_query_is_a_422_naming_it(
    database: Database, path: str, field: str
) -> None:
    async with api_client(database) as api:
        response = await api.call("GET", path)
        assert response.status_code == 422
        assert response.json()["error"] == {
            "message": f"{field}: contains a NUL character",
            "field": field,
        }


async def test_dates_outside_what_the_store_keeps_are_a_422(database: Database) -> None:
    async with api_client(database) as api:
        since = await api.call(
            "GET", "/api/v1/incidents", params={"since": "0001-01-01T00:00:00+01:00"}
        )
        assert since.status_code == 422
        assert since.json()["error"]["field"] == "query.since"
        assert "out of range" in since.json()["error"]["message"]
        late = {**DECLARE, "expected_resolution_at": "9999-12-31T23:59:59-05:00"}
        declared = await api.call("POST", "/api/v1/incidents", json=late)
        assert declared.status_code == 422
        assert declared.json()["error"]["field"] == "body.expected_resolution_at"
        fine = await api.call(
            "GET", "/api/v1/incidents", params={"since": "2026-01-01T00:00:00+01:00"}
        )
        assert fine.status_code == 200
        # Customers read it as a promise: one already past went out as written.
        past = {**DECLARE, "expected_resolution_at": "2020-01-01T10:00:00Z"}
        refused = await api.call("POST", "/api/v1/incidents", json=past)
        assert refused.status_code == 422
        assert (
            "expected_resolution_at: 2020-01-01T10:00:00+00:00 is not in the future"
            in (refused.json()["error"]["message"])
        )


@pytest.mark.parametrize("before", ["²", "9" * 30, "-1", "0"])
async def test_an_audit_page_cursor_that_is_not_an_id_is_ignored(
    database: Database, before: str
) -> None:
    async with api_client(database) as api:
        # The console's audit page is for signed-in admins; a bearer token is refused with a
        # redirect to sign in, not a crash: what matters is that no 500 comes back.
        response = await api.call("GET", "/console/audit", params={"before": before})
        assert response.status_code < 500


def test_a_row_id_of_any_length_is_read_or_refused_never_raising() -> None:
    assert row_id("42") == 42 and row_id("0042") == 42 and row_id(str(MAX_ID)) == MAX_ID
    for text in ("9" * 5000, "1" * 4301, str(MAX_ID + 1), "²", "", "0", " 1"):
        assert row_id(text) is None, text[:10]


async def test_a_body_that_is_not_json_says_where_and_why(database: Database) -> None:
    async with api_client(database) as api:
        response = await api.call(
            "POST",
            "/api/v1/incidents",
            content=b'{"title": "x", oops}',
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 422
        reason = "not valid JSON at character 15: Expecting property name enclosed in double quotes"
        assert response.json() == {
            "error": {"message": f"body: {reason}", "field": "body"},
            "errors": [{"field": "body", "message": reason}],
        }
        # Not JSON at all: 415 saying what to send, not "Input should be a valid dictionary".
        text = await api.call(
            "POST", "/api/v1/incidents", content=b"title=x", headers={"Content-Type": "text/plain"}
        )
        assert text.status_code == 415
        assert text.json()["error"]["message"] == (
            "send the body as JSON (Content-Type: application/json), not text/plain"
        )
        # Not even text: the body named, and why.
        garbled = await api.call(
            "POST",
            "/api/v1/incidents",
            content=b'{"title": "\xff\xfe"}',
            headers={"Content-Type": "application/json"},
        )
        assert garbled.status_code == 400
        assert garbled.json()["error"] == {
            "message": "the body could not be read as JSON: it is not UTF-8 text, or nested "
            "too deeply",
            "field": "body",
        }


async def test_a_nul_the_checks_missed_is_still_the_caller_s_error_not_a_500() -> None:
    app = FastAPI()
    errors.install(app)

    class Orig(Exception):
        pass

    @app.get("/nul")
    async def nul() -> None:
        raise DBAPIError("INSERT ...", {}, Orig('invalid byte sequence for encoding "UTF8": 0x00'))

    @app.get("/other")
    async def other() -> None:
        raise DBAPIError("INSERT ...", {}, Orig("deadlock detected"))

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        nul_response = await http.get("/nul")
        assert nul_response.status_code == 422
        assert "NUL character" in nul_response.json()["error"]["message"]
        assert (await http.get("/other")).status_code == 500


async def test_invisible_characters_in_an_operators_text_do_not_reach_customers(
    database: Database,
) -> None:
    """A bidirectional override makes an email's subject read backwards; a carriage return
    splits a title over lines; a byte-order mark or a control character shows as garbage
    on a phone. What customers get is the text as it reads, whichever way it was written."""
    async with api_client(database) as api:
        declared = await api.call(
            "POST",
            "/api/v1/incidents",
            json={
                **DECLARE,
                "title": "Signal \u202efailure\r\nat Central\ufeff",
                "message": "Trains are\u2066 delayed.\r\nBuses\x07 replace them.",
                "components": ["north\u202e-line"],
            },
        )
        assert declared.status_code == 201, declared.text
        incident_id = declared.json()["id"]
        updated = await api.call(
            "POST",
            f"/api/v1/incidents/{incident_id}/updates",
            json={"message": "Still\u202e delayed.", "workaround": "Take\x1b the bus."},
        )
        assert updated.status_code == 201, updated.text
        resolved = await api.call(
            "POST",
            f"/api/v1/incidents/{incident_id}/resolve",
            json={"message": "Fixed\u202d.", "regret": "We are\u202e sorry."},
        )
        assert resolved.status_code == 201, resolved.text
        detail = (await api.call("GET", f"/api/v1/incidents/{incident_id}")).json()
    assert detail["title"] == "Signal failure at Central"
    assert detail["components"] == ["north-line"]
    assert [(e["message"], e["workaround"], e["regret"]) for e in detail["timeline"]] == [
        ("Trains are delayed.\nBuses replace them.", None, None),
        ("Still delayed.", "Take the bus.", None),
        ("Fixed.", "Take the bus.", "We are sorry."),
    ]


async def test_a_title_of_nothing_but_invisible_characters_is_refused(
    database: Database,
) -> None:
    async with api_client(database) as api:
        response = await api.call(
            "POST", "/api/v1/incidents", json={**DECLARE, "title": "\u202e\u2066\ufeff"}
        )
        assert response.status_code == 422
        assert "title: must not be empty" in response.json()["error"]["message"]
