"""The compensation the rules grant at a resolution, told in each customer's language.

It was written into the resolution as English text ("a credit of 10.00 EUR") and reached
Dutch customers as it was: "Om het goed te maken: a credit of 10.00 EUR." It is kept as
data now (``incident_updates.compensation_offers``, migration 0018) and each message says it
in its own language, the amount as its readers write it; the operator's own words, when
given, are told instead, as written. Staff read the offers in English in the API, the
console and on the public page.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert

from broadcaster.access import credentials
from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import ContactPoint, Customer, Database, Subscription
from broadcaster.web.app import create_app
from broadcaster.web.state import WebState
from channels.memory import MemoryChannel

START = datetime(2026, 1, 6, 10, 0, tzinfo=UTC)  # 11:00 in Amsterdam: no quiet hours
PASSWORD = "correct horse battery"
RULES = """\
version: 1
policies:
  default:
    steps: [{after: 0m, every: 30m, channels: [email, sms]}]
rules:
  - name: outage-credit
    match: {incident: {severity: {gte: major}}}
    compensation: {kind: credit, amount: 10.00, currency: EUR}
    continue: true
  - name: long-outage-voucher
    match: {incident: {severity: critical}}
    compensation: {kind: voucher, amount: 5, currency: EUR}
    continue: true
  - name: default-policy
    policy: default
"""
CUSTOMERS = {"NL1": "nl", "EN1": "en"}
RESOLUTION = service.UpdateRequest(
    "Trains run again.",
    cause_kind="known",
    cause="A signal failure.",
    remedy="The signal was replaced.",
    prevention="Signals are now monitored.",
)
NBSP = "\u00a0"  # Babel writes "€ 10,00" in Dutch with a no-break space


@dataclass
class Setup:
    database: Database
    clock: FakeClock
    engine: Engine
    email: MemoryChannel
    sms: MemoryChannel
    http: httpx.AsyncClient
    token: str

    async def send_all(self) -> None:
        await self.engine.process_due_rounds()
        await self.engine.dispatch_all()

    def last(self, channel: MemoryChannel, address: str) -> str:
        return [m.message.text for m in channel.sent if m.target.address == address][-1]

    def last_html(self, address: str) -> str:
        html = [m.message.html for m in self.email.sent if m.target.address == address][-1]
        assert html is not None
        return html


@pytest.fixture
async def setup(database: Database, tmp_path: Path) -> AsyncIterator[Setup]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    settings = Settings.model_validate(
        {
            "delivery": {"channels": ["email", "sms"], "backoff": {"jitter": 0}},
            "channels": {
                "email": {"type": "console", "contact": "email"},
                "sms": {"type": "console", "contact": "sms"},
            },
            "staff": {"people": {"ann": {"name": "Ann Visser"}}},
            "rules": {"path": str(rules)},
            "messages": {"public_url": "https://status.example.org", "organisation": "Example"},
        }
    )
    clock = FakeClock(START)
    email = MemoryChannel(name="email", contact="email")
    sms = MemoryChannel(name="sms", contact="sms")
    engine = await Engine.create(settings, database, clock, {"email": email, "sms": sms})
    async with database.session() as session, session.begin():
        for number, (cid, language) in enumerate(CUSTOMERS.items()):
            await session.execute(
                insert(Customer).values(
                    id=cid,
                    name=f"Customer {cid}",
                    language=language,
                    timezone="Europe/Amsterdam",
                    created_at=START,
                    updated_at=START,
                )
            )
            for kind, address in (
                ("email", f"{cid.lower()}@example.org"),
                ("sms", f"+3161234567{number}"),
            ):
                await session.execute(
                    insert(ContactPoint).values(
                        customer_id=cid,
                        kind=kind,
                        address=address,
                        opted_out=False,
                        disabled=False,
                        updated_at=START,
                    )
                )
            await session.execute(
                insert(Subscription).values(customer_id=cid, kind="component", value="rail")
            )
    await credentials.set_account(database, clock, name="ann", role="operator", password=PASSWORD)
    _, token = await credentials.create_token(database, clock, name="bot", role="operator")
    state = WebState(
        settings,
        database,
        clock,
        "link-secret",
        scheduler_running=True,
        rules=engine.rules,
        escalation=engine.escalation,
        directory=engine.directory,
    )
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="https://daemon") as http:
        yield Setup(database, clock, engine, email, sms, http, token)
    await engine.aclose()


async def resolved(setup: Setup, request: service.UpdateRequest, severity: str = "major") -> int:
    incident = await service.declare(
        setup.database,
        setup.clock,
        service.Declaration("Trains stopped", severity, "No trains.", components=["rail"]),
    )
    await setup.send_all()
    setup.clock.advance(timedelta(minutes=20))
    await service.resolve(
        setup.database, setup.clock, incident.id, request, setup.engine.escalation
    )
    await setup.send_all()
    return incident.id


async def test_a_dutch_customer_reads_the_rules_credit_in_dutch(setup: Setup) -> None:
    await resolved(setup, RESOLUTION)
    sms = setup.last(setup.sms, "+31612345670")
    assert "Om het goed te maken: een tegoed van € 10,00." in sms, sms
    text = setup.last(setup.email, "nl1@example.org")
    assert f"Om het goed te maken: een tegoed van €{NBSP}10,00." in text, text
    html = setup.last_html("nl1@example.org")
    assert f"<strong>Om het goed te maken:</strong> een tegoed van €{NBSP}10,00.</p>" in html
    for message in (sms, text, html):
        assert "credit" not in message and "EUR" not in message and "10.00" not in message


async def test_an_english_customer_reads_it_in_english(setup: Setup) -> None:
    await resolved(setup, RESOLUTION)
    sms = setup.last(setup.sms, "+31612345671")
    assert "To make up for it: a credit of €10.00." in sms, sms
    text = setup.last(setup.email, "en1@example.org")
    assert "To make up for it: a credit of €10.00." in text, text
    assert "tegoed" not in sms + text


async def test_several_offers_are_told_together_in_each_language(setup: Setup) -> None:
    await resolved(setup, RESOLUTION, severity="critical")
    dutch = setup.last(setup.email, "nl1@example.org")
    assert f"een tegoed van €{NBSP}10,00 en een waardebon van €{NBSP}5,00." in dutch, dutch
    english = setup.last(setup.email, "en1@example.org")
    assert "a credit of €10.00 and a voucher of €5.00." in english, english


async def test_the_offers_are_stored_as_data_and_not_as_english_text(setup: Setup) -> None:
    incident_id = await resolved(setup, RESOLUTION, severity="critical")
    view = await service.show(setup.database, incident_id)
    resolution = view.updates[-1]
    assert resolution.compensation is None
    assert resolution.compensation_offers == [
        {"kind": "credit", "amount": "10.00", "currency": "EUR", "rule": "outage-credit"},
        {"kind": "voucher", "amount": "5", "currency": "EUR", "rule": "long-outage-voucher"},
    ]
    assert all(u.compensation_offers is None for u in view.updates[:-1])


async def test_the_operator_s_own_words_win_over_the_rules(setup: Setup) -> None:
    own = "Een gratis dagkaart bij uw volgende reis"
    request = dataclasses.replace(RESOLUTION, compensation=own)
    incident_id = await resolved(setup, request)
    resolution = (await service.show(setup.database, incident_id)).updates[-1]
    assert resolution.compensation == own and resolution.compensation_offers is None
    for address in ("nl1@example.org", "en1@example.org"):
        text = setup.last(setup.email, address)
        assert f": {own}\n" in text, text  # as written, in every language
        assert "tegoed" not in text and "credit" not in text
    assert f"Om het goed te maken: {own}." in setup.last(setup.sms, "+31612345670")


async def test_the_api_lists_the_offers_and_staff_read_them_in_english(setup: Setup) -> None:
    incident_id = await resolved(setup, RESOLUTION, severity="critical")
    timeline = await setup.http.get(
        f"/api/v1/incidents/{incident_id}/timeline",
        headers={"Authorization": f"Bearer {setup.token}"},
    )
    assert timeline.status_code == 200, timeline.text
    entries = timeline.json()
    assert entries[-1]["compensation"] is None
    assert entries[-1]["compensation_offers"] == [
        {"kind": "credit", "amount": "10.00", "currency": "EUR", "rule": "outage-credit"},
        {"kind": "voucher", "amount": "5", "currency": "EUR", "rule": "long-outage-voucher"},
    ]
    assert entries[0]["compensation_offers"] == []

    public = await setup.http.get(f"/incidents/{incident_id}")
    assert public.status_code == 200
    assert "To make up for it:</em> a credit of €10.00 and a voucher of €5.00</p>" in public.text

    login = await setup.http.get("/console/login")
    login_token = re.search(r'name="login_token" value="([^"]*)"', login.text)
    assert login_token is not None
    signed = await setup.http.post(
        "/console/login",
        data={"name": "ann", "password": PASSWORD, "login_token": login_token.group(1)},
    )
    assert signed.status_code == 303, signed.text
    page = await setup.http.get(f"/console/incidents/{incident_id}")
    assert page.status_code == 200
    assert (
        "a credit of €10.00 (rule outage-credit) and a voucher of €5.00 (rule long-outage-voucher)"
        in page.text
    )
