"""What the customers API refuses at the door, as the import does: an id its own URLs cannot
address, a language that is no BCP 47 tag, a channel the configuration does not have."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from broadcaster.store import Database
from tests.api.support import Api, api_client, settings

ANN = {"id": "c-ann", "name": "Ann Example", "email": "ann@example.org"}


@pytest.mark.parametrize(
    ("customer_id", "message"),
    [
        ("a/b", "body.id: must not contain '/' (ids are used in URL paths)"),
        ("..", "body.id: must not be '..' (ids are used in URL paths)"),
        (".", "body.id: must not be '.' (ids are used in URL paths)"),
        ("a\x01b", "body.id: must not contain control characters"),
        ("   ", "body.id: String should have at least 1 character"),  # refused already
    ],
)
async def test_an_id_its_urls_cannot_address_is_refused(
    database: Database, customer_id: str, message: str
) -> None:
    async with api_client(database) as api:
        made = await api.call("POST", "/api/v1/customers", json={**ANN, "id": customer_id})
        assert made.status_code == 422, made.text
        assert made.json()["error"] == {"message": message, "field": "body.id"}
        listed = (await api.call("GET", "/api/v1/customers")).json()["items"]
        assert listed == []


@pytest.mark.parametrize("customer_id", ["a.b", "a b", "x?y#z", "100%", "Zoë"])
async def test_an_id_with_url_characters_can_be_read_and_erased(
    database: Database, customer_id: str
) -> None:
    async with api_client(database) as api:
        made = await api.call("POST", "/api/v1/customers", json={**ANN, "id": customer_id})
        assert made.status_code == 201, made.text
        path = f"/api/v1/customers/{quote(customer_id, safe='')}"
        assert (await api.call("GET", path)).json()["id"] == customer_id
        assert (await api.call("PUT", path, json={**ANN, "id": customer_id})).status_code == 200
        assert (await api.call("DELETE", path)).status_code == 204
        assert (await api.call("GET", path)).status_code == 404


async def test_a_language_that_is_no_tag_is_refused_one_without_templates_kept(
    database: Database,
) -> None:
    async with api_client(database) as api:
        bad = await api.call("POST", "/api/v1/customers", json={**ANN, "language": "xx-YY-ZZ"})
        assert bad.status_code == 422, bad.text
        assert bad.json()["error"] == {
            "message": "body.language: 'xx-YY-ZZ' is not a language tag like en, nl or en-GB",
            "field": "body.language",
        }
        kept = await api.call("POST", "/api/v1/customers", json={**ANN, "language": "fy_nl"})
        assert kept.status_code == 201, kept.text
        assert kept.json()["language"] == "fy-NL"


async def test_a_channel_that_is_not_configured_is_refused(database: Database) -> None:
    config = settings()
    config.channels = {**config.channels, "email": config.channels["console"]}
    async with api_client(database, config) as api:
        for method, path in (
            ("POST", "/api/v1/customers"),
            ("PUT", "/api/v1/customers/c-ann"),
        ):
            refused = await api.call(method, path, json={**ANN, "channels": ["email", "pigeon"]})
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"] == {
                "message": "channels: 'pigeon' is not a configured channel "
                "(configured: console, email)",
                "field": "body.channels",
            }
        assert (await api.call("GET", "/api/v1/customers/c-ann")).status_code == 404
        made = await api.call("POST", "/api/v1/customers", json={**ANN, "channels": ["email"]})
        assert made.status_code == 201, made.text
        assert made.json()["channel_order"] == "email"


async def import_csv(api: Api, body: str) -> httpx.Response:
    return await api.call(
        "POST",
        "/api/v1/customers/import",
        content=body.encode(),
        headers={"Content-Type": "text/csv"},
    )


async def test_the_import_endpoint_checks_the_same(database: Database) -> None:
    body = (
        "id,name,language,channels\n"
        "a/b,Slash,,\n"
        "c1,Typo,xx-YY-ZZ,\n"
        "c2,Pigeon,,pigeon\n"
        "c3,Good,en-GB,console\n"
    )
    async with api_client(database) as api:
        imported = await import_csv(api, body)
        assert imported.status_code == 200, imported.text
        assert imported.json() == {
            "imported": 1,
            "rejected": 3,
            "warned": 0,
            "warnings": [],
            "errors": [
                {
                    "line": 2,
                    "field": "id",
                    "message": "id: must not contain '/' (ids are used in URL paths)",
                },
                {
                    "line": 3,
                    "field": "language",
                    "message": "language: 'xx-YY-ZZ' is not a language tag like en, nl or en-GB",
                },
                {
                    "line": 4,
                    "field": "channels",
                    "message": "channels: 'pigeon' is not a configured channel "
                    "(configured: console)",
                },
            ],
        }


async def test_an_account_manager_who_is_not_staff_is_imported_with_a_warning(
    database: Database,
) -> None:
    """The customer is kept (they must still hear of incidents); the admin learns that a
    follow-up the rules give to their account manager cannot go to that person."""
    body = "id,name,account_manager\nc1,Known,ann\nc2,Stranger,bob\nc3,Nobody,\n"
    async with api_client(database) as api:
        imported = await import_csv(api, body)
        assert imported.status_code == 200, imported.text
        result = imported.json()
        assert (result["imported"], result["rejected"], result["warned"]) == (3, 0, 1)
        [warning] = result["warnings"]
        assert (warning["line"], warning["field"]) == (3, "account_manager")
        assert warning["message"].startswith("account_manager: 'bob' is not in the staff directory")
        stranger = await api.call("GET", "/api/v1/customers/c2")
        assert stranger.json()["account_manager"] == "bob"


async def test_refused_customer_writes_are_audited(database: Database) -> None:
    """Every refusal is in the audit log: a customer write refused for what it asked (an id
    taken, a body for another customer, no such customer) left no trace."""
    async with api_client(database) as api:
        made = await api.call("POST", "/api/v1/customers", json={"id": "c1", "name": "Carol"})
        assert made.status_code == 201
        refusals = [
            ("POST", "/api/v1/customers", {"id": "c1", "name": "Dup"}, 409, "customer.create"),
            ("PUT", "/api/v1/customers/c1", {"id": "c2", "name": "X"}, 422, "customer.update"),
            ("DELETE", "/api/v1/customers/nobody", None, 404, "customer.delete"),
        ]
        for method, path, body, status, _ in refusals:
            assert (await api.call(method, path, json=body)).status_code == status
        entries = (await api.call("GET", "/api/v1/audit")).json()["items"]
    refused = [(e["action"], e["target"]) for e in reversed(entries) if e["outcome"] == "refused"]
    assert refused == [
        ("customer.create", "customer:c1"),
        ("customer.update", "customer:c1"),
        ("customer.delete", "customer:nobody"),
    ]


async def test_a_postal_address_is_given_kept_by_a_put_without_it_and_cleared_by_null(
    database: Database,
) -> None:
    """Where a visit goes: written and read as its lines joined by ``\\n``; a PUT that does
    not say it (a client from before) keeps it, ``null`` or ``""`` removes it; a bad one is
    refused at its field."""
    path = "/api/v1/customers/c-ann"
    address = "Keizersgracht 123\n1015 CJ Amsterdam"
    async with api_client(database) as api:
        made = await api.call(
            "POST", "/api/v1/customers", json={**ANN, "postal_address": f" {address}\r\n"}
        )
        assert made.status_code == 201, made.text
        assert made.json()["postal_address"] == address
        kept = await api.call("PUT", path, json={**ANN, "name": "Ann E."})
        assert kept.status_code == 200, kept.text
        assert (kept.json()["name"], kept.json()["postal_address"]) == ("Ann E.", address)
        listed = (await api.call("GET", "/api/v1/customers", "operator")).json()["items"]
        assert listed[0]["postal_address"] == address
        for empty in (None, ""):
            await api.call("PUT", path, json={**ANN, "postal_address": "Markt 1"})
            cleared = await api.call("PUT", path, json={**ANN, "postal_address": empty})
            assert cleared.json()["postal_address"] is None, cleared.text
        bad = await api.call("PUT", path, json={**ANN, "postal_address": "x" * 501})
        assert bad.status_code == 422, bad.text
        assert bad.json()["error"] == {
            "message": "body.postal_address: is 501 characters long; at most 500",
            "field": "body.postal_address",
        }
        imported = await import_csv(api, 'id,name,postal_address\nc-ann,Ann,"Plein 2\nStad"\n')
        assert imported.json()["imported"] == 1, imported.text
        shown = await api.call("GET", path, "operator")
        assert shown.json()["postal_address"] == "Plein 2\nStad"
        without = await import_csv(api, "id,name\nc-ann,Ann\n")
        assert without.json()["imported"] == 1
        assert (await api.call("GET", path)).json()["postal_address"] == "Plein 2\nStad"
