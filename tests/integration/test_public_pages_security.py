"""Public pages and Twilio callbacks after the security review: the configured status
callback URL, odd and orphaned links, replayed callbacks, and the pages' headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import delete, select

from broadcaster.clock import FakeClock
from broadcaster.compose.links import make_token
from broadcaster.config.settings import Settings
from broadcaster.store import ContactPoint, Customer, Database, Delivery, DeliveryEvent
from broadcaster.web.app import create_app
from broadcaster.web.state import WebState
from tests.fakes.twilio import twilio_signature
from tests.integration.test_web_hooks import seed_sent_sms

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
TOKEN = "b" * 32
OTHER_TOKEN = "c" * 32
SID = "AC" + "2" * 32
OTHER_SID = "AC" + "3" * 32
PUBLIC = "https://status.example.org"
CALLBACK = "https://hooks.example.net/twilio/status?site=eu"
SECRET = "link-secret-for-tests"
MESSAGE_SID = "SM" + "e" * 32


def settings() -> Settings:
    twilio = {"type": "twilio", "from_number": "+15005550006"}
    return Settings.model_validate(
        {
            "delivery": {"channels": ["sms"]},
            "channels": {
                # Behind a proxy that maps hooks.example.net/twilio/ to /hooks/twilio/.
                "sms": {**twilio, "account_sid": SID, "auth_token": TOKEN},
                "sms-us": {
                    **twilio,
                    "account_sid": OTHER_SID,
                    "auth_token": OTHER_TOKEN,
                    "status_callback_url": CALLBACK,
                },
            },
            "messages": {"public_url": PUBLIC, "organisation": "Example Transit"},
        }
    )


@pytest.fixture
async def client(database: Database) -> AsyncIterator[httpx.AsyncClient]:
    state = WebState(settings(), database, FakeClock(START), SECRET, scheduler_running=True)
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        yield http


async def seed(db: Database) -> int:
    return await seed_sent_sms(db, channel="sms-us", message_sid=MESSAGE_SID)


async def events(db: Database) -> list[str]:
    async with db.session() as session:
        return list((await session.execute(select(DeliveryEvent.state))).scalars())


async def delivery_state(db: Database, delivery_id: int) -> str:
    async with db.session() as session:
        row = await session.get(Delivery, delivery_id)
        assert row is not None
        return row.state


# -- Twilio status callbacks ---------------------------------------------------------------


def callback(status: str, account: str = OTHER_SID) -> dict[str, str]:
    return {"AccountSid": account, "MessageSid": MESSAGE_SID, "MessageStatus": status}


async def test_a_status_callback_is_checked_against_the_configured_callback_url(
    client: httpx.AsyncClient, database: Database
) -> None:
    delivery_id = await seed(database)
    query = f"site=eu&delivery=delivery-{delivery_id}"
    path = f"/hooks/twilio/status?{query}"
    params = callback("delivered")
    # Twilio signs the URL it called: the channel's status_callback_url with our delivery.
    called = f"https://hooks.example.net/twilio/status?{query}"
    headers = {"X-Twilio-Signature": twilio_signature(OTHER_TOKEN, called, params)}
    assert (await client.post(path, data=params, headers=headers)).status_code == 204
    assert await delivery_state(database, delivery_id) == "delivered"


async def test_with_a_callback_url_configured_the_public_url_signature_is_refused(
    client: httpx.AsyncClient, database: Database
) -> None:
    delivery_id = await seed(database)
    path = f"/hooks/twilio/status?site=eu&delivery=delivery-{delivery_id}"
    params = callback("failed")
    headers = {"X-Twilio-Signature": twilio_signature(OTHER_TOKEN, PUBLIC + path, params)}
    assert (await client.post(path, data=params, headers=headers)).status_code == 403
    assert await delivery_state(database, delivery_id) == "sent"


async def test_without_a_callback_url_the_public_url_is_what_is_signed(
    client: httpx.AsyncClient, database: Database
) -> None:
    delivery_id = await seed(database)
    path = f"/hooks/twilio/status?delivery=delivery-{delivery_id}"
    params = callback("delivered", SID)
    headers = {"X-Twilio-Signature": twilio_signature(TOKEN, PUBLIC + path, params)}
    assert (await client.post(path, data=params, headers=headers)).status_code == 204
    assert await delivery_state(database, delivery_id) == "delivered"


async def test_a_replayed_or_stale_callback_adds_no_history(
    client: httpx.AsyncClient, database: Database
) -> None:
    delivery_id = await seed(database)
    query = f"site=eu&delivery=delivery-{delivery_id}"
    called = f"https://hooks.example.net/twilio/status?{query}"

    async def send(status: str) -> None:
        params = callback(status)
        headers = {"X-Twilio-Signature": twilio_signature(OTHER_TOKEN, called, params)}
        answer = await client.post(f"/hooks/twilio/status?{query}", data=params, headers=headers)
        assert answer.status_code == 204

    await send("delivered")
    for _ in range(3):
        await send("delivered")  # the same request again, as captured
    await send("sent")  # stale
    await send("queued")  # stale
    assert await events(database) == ["delivered"]
    assert await delivery_state(database, delivery_id) == "delivered"


# -- links ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/u", "/preferences"])
@pytest.mark.parametrize(
    "token", ["é", "a.b.c.é", "YzE.1767780000.unsubscribe.sïgnature", "\u2028.1.2.3"]
)
async def test_a_non_ascii_link_token_is_a_400_not_a_500(
    client: httpx.AsyncClient, path: str, token: str
) -> None:
    for method in ("GET", "POST"):
        answer = await client.request(method, f"{path}/{token}")
        assert answer.status_code == 400, (method, answer.text)
        assert "This link does not work" in answer.text


async def test_links_of_an_erased_customer_no_longer_work(
    client: httpx.AsyncClient, database: Database
) -> None:
    await seed(database)
    expires = START + timedelta(days=1)
    unsubscribe = make_token(SECRET, "c1", "unsubscribe", expires)
    preferences = make_token(SECRET, "c1", "preferences", expires)
    async with database.session() as session, session.begin():
        await session.execute(delete(Delivery))
        await session.execute(delete(ContactPoint))
        await session.execute(delete(Customer).where(Customer.id == "c1"))
    for method in ("GET", "POST"):
        answer = await client.request(method, f"/u/{unsubscribe}")
        assert answer.status_code == 404, answer.text
        assert "no longer valid" in answer.text and "unsubscribed" not in answer.text
        answer = await client.request(method, f"/preferences/{preferences}")
        assert answer.status_code == 404, answer.text


@pytest.mark.parametrize("point", ["\u00b2", "9" * 5000, "-1", "0", "1 ", "sms"])
async def test_a_preferences_form_with_an_odd_address_id_is_a_400_and_changes_nothing(
    client: httpx.AsyncClient, database: Database, point: str
) -> None:
    await seed(database)
    token = make_token(SECRET, "c1", "preferences", START + timedelta(days=1))
    answer = await client.post(f"/preferences/{token}", data={"action": "save", "point": point})
    assert answer.status_code == 400, answer.text
    assert "not one of its own" in answer.text
    async with database.session() as session:
        opted_out = (await session.execute(select(ContactPoint.opted_out))).scalars().all()
    assert opted_out == [False]


# -- headers -------------------------------------------------------------------------------

FRAMING = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}


async def test_public_pages_send_the_security_headers(
    client: httpx.AsyncClient, database: Database
) -> None:
    await seed(database)
    expires = START + timedelta(days=1)
    personal = [
        ("GET", f"/u/{make_token(SECRET, 'c1', 'unsubscribe', expires)}", 200),
        ("GET", f"/preferences/{make_token(SECRET, 'c1', 'preferences', expires)}", 200),
        ("POST", f"/preferences/{make_token(SECRET, 'c1', 'preferences', expires)}", 422),
        ("POST", f"/u/{make_token(SECRET, 'c1', 'unsubscribe', expires)}", 200),
        ("GET", "/u/forged.1.unsubscribe.x", 400),
        ("GET", "/preferences/forged", 400),
    ]
    for method, path, status in personal:
        # A POST without the form's action is refused (422), with the same headers.
        answer = await client.request(method, path)
        assert answer.status_code == status, (path, answer.text)
        headers = answer.headers
        assert {k: headers.get(k) for k in FRAMING} == FRAMING, path
        assert headers["cache-control"] == "no-store", path
        assert headers["referrer-policy"] == "no-referrer", path
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert "style-src 'unsafe-inline'" in csp and "form-action 'self'" in csp
    for path, status in (("/incidents/1", 200), ("/incidents/999", 404)):
        answer = await client.get(path)
        assert answer.status_code == status
        assert {k: answer.headers.get(k) for k in FRAMING} == FRAMING, path
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
