"""The staff console over ASGI, on both stores: sign-in, CSRF, roles, declaring, the
resolution the rules require, the follow-up queue, rules and audit pages."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select

from broadcaster.access import credentials
from broadcaster.access.roles import ROLES, Role, allows
from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.engine import Engine
from broadcaster.escalation.holder import load_file
from broadcaster.store import (
    AuditEntry,
    ContactPoint,
    Customer,
    Database,
    Followup,
    Incident,
    Subscription,
)
from broadcaster.web import console
from broadcaster.web.app import create_app
from broadcaster.web.console import work as console_work
from broadcaster.web.state import WebState
from channels.memory import MemoryChannel

START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
PASSWORD = "correct horse battery"
RULES = """\
version: 1
policies:
  default:
    steps:
      - after: 0m
        every: 30m
        channels: [email]
rules:
  - name: critical-call
    match:
      incident:
        severity: critical
      customer:
        tier: vip
    followup:
      kind: call
      owner: account_manager
      deadline: 2h
    continue: true
  - name: critical-apology
    match:
      incident:
        severity: critical
    require_for_resolution: [cause, remedy, prevention]
    continue: true
  - name: default-policy
    policy: default
"""


def make_settings(rules: Path, public_url: str = "http://127.0.0.1:8080") -> Settings:
    return Settings.model_validate(
        {
            "delivery": {"channels": ["email"], "backoff": {"jitter": 0}},
            "channels": {"email": {"type": "console", "contact": "email"}},
            "staff": {
                "people": {
                    "ann": {"name": "Ann Visser", "manager": "maria"},
                    "maria": {"name": "Maria Jansen"},
                    "vera": {"name": "Vera Kok"},
                },
            },
            "rules": {"path": str(rules)},
            "messages": {"public_url": public_url, "organisation": "Example Rail"},
        }
    )


@dataclass
class Console:
    http: httpx.AsyncClient
    transport: httpx.ASGITransport
    state: WebState
    engine: Engine
    clock: FakeClock
    email: MemoryChannel
    rules: Path

    def another_browser(self) -> httpx.AsyncClient:
        """A second client with its own cookies, on the same app."""
        return httpx.AsyncClient(transport=self.transport, base_url=str(self.http.base_url))


async def seed_customers(db: Database) -> None:
    async with db.session() as session, session.begin():
        for cid, tier in (("V1", "vip"), ("V2", "vip"), ("S1", "standard")):
            await session.execute(
                insert(Customer).values(
                    id=cid,
                    name=f"Customer {cid}",
                    language="en",
                    timezone="Europe/Amsterdam",
                    tier=tier,
                    account_manager="ann",
                    created_at=START,
                    updated_at=START,
                )
            )
            await session.execute(
                insert(ContactPoint).values(
                    customer_id=cid,
                    kind="email",
                    address=f"{cid.lower()}@example.org",
                    opted_out=False,
                    disabled=False,
                    updated_at=START,
                )
            )
            await session.execute(
                insert(Subscription).values(customer_id=cid, kind="component", value="rail")
            )


async def build(database: Database, tmp_path: Path, public_url: str) -> Console:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    settings = make_settings(rules, public_url)
    clock = FakeClock(START)
    email = MemoryChannel(name="email", contact="email")
    engine = await Engine.create(settings, database, clock, {"email": email})
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
    for name, role in (("ann", "operator"), ("vera", "viewer"), ("root", "admin")):
        await credentials.set_account(database, clock, name=name, role=role, password=PASSWORD)
    await seed_customers(database)
    transport = httpx.ASGITransport(app=create_app(state))
    scheme = "https" if public_url.startswith("https") else "http"
    http = httpx.AsyncClient(transport=transport, base_url=f"{scheme}://daemon")
    return Console(http, transport, state, engine, clock, email, rules)


@pytest.fixture
async def app(database: Database, tmp_path: Path) -> AsyncIterator[Console]:
    built = await build(database, tmp_path, "http://127.0.0.1:8080")
    async with built.http:
        yield built
    await built.engine.aclose()


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field in:\n{html[:2000]}"
    return found.group(1)


async def sign_in(http: httpx.AsyncClient, name: str, password: str = PASSWORD) -> httpx.Response:
    page = await http.get("/console/login")
    assert page.status_code == 200
    return await http.post(
        "/console/login",
        data={"name": name, "password": password, "login_token": hidden(page.text, "login_token")},
    )


async def signed_in(http: httpx.AsyncClient, name: str) -> str:
    """Sign in; the session's CSRF token."""
    response = await sign_in(http, name)
    assert response.status_code == 303, response.text
    page = await http.get("/console/incidents")
    assert page.status_code == 200
    return hidden(page.text, "csrf_token")


async def audit_rows(db: Database, action: str) -> list[AuditEntry]:
    async with db.session() as session:
        query = select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
        return list((await session.execute(query)).scalars())


async def incidents_in(db: Database) -> list[Incident]:
    async with db.session() as session:
        return list((await session.execute(select(Incident).order_by(Incident.id))).scalars())


DECLARE = {
    "title": "Trains stopped between A and B",
    "severity": "critical",
    "status": "investigating",
    "message": "No trains run between A and B; buses are on their way.",
    "components": "rail",
    "regions": "",
    "cause_kind": "unknown",
}


async def declare(app: Console, csrf: str, **changes: str) -> int:
    response = await app.http.post(
        "/console/incidents", data={**DECLARE, **changes, "csrf_token": csrf}
    )
    assert response.status_code == 303, response.text
    found = re.fullmatch(r"/console/incidents/(\d+)\?ok=declared", response.headers["location"])
    assert found, response.headers["location"]
    return int(found.group(1))


async def run_rounds(app: Console) -> None:
    await app.engine.process_due_rounds()
    await app.engine.dispatch_all()


# --- Sign-in ------------------------------------------------------------------------------


async def test_login_sets_a_strict_http_only_session_and_is_audited(app: Console) -> None:
    response = await sign_in(app.http, "ann")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/incidents"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("bc_session="))
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert "secure" not in flags  # the public URL is http here
    page = await app.http.get("/console/incidents")
    assert page.status_code == 200 and "ann" in page.text and "operator" in page.text
    assert "Content-Security-Policy" in page.headers
    [entry] = await audit_rows(app.state.database, "console.login")
    assert (entry.actor, entry.role, entry.outcome) == ("account:ann", "operator", "ok")


async def test_session_cookie_is_secure_behind_an_https_public_url(
    database: Database, tmp_path: Path
) -> None:
    built = await build(database, tmp_path, "https://status.example.org")
    async with built.http:
        response = await sign_in(built.http, "ann")
    await built.engine.aclose()
    assert response.status_code == 303
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("bc_session="))
    assert "secure" in {part.strip().lower() for part in cookie.split(";")}


async def test_wrong_password_and_unknown_name_get_the_same_answer(app: Console) -> None:
    wrong = await sign_in(app.http, "ann", "not the password at all")
    unknown = await sign_in(app.http, "nobody", PASSWORD)
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert "Wrong name or password." in response.text
        assert not any(c.startswith("bc_session=") for c in response.headers.get_list("set-cookie"))
    assert 'value="ann"' in wrong.text  # the name typed is kept, the password is not
    assert (await app.http.get("/console/incidents")).status_code == 303
    entries = await audit_rows(app.state.database, "console.login")
    assert [(e.actor, e.role, e.outcome) for e in entries] == [
        ("account:ann", "operator", "refused"),
        ("account:nobody", "", "refused"),
    ]


async def test_a_failed_login_keeps_where_it_was_going(app: Console) -> None:
    page = await app.http.get("/console/login?next=/console/followups")
    form = {"name": "ann", "login_token": hidden(page.text, "login_token")}
    wrong = await app.http.post(
        "/console/login", data={**form, "password": "nope", "next": "/console/followups"}
    )
    assert wrong.status_code == 401
    right = await app.http.post(
        "/console/login",
        data={
            "name": "ann",
            "password": PASSWORD,
            "next": hidden(wrong.text, "next"),
            "login_token": hidden(wrong.text, "login_token"),
        },
    )
    assert right.status_code == 303 and right.headers["location"] == "/console/followups"


async def test_repeated_failed_logins_lock_the_name_for_a_while(app: Console) -> None:
    for _ in range(5):
        assert (await sign_in(app.http, "ann", "guess")).status_code == 401
    locked = await sign_in(app.http, "ann")  # even the right password
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.text
    assert not any(c.startswith("bc_session=") for c in locked.headers.get_list("set-cookie"))
    assert (await sign_in(app.http, "vera")).status_code == 303  # other names are not locked
    app.clock.advance(timedelta(minutes=16))
    assert (await sign_in(app.http, "ann")).status_code == 303
    outcomes = [e.outcome for e in await audit_rows(app.state.database, "console.login")]
    assert outcomes.count("refused") == 6


async def test_parallel_guesses_do_not_slip_past_the_lock(app: Console) -> None:
    page = await app.http.get("/console/login")
    token = hidden(page.text, "login_token")

    async def guess(n: int) -> int:
        answer = await app.http.post(
            "/console/login",
            data={"name": "ann", "password": f"guess {n}", "login_token": token},
        )
        return answer.status_code

    codes = await asyncio.gather(*(guess(n) for n in range(30)))
    assert codes.count(401) <= 5 and codes.count(429) >= 25, codes


async def test_a_name_longer_than_any_account_is_refused_before_the_throttle(
    app: Console,
) -> None:
    for n in range(3):
        refused = await sign_in(app.http, f"{n}-" + "x" * 200_000)
        assert refused.status_code == 401
        assert "Wrong name or password." in refused.text
        assert "x" * 100 not in refused.text  # not echoed back either
    assert app.state.logins._attempts == {}
    assert await audit_rows(app.state.database, "console.login") == []
    assert (await sign_in(app.http, "x" * 65)).status_code == 401
    assert app.state.logins._attempts == {}


def test_the_throttle_keeps_a_fixed_size_key_whatever_the_name() -> None:
    throttle = credentials.LoginThrottle(limit=2)
    for name in ("Ann", "ANN", "b" * 64, "ß" * 10):
        throttle.begin(name, START)
    assert len(throttle._attempts) == 3  # Ann and ANN are one name
    assert {len(key) for key in throttle._attempts} == {32}
    assert throttle.begin("ann", START) is not None  # the third attempt of a locked name
    throttle.succeeded("aNN")
    assert throttle.begin("ann", START) is None


@pytest.mark.parametrize(
    "name",
    [
        "x\n2026-03-02T08:59:59+00:00  account:root  console.login  ok",
        "\x1b[2J\x1b]0;owned\x07admin",
        "root\rforged",
        "tor\u202eadmin",
        "ann\u2028root",
        "ann\u200b",
    ],
)
async def test_a_name_with_control_or_bidi_characters_is_refused_unaudited(
    app: Console, name: str
) -> None:
    refused = await sign_in(app.http, name)
    assert refused.status_code == 401
    assert "Wrong name or password." in refused.text
    assert await audit_rows(app.state.database, "console.login") == []
    assert app.state.logins._attempts == {}
    with pytest.raises(credentials.CredentialError, match="name: only printable"):
        await credentials.set_account(
            app.state.database, app.clock, name=name, role="viewer", password=PASSWORD
        )


async def test_non_ascii_tokens_are_refused_not_crashing(app: Console) -> None:
    page = await app.http.get("/console/login")
    bad_login = await app.http.post(
        "/console/login", data={"name": "ann", "password": PASSWORD, "login_token": "é"}
    )
    assert bad_login.status_code == 403
    assert hidden(page.text, "login_token")
    await signed_in(app.http, "ann")
    declared = await app.http.post(
        "/api/v1/incidents",
        json={"title": "t", "severity": "minor", "message": "m", "components": ["x"]},
        headers={b"X-CSRF-Token": "é".encode()},
    )
    assert declared.status_code == 403
    assert "CSRF" in declared.json()["error"]["message"]


async def test_a_new_password_ends_the_old_sessions(app: Console) -> None:
    await signed_in(app.http, "ann")
    assert (await app.http.get("/console/incidents")).status_code == 200
    await credentials.set_account(
        app.state.database, app.clock, name="ann", role="operator", password="another long one"
    )
    assert (await app.http.get("/console/incidents")).status_code == 303


async def test_login_without_the_form_token_is_refused(app: Console) -> None:
    response = await app.http.post("/console/login", data={"name": "ann", "password": PASSWORD})
    assert response.status_code == 403
    assert not any(c.startswith("bc_session=") for c in response.headers.get_list("set-cookie"))


async def test_signed_out_visitors_are_sent_to_the_login(app: Console) -> None:
    page = await app.http.get("/console/followups")
    assert page.status_code == 303
    assert page.headers["location"] == "/console/login?next=/console/followups"
    fragment = await app.http.get("/console/incidents/rows")
    assert fragment.status_code == 401
    login = await app.http.get("/console/login?next=https://evil.example/")
    assert 'name="next" value="/console/incidents"' in login.text


async def test_logout_needs_the_csrf_token_and_ends_the_session(app: Console) -> None:
    csrf = await signed_in(app.http, "ann")
    assert (await app.http.post("/console/logout")).status_code == 403
    assert (await app.http.get("/console/incidents")).status_code == 200
    out = await app.http.post("/console/logout", data={"csrf_token": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/console/login"
    assert (await app.http.get("/console/incidents")).status_code == 303
    assert [e.outcome for e in await audit_rows(app.state.database, "console.logout")] == ["ok"]


# --- Declaring ------------------------------------------------------------------------------


async def test_a_post_without_or_with_a_wrong_csrf_token_is_refused(app: Console) -> None:
    await signed_in(app.http, "ann")
    missing = await app.http.post("/console/incidents", data=DECLARE)
    wrong = await app.http.post("/console/incidents", data={**DECLARE, "csrf_token": "x" * 43})
    for response in (missing, wrong):
        assert response.status_code == 403
        assert "CSRF" in response.text
    assert await incidents_in(app.state.database) == []


async def test_a_viewer_reads_but_cannot_declare(app: Console) -> None:
    csrf = await signed_in(app.http, "vera")
    listing = await app.http.get("/console/incidents")
    assert "Declare an incident" not in listing.text
    assert (await app.http.get("/console/incidents/new")).status_code == 403
    response = await app.http.post("/console/incidents", data={**DECLARE, "csrf_token": csrf})
    assert response.status_code == 403
    assert "operator role" in response.text
    assert await incidents_in(app.state.database) == []


async def test_an_operator_declares_and_the_action_is_audited(app: Console) -> None:
    csrf = await signed_in(app.http, "ann")
    form = await app.http.get("/console/incidents/new")
    assert form.status_code == 200 and 'name="csrf_token"' in form.text
    incident_id = await declare(
        app, csrf, title="<script>alert(1)</script> Trains stopped", actions="Buses ordered"
    )
    [incident] = await incidents_in(app.state.database)
    assert (incident.id, incident.severity, incident.declared_by) == (
        incident_id,
        "critical",
        "ann",
    )
    [entry] = await audit_rows(app.state.database, "incident.declare")
    assert (entry.actor, entry.target, entry.outcome) == (
        "account:ann",
        f"incident:{incident_id}",
        "ok",
    )
    page = await app.http.get(f"/console/incidents/{incident_id}")
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Trains stopped" in page.text
    assert "Buses ordered" in page.text
    listing = await app.http.get("/console/incidents")
    assert f'data-incident="{incident_id}"' in listing.text


async def test_a_refused_declaration_shows_why_and_keeps_what_was_typed(app: Console) -> None:
    csrf = await signed_in(app.http, "ann")
    response = await app.http.post(
        "/console/incidents",
        data={**DECLARE, "components": "", "title": "Lifts out", "csrf_token": csrf},
    )
    assert response.status_code == 422
    assert "scope: name at least one component or region" in response.text
    assert 'value="Lifts out"' in response.text
    assert "No trains run between A and B" in response.text
    assert await incidents_in(app.state.database) == []
    [entry] = await audit_rows(app.state.database, "incident.declare")
    assert entry.outcome == "refused"


async def test_the_console_holds_a_declaration_to_the_api_s_limits(app: Console) -> None:
    """Whichever way an operator writes, the same limits: the console took 300 components
    (the API at most 200) and a title of any length."""
    csrf = await signed_in(app.http, "ann")
    for fields, said in (
        ({"components": ",".join(f"line-{i}" for i in range(300))}, "components: 300 named"),
        ({"title": "T" * 301}, "title: 301 characters; at most 300"),
    ):
        response = await app.http.post(
            "/console/incidents", data={**DECLARE, **fields, "csrf_token": csrf}
        )
        assert response.status_code == 422 and said in response.text
    assert await incidents_in(app.state.database) == []


async def test_a_nul_in_a_form_field_is_refused_naming_it(app: Console) -> None:
    csrf = await signed_in(app.http, "ann")
    response = await app.http.post(
        "/console/incidents",
        data={**DECLARE, "title": "Lifts\x00out", "csrf_token": csrf},
    )
    assert response.status_code == 422
    assert "title: contains a NUL character" in response.text
    assert await incidents_in(app.state.database) == []
    expired = await app.http.post("/console/incidents", data={**DECLARE, "title": "x"})
    assert expired.status_code < 500
    login = await app.http.post("/console/login", data={"name": "a\x00n", "password": "x"})
    assert login.status_code == 422 and "name: contains a NUL character" in login.text


# --- Live state, resolution, follow-ups ----------------------------------------------------


async def test_deliveries_show_in_the_list_and_the_chart(app: Console) -> None:
    csrf = await signed_in(app.http, "ann")
    incident_id = await declare(app, csrf)
    before = await app.http.get(f"/console/incidents/{incident_id}/live")
    assert before.status_code == 200 and 'id="no-deliveries"' in before.text
    await run_rounds(app)
    assert len(app.email.sent) == 3
    live = await app.http.get(f"/console/incidents/{incident_id}/live")
    assert 'data-channel="email" data-sent="3" data-total="3"' in live.text
    assert "<svg" in live.text
    rows = await app.http.get("/console/incidents/rows?status=open")
    assert 'data-sent="3"' in rows.text


async def test_resolution_refused_without_what_the_rules_require_then_accepted(
    app: Console,
) -> None:
    csrf = await signed_in(app.http, "ann")
    incident_id = await declare(app, csrf)
    page = await app.http.get(f"/console/incidents/{incident_id}")
    assert "critical-apology" in page.text
    assert "cause, prevention, remedy" in page.text

    refused = await app.http.post(
        f"/console/incidents/{incident_id}/resolve",
        data={"message": "Trains run again.", "remedy": "Replaced the switch", "csrf_token": csrf},
    )
    assert refused.status_code == 422
    assert "require cause, prevention before this incident can be resolved" in refused.text
    assert "Trains run again." in refused.text and "Replaced the switch" in refused.text
    [incident] = await incidents_in(app.state.database)
    assert incident.status == "investigating"

    accepted = await app.http.post(
        f"/console/incidents/{incident_id}/resolve",
        data={
            "message": "Trains run again.",
            "cause_kind": "known",
            "cause": "A broken switch at B",
            "remedy": "Replaced the switch",
            "prevention": "Switches are now inspected weekly",
            "regret": "We are sorry.",
            "csrf_token": csrf,
        },
    )
    assert accepted.status_code == 303, accepted.text
    [incident] = await incidents_in(app.state.database)
    assert incident.status == "resolved"
    outcomes = [e.outcome for e in await audit_rows(app.state.database, "incident.resolve")]
    assert outcomes == ["refused", "ok"]
    page = await app.http.get(f"/console/incidents/{incident_id}")
    assert "Switches are now inspected weekly" in page.text
    assert 'id="resolve-form"' not in page.text and 'id="close-form"' in page.text


async def test_follow_ups_are_claimed_done_and_only_then_the_incident_closes(
    app: Console,
) -> None:
    csrf = await signed_in(app.http, "ann")
    incident_id = await declare(app, csrf)
    await run_rounds(app)
    async with app.state.database.session() as session:
        tasks = list((await session.execute(select(Followup).order_by(Followup.id))).scalars())
    assert [(t.customer_id, t.owner, t.state) for t in tasks] == [
        ("V1", "ann", "open"),
        ("V2", "ann", "open"),
    ]
    first, second = tasks[0].id, tasks[1].id

    app.clock.advance(timedelta(hours=3))  # past the 2 h deadline
    queue = await app.http.get("/console/followups")
    assert queue.text.count('class="overdue"') == 2
    assert "reason for waiving" not in queue.text  # ann is nobody's manager

    odd_back = await app.http.post(
        f"/console/followups/{first}/claim", data={"csrf_token": csrf, "back": "/x\x00"}
    )
    assert odd_back.status_code == 422 and "back: contains a NUL character" in odd_back.text
    async with app.state.database.session() as session:
        unclaimed = await session.get(Followup, first)
    assert unclaimed is not None and unclaimed.state == "open"  # refused before acting
    assert (
        await app.http.post(f"/console/followups/{first}/claim", data={"csrf_token": csrf})
    ).status_code == 303
    no_note = await app.http.post(
        f"/console/followups/{first}/done",
        data={"outcome": "reached", "note": "", "csrf_token": csrf},
    )
    assert no_note.status_code == 422 and "note: say what happened" in no_note.text
    done = await app.http.post(
        f"/console/followups/{first}/done",
        data={"outcome": "reached", "note": "Called, apologised", "csrf_token": csrf},
    )
    assert done.status_code == 303
    waive = await app.http.post(
        f"/console/followups/{second}/waive", data={"reason": "duplicate", "csrf_token": csrf}
    )
    assert waive.status_code == 422 and "only a manager of ann or an admin" in waive.text

    async with app.state.database.session() as session:
        one = await session.get(Followup, first)
        two = await session.get(Followup, second)
    assert one is not None and (one.state, one.outcome, one.closed_by) == ("done", "reached", "ann")
    assert two is not None and two.state == "open"
    # Customer data is for operators: a viewer sees the queue without customers or notes.
    viewer = app.another_browser()
    async with viewer:
        await signed_in(viewer, "vera")
        for path in ("/console/followups?state=all", f"/console/incidents/{incident_id}/live"):
            seen = await viewer.get(path)
            assert seen.status_code == 200 and "(operators)" in seen.text
            assert "V1" not in seen.text and "Called, apologised" not in seen.text
    operator_queue = await app.http.get("/console/followups?state=all")
    assert "V1" in operator_queue.text and "Called, apologised" in operator_queue.text

    resolved = await app.http.post(
        f"/console/incidents/{incident_id}/resolve",
        data={
            "message": "Fixed.",
            "cause_kind": "known",
            "cause": "switch",
            "remedy": "replaced",
            "prevention": "inspections",
            "csrf_token": csrf,
        },
    )
    assert resolved.status_code == 303
    await run_rounds(app)  # the resolution round: close waits for it
    refused = await app.http.post(
        f"/console/incidents/{incident_id}/close", data={"csrf_token": csrf}
    )
    assert refused.status_code == 422 and "forced follow-up(s) still open" in refused.text

    admin = app.another_browser()
    async with admin:
        admin_csrf = await signed_in(admin, "root")
        waived = await admin.post(
            f"/console/followups/{second}/waive",
            data={"reason": "customer already called us", "csrf_token": admin_csrf},
        )
        assert waived.status_code == 303
    closed = await app.http.post(
        f"/console/incidents/{incident_id}/close", data={"csrf_token": csrf}
    )
    assert closed.status_code == 303
    [incident] = await incidents_in(app.state.database)
    assert incident.status == "closed"
    actions = [
        (e.action, e.actor, e.outcome)
        for action in ("followup.claim", "followup.done", "followup.waive")
        for e in await audit_rows(app.state.database, action)
    ]
    assert actions == [
        ("followup.claim", "account:ann", "ok"),
        ("followup.done", "account:ann", "refused"),
        ("followup.done", "account:ann", "ok"),
        ("followup.waive", "account:ann", "refused"),
        ("followup.waive", "account:root", "ok"),
    ]


async def test_a_follow_up_is_claimed_only_by_those_the_rules_made_responsible(
    app: Console,
) -> None:
    await credentials.set_account(
        app.state.database, app.clock, name="otto", role="operator", password=PASSWORD
    )
    csrf = await signed_in(app.http, "ann")
    await declare(app, csrf)
    await run_rounds(app)
    async with app.state.database.session() as session:
        first = (await session.execute(select(Followup.id).order_by(Followup.id))).scalar()
    claim_form = f'action="/console/followups/{first}/claim"'
    assert claim_form in (await app.http.get("/console/followups")).text  # ann's own task
    other = app.another_browser()
    async with other:
        otto_csrf = await signed_in(other, "otto")
        # No Claim button where the claim would be refused; a forged post is refused all
        # the same.
        assert claim_form not in (await other.get("/console/followups")).text
        refused = await other.post(
            f"/console/followups/{first}/claim", data={"csrf_token": otto_csrf}
        )
    assert refused.status_code == 422
    assert f"only its owner (ann), a manager of ann or an admin may claim follow-up {first}" in (
        refused.text
    )
    async with app.state.database.session() as session:
        task = await session.get(Followup, first)
    assert task is not None and (task.state, task.owner) == ("open", "ann")
    claims = await audit_rows(app.state.database, "followup.claim")
    assert [(e.actor, e.outcome) for e in claims] == [("account:otto", "refused")]


async def test_an_update_is_posted_and_a_bad_one_refused(app: Console) -> None:
    csrf = await signed_in(app.http, "ann")
    incident_id = await declare(app, csrf)
    bad = await app.http.post(
        f"/console/incidents/{incident_id}/update",
        data={"message": "Cause found", "cause_kind": "known", "cause": "", "csrf_token": csrf},
    )
    assert bad.status_code == 422 and "cause: a known cause needs a description" in bad.text
    assert "Cause found" in bad.text
    good = await app.http.post(
        f"/console/incidents/{incident_id}/update",
        data={
            "message": "Cause found",
            "status": "identified",
            "cause_kind": "known",
            "cause": "A broken switch",
            "csrf_token": csrf,
        },
    )
    assert good.status_code == 303
    [incident] = await incidents_in(app.state.database)
    assert incident.status == "identified"


# --- Rules and audit -------------------------------------------------------------------------


async def test_rules_page_checks_the_file_and_only_admins_reload(app: Console) -> None:
    csrf = await signed_in(app.http, "ann")
    page = await app.http.get("/console/rules")
    assert page.status_code == 200 and "ok: the file loads without problems." in page.text
    app.rules.write_text(RULES.replace("owner: account_manager", "owner: staff:nobody"))
    page = await app.http.get("/console/rules")
    assert re.search(rf"{re.escape(str(app.rules))}:\d+:\d+", page.text), page.text
    assert "Reload the rules now" not in page.text
    denied = await app.http.post("/console/rules/reload", data={"csrf_token": csrf})
    assert denied.status_code == 403

    admin = app.another_browser()
    async with admin:
        admin_csrf = await signed_in(admin, "root")
        rejected = await admin.post("/console/rules/reload", data={"csrf_token": admin_csrf})
        assert rejected.status_code == 422
        assert "previous rules stay active" in rejected.text
        assert 'id="reload-error"' in rejected.text and "nobody" in rejected.text
        app.rules.write_text(RULES)
        reloaded = await admin.post("/console/rules/reload", data={"csrf_token": admin_csrf})
        assert reloaded.status_code == 303
    assert app.state.rules is not None and app.state.rules.error is None
    outcomes = [e.outcome for e in await audit_rows(app.state.database, "rules.reload")]
    assert outcomes == ["refused", "ok"]


async def test_rules_page_checks_the_file_off_the_event_loop(
    app: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked_in: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        checked_in.append(threading.get_ident())
        return load_file(*args, **kwargs)

    monkeypatch.setattr("broadcaster.web.console.work.load_file", spy)
    await signed_in(app.http, "vera")
    page = await app.http.get("/console/rules")
    assert page.status_code == 200 and "ok: the file loads without problems." in page.text
    assert len(checked_in) == 1 and checked_in[0] != threading.get_ident()


async def test_rules_page_shows_a_file_that_is_not_utf8_and_says_so(app: Console) -> None:
    await signed_in(app.http, "ann")
    app.rules.write_bytes(RULES.encode("utf-8") + "# Réseau\n".encode("latin-1"))
    page = await app.http.get("/console/rules")
    assert page.status_code == 200
    assert "not UTF-8" in page.text and "R\ufffdseau" in page.text


async def test_only_admins_read_the_audit_log(app: Console) -> None:
    await signed_in(app.http, "ann")
    assert (await app.http.get("/console/audit")).status_code == 403
    admin = app.another_browser()
    async with admin:
        await signed_in(admin, "root")
        page = await admin.get("/console/audit")
    assert page.status_code == 200
    assert 'data-action="console.login"' in page.text and "account:root" in page.text


async def test_a_refusal_for_the_role_is_audited_once(app: Console) -> None:
    csrf = await signed_in(app.http, "vera")
    declared = await app.http.post("/console/incidents", data={**DECLARE, "csrf_token": csrf})
    assert declared.status_code == 403
    assert (await app.http.get("/console/audit")).status_code == 403
    assert await incidents_in(app.state.database) == []
    async with app.state.database.session() as session:
        rows = (
            await session.execute(
                select(AuditEntry).where(AuditEntry.outcome == "refused").order_by(AuditEntry.id)
            )
        ).scalars()
        found = [(e.actor, e.role, e.action, e.target, e.detail) for e in rows]
    assert found == [
        (
            "account:vera",
            "viewer",
            "POST /console/incidents",
            "/console/incidents",
            {"reason": "role too low", "needs": "operator"},
        ),
        (
            "account:vera",
            "viewer",
            "GET /console/audit",
            "/console/audit",
            {"reason": "role too low", "needs": "admin"},
        ),
    ]


async def test_static_files_are_served_and_nothing_else(app: Console) -> None:
    css = await app.http.get("/console/static/console.css")
    js = await app.http.get("/console/static/console.js")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert js.status_code == 200 and "data-live" in js.text
    assert (await app.http.get("/console/static/..%2Fapp.py")).status_code == 404
    assert (await app.http.get("/console/static/missing.css")).status_code == 404


def test_chart_bars_scale_to_the_busiest_channel() -> None:
    bars = console.chart({"sms": {"sent": 2}, "email": {"pending": 1, "sent": 3}}, width=100)
    assert [b.channel for b in bars] == ["email", "sms"]
    email, sms = bars
    assert [(s.state, s.x, s.width) for s in email.segments] == [
        ("sent", 0.0, 75.0),
        ("pending", 75.0, 25.0),
    ]
    assert (email.sent, email.total, sms.segments[0].width) == (3, 4, 50.0)


async def test_a_viewer_sees_an_incident_without_its_forms(app: Console) -> None:
    csrf = await signed_in(app.http, "ann")
    incident_id = await declare(app, csrf)
    viewer = app.another_browser()
    async with viewer:
        await signed_in(viewer, "vera")
        page = await viewer.get(f"/console/incidents/{incident_id}")
        assert page.status_code == 200 and DECLARE["title"] in page.text
        assert 'id="update-form"' not in page.text and 'id="resolve-form"' not in page.text
        queue = await viewer.get("/console/followups")
        assert queue.status_code == 200 and "Follow-up queue" in queue.text
        missing = await viewer.get(f"/console/incidents/{incident_id + 100}")
        assert missing.status_code == 404 and "There is no incident" in missing.text
        assert (await viewer.get(f"/console/incidents/{incident_id + 100}/live")).status_code == 404
    operator_page = await app.http.get(f"/console/incidents/{incident_id}")
    assert 'id="update-form"' in operator_page.text and 'id="resolve-form"' in operator_page.text


async def test_without_a_rules_file_the_pages_say_so(database: Database) -> None:
    settings = Settings.model_validate(
        {
            "delivery": {"channels": ["email"]},
            "channels": {"email": {"type": "console", "contact": "email"}},
        }
    )
    clock = FakeClock(START)
    state = WebState(settings, database, clock, "link-secret", scheduler_running=True)
    await credentials.set_account(database, clock, name="root", role="admin", password=PASSWORD)
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        assert (await http.get("/console")).headers["location"] == "/console/incidents"
        csrf = await signed_in(http, "root")
        rules = await http.get("/console/rules")
        assert rules.status_code == 200 and "No rules file is configured" in rules.text
        reload = await http.post("/console/rules/reload", data={"csrf_token": csrf})
        assert reload.status_code == 409
        roles = await http.get("/console/help")
        assert roles.status_code == 200 and "admin (you)" in roles.text
        filtered = await http.get("/console/audit?action=console.login&actor=account:root")
        assert filtered.status_code == 200 and filtered.text.count("<tr data-action=") == 1
        empty = await http.get("/console/followups?state=all")
        assert empty.status_code == 200 and "No follow-ups here." in empty.text


# --- Role x route matrix over every console route ------------------------------------------

CONSOLE_ROLES: dict[tuple[str, str], Role | None] = {
    ("GET", "/console/static/{name}"): None,
    ("GET", "/console"): None,  # a redirect to the incident list
    ("GET", "/console/login"): None,
    ("POST", "/console/login"): None,
    ("GET", "/console/help"): "viewer",
    ("POST", "/console/logout"): "viewer",
    ("GET", "/console/incidents"): "viewer",
    ("GET", "/console/incidents/rows"): "viewer",
    ("GET", "/console/incidents/new"): "operator",
    ("POST", "/console/incidents"): "operator",
    ("GET", "/console/incidents/{incident_id}"): "viewer",
    ("GET", "/console/incidents/{incident_id}/live"): "viewer",
    ("GET", "/console/incidents/{incident_id}/unreached"): "viewer",
    ("POST", "/console/incidents/{incident_id}/update"): "operator",
    ("POST", "/console/incidents/{incident_id}/resolve"): "operator",
    ("POST", "/console/incidents/{incident_id}/close"): "operator",
    ("GET", "/console/followups"): "viewer",
    ("POST", "/console/followups/{followup_id}/claim"): "operator",
    ("POST", "/console/followups/{followup_id}/done"): "operator",
    ("POST", "/console/followups/{followup_id}/waive"): "operator",
    ("GET", "/console/rules"): "viewer",
    ("POST", "/console/rules/reload"): "admin",
    ("GET", "/console/audit"): "admin",
}


async def test_every_console_route_enforces_its_role(app: Console) -> None:
    served = {
        (method, str(getattr(route, "path", "")))
        for route in console.router.routes
        for method in getattr(route, "methods", ()) or ()
        if method != "HEAD"
    }
    assert served == set(CONSOLE_ROLES), served ^ set(CONSOLE_ROLES)
    clients: dict[str, tuple[httpx.AsyncClient, str]] = {}
    for name, role in (("vera", "viewer"), ("ann", "operator"), ("root", "admin")):
        client = httpx.AsyncClient(transport=app.transport, base_url="http://daemon")
        clients[role] = (client, await signed_in(client, name))
    anonymous = httpx.AsyncClient(transport=app.transport, base_url="http://daemon")
    try:
        for (method, template), need in CONSOLE_ROLES.items():
            if need is None or template == "/console/logout":
                continue
            path = template.replace("{incident_id}", "1").replace("{followup_id}", "1")
            answer = await anonymous.request(method, path, data={} if method == "POST" else None)
            assert answer.status_code in (303, 401), (method, template, answer.status_code)
            if answer.status_code == 303:
                assert answer.headers["location"].startswith("/console/login")
            for role in ROLES:
                client, csrf = clients[role]
                data = {"csrf_token": csrf} if method == "POST" else None
                answer = await client.request(method, path, data=data)
                where = (method, template, role, answer.status_code)
                if allows(role, need):
                    assert answer.status_code != 403, where
                    location = answer.headers.get("location", "")
                    assert not location.startswith("/console/login"), where
                    assert answer.status_code < 500, where
                else:
                    assert answer.status_code == 403, where
    finally:
        for client, _ in clients.values():
            await client.aclose()
        await anonymous.aclose()


async def test_ids_beyond_64_bits_are_refused_not_a_server_error(app: Console) -> None:
    csrf = await signed_in(app.http, "ann")
    huge = str(2**70)
    page = await app.http.get(f"/console/incidents/{huge}")
    assert page.status_code == 422
    posted = await app.http.post(f"/console/followups/{huge}/claim", data={"csrf_token": csrf})
    assert posted.status_code == 422


async def test_the_queue_shows_the_follow_ups_due_soonest_and_says_there_are_more(
    app: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page is rendered whole at each visit: a round of a large incident may force
    thousands of follow-ups."""
    csrf = await signed_in(app.http, "ann")
    await declare(app, csrf)
    await run_rounds(app)
    monkeypatch.setattr(console_work, "QUEUE_SHOWN", 1)
    queue = await app.http.get("/console/followups")
    assert queue.status_code == 200
    assert queue.text.count("data-followup=") == 1
    assert "The 1 due soonest are shown; there are more." in queue.text
    monkeypatch.setattr(console_work, "QUEUE_SHOWN", 2)
    queue = await app.http.get("/console/followups")
    assert queue.text.count("data-followup=") == 2 and "there are more" not in queue.text
