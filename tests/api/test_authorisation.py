"""The role × route matrix over every endpoint of the daemon's HTTP server.

Every route is listed here with who may call it; a route added without an entry fails the
test. Bearer tokens: missing, malformed, unknown, revoked and expired ones are refused."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from broadcaster.access import credentials
from broadcaster.access.roles import ROLES, allows
from broadcaster.clock import FakeClock
from broadcaster.store import AuditEntry, Database
from tests.api.support import START, api_client

V, OP, A = "viewer", "operator", "admin"
PUBLIC = "public"  # anyone: no customer data
LINK = "link"  # the signed link in the path is the credential
SIGNED = "signed"  # the provider's or feed's signature is the credential; tokens do not help

EXPECTED: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/incidents"): V,
    ("POST", "/api/v1/incidents"): OP,
    ("GET", "/api/v1/incidents/{incident_id}"): V,
    ("GET", "/api/v1/incidents/{incident_id}/timeline"): V,
    ("POST", "/api/v1/incidents/{incident_id}/updates"): OP,
    ("POST", "/api/v1/incidents/{incident_id}/resolve"): OP,
    ("POST", "/api/v1/incidents/{incident_id}/close"): OP,
    ("GET", "/api/v1/incidents/{incident_id}/followups"): V,
    ("GET", "/api/v1/incidents/{incident_id}/unreached"): V,
    ("GET", "/api/v1/customers"): OP,
    ("POST", "/api/v1/customers"): A,
    ("GET", "/api/v1/customers/{customer_id}"): OP,
    ("PUT", "/api/v1/customers/{customer_id}"): A,
    ("DELETE", "/api/v1/customers/{customer_id}"): A,
    ("GET", "/api/v1/customers/{customer_id}/contact-points"): OP,
    ("GET", "/api/v1/customers/{customer_id}/subscriptions"): OP,
    ("POST", "/api/v1/customers/import"): A,
    ("GET", "/api/v1/me"): V,
    ("GET", "/api/v1/deliveries"): OP,
    ("GET", "/api/v1/deliveries/counts"): V,
    ("GET", "/api/v1/followups"): V,
    ("POST", "/api/v1/followups/{followup_id}/claim"): OP,
    ("POST", "/api/v1/followups/{followup_id}/done"): OP,
    ("POST", "/api/v1/followups/{followup_id}/waive"): OP,
    ("GET", "/api/v1/rules"): V,
    ("POST", "/api/v1/rules/check"): OP,
    ("POST", "/api/v1/rules/reload"): A,
    ("GET", "/api/v1/rules/explain"): OP,
    ("GET", "/api/v1/audit"): A,
    ("GET", "/api/v2/incidents.json"): PUBLIC,
    ("GET", "/api/v2/incidents/unresolved.json"): PUBLIC,
    ("GET", "/api/v2/components.json"): PUBLIC,
    ("GET", "/api/v2/status.json"): PUBLIC,
    ("GET", "/api/v2/summary.json"): PUBLIC,
    ("GET", "/metrics"): V,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/incidents/{incident_id}"): PUBLIC,
    ("GET", "/u/{token}"): LINK,
    ("POST", "/u/{token}"): LINK,
    ("GET", "/preferences/{token}"): LINK,
    ("POST", "/preferences/{token}"): LINK,
    ("POST", "/hooks/twilio/status"): SIGNED,
    ("POST", "/hooks/twilio/inbound"): SIGNED,
    ("POST", "/hooks/alertmanager/{source}"): SIGNED,
    ("POST", "/hooks/incidents/{source}"): SIGNED,
}

PARAMS = {
    "{incident_id}": "1",
    "{customer_id}": "c1",
    "{followup_id}": "1",
    "{token}": "not-a-valid-link",
    "{source}": "ops",
}


def _concrete(path: str) -> str:
    for name, value in PARAMS.items():
        path = path.replace(name, value)
    return path


def _query(path: str) -> dict[str, str | int]:
    return {"incident_id": 1} if path == "/api/v1/rules/explain" else {}


async def test_every_route_is_in_the_matrix(database: Database) -> None:
    async with api_client(database) as api:
        schema = (await api.http.get("/openapi.json")).json()
    served = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if not path.startswith("/console")
    }
    assert served == set(EXPECTED), (
        f"unlisted: {sorted(served - set(EXPECTED))}; gone: {sorted(set(EXPECTED) - served)}"
    )


async def test_each_role_gets_exactly_its_routes(database: Database) -> None:
    async with api_client(database) as api:
        for (method, template), need in EXPECTED.items():
            path = _concrete(template)
            for caller in (None, *ROLES):
                response = await api.call(
                    method,
                    path,
                    caller,
                    json={} if method in ("POST", "PUT") else None,
                    params=_query(template),
                )
                where = f"{method} {template} as {caller or 'anonymous'}"
                if need in ROLES:
                    if caller is None:
                        assert response.status_code == 401, where
                        assert response.headers.get("www-authenticate") == "Bearer", where
                    elif allows(caller, need):
                        assert response.status_code not in (401, 403, 500), (where, response.text)
                    else:
                        assert response.status_code == 403, (where, response.text)
                        assert need in response.json()["error"]["message"], where
                elif need == SIGNED:
                    # A bearer token is no substitute for the provider's signature.
                    assert response.status_code in (401, 403, 404), (where, response.text)
                elif need == LINK:
                    assert response.status_code == 400, (where, response.text)
                else:
                    assert response.status_code not in (401, 403, 500), (where, response.text)


async def test_each_refusal_for_the_role_is_audited_once(database: Database) -> None:
    expected: list[tuple[str, str, str, str, str, object]] = []
    async with api_client(database) as api:
        for (method, template), need in EXPECTED.items():
            if need not in ROLES:
                continue
            path = _concrete(template)
            for caller in (None, *ROLES):
                if caller is not None and allows(caller, need):
                    continue
                response = await api.call(
                    method,
                    path,
                    caller,
                    json={} if method in ("POST", "PUT") else None,
                    params=_query(template),
                )
                assert response.status_code == (401 if caller is None else 403)
                if caller is not None:  # no one to name without credentials: not audited
                    reason = {"reason": "role too low", "needs": need}
                    expected.append(
                        (
                            f"token:{caller}-bot",
                            caller,
                            f"{method} {template}",
                            path,
                            "refused",
                            reason,
                        )
                    )
    async with database.session() as session:
        rows = (await session.execute(select(AuditEntry).order_by(AuditEntry.id))).scalars()
        found = [(e.actor, e.role, e.action, e.target, e.outcome, e.detail) for e in rows]
    assert found == expected


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer bct_unknown", "Bearer not-even-ours"],
)
async def test_bad_credentials_are_refused(database: Database, header: str) -> None:
    async with api_client(database) as api:
        response = await api.http.get("/api/v1/me", headers={"Authorization": header})
        assert response.status_code == 401
        assert response.json()["error"]["field"] in ("Authorization", None)


async def test_revoked_and_expired_tokens_stop_working(database: Database) -> None:
    async with api_client(database) as api:
        row, secret = await credentials.create_token(
            database, api.clock, name="temp", role="admin", lifetime=timedelta(hours=1)
        )
        headers = {"Authorization": f"Bearer {secret}"}
        assert (await api.http.get("/api/v1/me", headers=headers)).json() == {
            "actor": "token:temp",
            "role": "admin",
        }
        api.clock.advance(timedelta(hours=2))
        assert (await api.http.get("/api/v1/me", headers=headers)).status_code == 401

        row, secret = await credentials.create_token(database, api.clock, name="t2", role="viewer")
        headers = {"Authorization": f"Bearer {secret}"}
        assert (await api.http.get("/api/v1/me", headers=headers)).status_code == 200
        await credentials.revoke_token(database, api.clock, row.id)
        assert (await api.http.get("/api/v1/me", headers=headers)).status_code == 401


async def test_tokens_are_stored_hashed(database: Database) -> None:
    async with api_client(database) as api:
        stored = await credentials.list_tokens(database)
        secrets = set(api.tokens.values())
        for row in stored:
            assert row.token_hash not in secrets
            assert len(row.token_hash) == 64
            assert row.token_hash == credentials.digest(api.tokens[row.role])


@pytest.mark.parametrize(
    ("lifetime", "reason"),
    [
        (timedelta(0), "must be more than 0s"),
        (timedelta(days=999_999_999), "past the calendar's end"),
    ],
)
async def test_a_token_lifetime_of_nothing_or_past_the_calendar_is_refused(
    database: Database, lifetime: timedelta, reason: str
) -> None:
    """A zero lifetime made a token that never expired."""
    with pytest.raises(credentials.CredentialError, match=reason):
        await credentials.create_token(
            database, FakeClock(START), name="zero", role="admin", lifetime=lifetime
        )
    assert await credentials.list_tokens(database) == []
