"""Statuspage-compatible documents, /metrics, the preferences page and body limits."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, select, update

from broadcaster.compose.links import make_token
from broadcaster.followups.service import queue_notice
from broadcaster.intake import SourceMapping
from broadcaster.intake.statuspage import parse
from broadcaster.store import (
    ContactPoint,
    Customer,
    Database,
    Delivery,
    Promise,
    Round,
    StaffNotice,
    Subscription,
)
from broadcaster.web import metrics
from tests.api.support import SECRET, START, Api, api_client, settings

DECLARE = {
    "title": "Card payments failing",
    "severity": "critical",
    "message": "Card payments fail for some customers.",
    "components": ["payments"],
}


async def test_statuspage_documents_read_back_through_a_statuspage_reader(
    database: Database,
) -> None:
    async with api_client(database) as api:
        await _seed_customer(database, "cust-7731", "ann.private@example.org", "+31612345678")
        async with database.session() as session, session.begin():
            session.add(Subscription(customer_id="cust-7731", kind="component", value="payments"))
        first = (await api.call("POST", "/api/v1/incidents", json=DECLARE)).json()["id"]
        async with database.session() as session, session.begin():
            round_id = (await session.execute(select(Round.id))).scalar_one()
            session.add(
                Delivery(
                    round_id=round_id,
                    incident_id=first,
                    customer_id="cust-7731",
                    channel="email",
                    address="ann.private@example.org",
                    state="sent",
                    next_attempt_at=START,
                    created_at=START,
                )
            )
        minor = {**DECLARE, "title": "Slow logins", "severity": "minor", "components": ["login"]}
        second = (await api.call("POST", "/api/v1/incidents", json=minor)).json()["id"]
        await api.call(
            "POST", f"/api/v1/incidents/{second}/resolve", json={"message": "Logins are fast."}
        )
        listing = await api.call("GET", "/api/v2/incidents.json", None)
        assert listing.status_code == 200
        document = listing.json()
        assert document["page"]["name"] == "Example Transit"
        by_id = {i["id"]: i for i in document["incidents"]}
        assert by_id[str(first)]["status"] == "investigating"
        assert by_id[str(first)]["impact"] == "critical"
        assert by_id[str(first)]["shortlink"] == f"https://status.example.org/incidents/{first}"
        assert by_id[str(second)]["status"] == "resolved"
        assert by_id[str(first)]["components"][0]["status"] == "major_outage"
        assert [u["body"] for u in by_id[str(second)]["incident_updates"]] == [
            "Logins are fast.",
            minor["message"],
        ]
        # Our own Statuspage reader (the one feeds use) understands what we publish.
        events = parse(
            listing.content,
            SourceMapping(components={"*": "*"}),
            source="mirror",
            now=START + timedelta(minutes=1),
        ).events
        assert {(e.external_id, e.status, e.severity) for e in events} == {
            (str(first), "investigating", "critical"),
            (str(second), "resolved", "minor"),
        }

        summary = (await api.call("GET", "/api/v2/summary.json", None)).json()
        assert [i["id"] for i in summary["incidents"]] == [str(first)]
        assert summary["status"] == {"indicator": "critical", "description": "Major System Outage"}
        components = {c["name"]: c["status"] for c in summary["components"]}
        assert components == {"payments": "major_outage", "login": "operational"}
        status = (await api.call("GET", "/api/v2/status.json", None)).json()
        assert status["status"]["indicator"] == "critical"
        page = await api.call("GET", f"/incidents/{first}", None)
        text = json.dumps(summary) + listing.text + json.dumps(status) + page.text
        for private in ("cust-7731", "ann.private", "+31612345678", "612345678"):
            assert private not in text


async def _seed_customer(database: Database, customer_id: str, email: str, phone: str) -> None:
    async with database.session() as session, session.begin():
        await session.execute(
            insert(Customer).values(
                id=customer_id,
                name="Ann",
                language="en",
                timezone="UTC",
                created_at=START,
                updated_at=START,
            )
        )
        for kind, address in (("email", email), ("sms", phone)):
            await session.execute(
                insert(ContactPoint).values(
                    customer_id=customer_id,
                    kind=kind,
                    address=address,
                    opted_out=False,
                    disabled=False,
                    updated_at=START,
                )
            )


async def test_metrics_report_the_store(database: Database) -> None:
    async with api_client(database) as api:
        await _seed_customer(database, "c1", "ann@example.org", "+31612345678")
        await _seed_customer(database, "c2", "bob@example.org", "+31687654321")
        number = (await api.call("POST", "/api/v1/incidents", json=DECLARE)).json()["id"]
        async with database.session() as session, session.begin():
            round_id = (await session.execute(select(Round.id))).scalar_one()
            for customer, state, channel in (
                ("c1", "sent", "email"),
                ("c1", "pending", "sms"),
                ("c2", "failed", "email"),
            ):
                session.add(
                    Delivery(
                        round_id=round_id,
                        incident_id=number,
                        customer_id=customer,
                        channel=channel,
                        address="x",
                        state=state,
                        next_attempt_at=START,
                        created_at=START,
                    )
                )
            for key, state in (("step-a", "failed"), ("step-b", "sent"), ("step-c", "failed")):
                queue_notice(
                    session, key=key, kind="step", staff="ann", incident_id=number, now=START
                )
                await session.flush()
                await session.execute(
                    update(StaffNotice).where(StaffNotice.key == key).values(state=state)
                )
            # Promises need a round each (one promise per round): kept, 42 s and 400 s late.
            # And two open: one past its time and grace (being broken now), one ahead.
            for number_in_incident, (state, lateness, due) in enumerate(
                (
                    ("kept", None, START),
                    ("late", 42.0, START),
                    ("late", 400.0, START),
                    ("open", None, START - timedelta(minutes=5)),
                    ("open", None, START + timedelta(minutes=5)),
                ),
                start=2,
            ):
                made = Round(
                    incident_id=number,
                    number=number_in_incident,
                    kind="update",
                    state="dispatched",
                    due_at=START,
                )
                session.add(made)
                await session.flush()
                session.add(
                    Promise(
                        incident_id=number,
                        made_by_round_id=made.id,
                        due_at=due,
                        state=state,
                        lateness_seconds=lateness,
                    )
                )
            # Rounds not yet written out: one due past the grace (the leader gone), one
            # within it.
            for later, due in ((20, START - timedelta(minutes=5)), (21, START)):
                session.add(Round(incident_id=number, number=later, kind="update", due_at=due))
        anonymous = await api.call("GET", "/metrics", None)
        assert anonymous.status_code == 401
        response = await api.call("GET", "/metrics", "viewer")
        assert response.status_code == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }
        assert samples[("broadcaster_deliveries", (("channel", "email"), ("state", "sent")))] == 1
        assert samples[("broadcaster_deliveries", (("channel", "sms"), ("state", "pending")))] == 1
        assert samples[("broadcaster_outbox_depth", ())] == 1
        assert samples[("broadcaster_incidents_open", (("severity", "critical"),))] == 1
        # Zero too, so that a series does not vanish when nothing is open.
        assert samples[("broadcaster_incidents_open", (("severity", "minor"),))] == 0
        histogram = "broadcaster_promise_lateness_seconds"
        assert samples[(f"{histogram}_count", ())] == 3
        assert samples[(f"{histogram}_sum", ())] == 442.0
        buckets = {
            bound: samples[(f"{histogram}_bucket", (("le", bound),))]
            for bound in ("0.0", "15.0", "60.0", "300.0", "900.0", "+Inf")
        }
        assert buckets == {"0.0": 1, "15.0": 1, "60.0": 2, "300.0": 2, "900.0": 3, "+Inf": 3}
        assert samples[("broadcaster_promises", (("state", "late"),))] == 2
        assert samples[("broadcaster_promises", (("state", "open"),))] == 2
        assert samples[("broadcaster_promises_overdue", ())] == 1
        assert samples[("broadcaster_followups_overdue", ())] == 0
        notices = "broadcaster_staff_notices"
        assert samples[(notices, (("kind", "step"), ("state", "failed")))] == 2
        assert samples[(notices, (("kind", "step"), ("state", "sent")))] == 1
        assert samples[("broadcaster_scheduler_running", ())] == 1
        assert samples[("broadcaster_rounds_overdue", ())] == 1
        assert samples[("broadcaster_leader", ())] == 0  # no daemon here leads


async def test_metrics_can_be_public(database: Database) -> None:
    async with api_client(database, settings(public_metrics=True)) as api:
        assert (await api.call("GET", "/metrics", None)).status_code == 200


async def test_the_preferences_page_changes_only_its_own_customer(database: Database) -> None:
    async with api_client(database) as api:
        await _seed_customer(database, "c1", "ann@example.org", "+31612345678")
        await _seed_customer(database, "c2", "bob@example.org", "+31687654321")
        token = make_token(SECRET, "c1", "preferences", START + timedelta(days=30))
        shown = await api.call("GET", f"/preferences/{token}", None)
        assert shown.status_code == 200
        assert "a•••@example.org" in shown.text and "+31•••78" in shown.text
        assert "ann@example.org" not in shown.text and "+31612345678" not in shown.text

        async with database.session() as session:
            points = {
                (p.customer_id, p.kind): p.id
                for p in (await session.execute(select(ContactPoint))).scalars()
            }
        async with database.session() as session, session.begin():
            await session.execute(
                insert(ContactPoint).values(
                    customer_id="c1",
                    kind="ntfy",
                    address="https://ntfy.example/ann-topic",
                    opted_out=False,
                    disabled=True,
                    disabled_reason="gone",
                    updated_at=START,
                )
            )
        # Keep email only, switch to Dutch; the form also names another customer's address.
        saved = await api.http.post(
            f"/preferences/{token}",
            data={
                "point": [str(points[("c1", "email")]), str(points[("c2", "sms")])],
                "language": "nl",
                "action": "save",
            },
        )
        # The page answers in the language just chosen.
        assert saved.status_code == 200 and "Opgeslagen." in saved.text
        async with database.session() as session:
            opted = {
                (p.customer_id, p.kind): p.opted_out
                for p in (await session.execute(select(ContactPoint))).scalars()
            }
            language = (await session.get(Customer, "c1")).language  # type: ignore[union-attr]
        assert opted == {
            ("c1", "email"): False,
            ("c1", "sms"): True,
            ("c1", "ntfy"): False,  # disabled: its (unsubmittable) checkbox changes nothing
            ("c2", "email"): False,
            ("c2", "sms"): False,
        }
        assert language == "nl"

        # A request that is not the form (no button's action: empty, or bytes that are no
        # form) changes nothing; read as "save" with no box ticked it had opted c1 out.
        for body in ({}, {"point": str(points[("c1", "email")])}):
            refused = await api.http.post(f"/preferences/{token}", data=body)
            assert refused.status_code == 422 and "Niet opgeslagen" in refused.text
        mangled = await api.http.post(
            f"/preferences/{token}",
            content=b"\xff\xfe=\xff",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert mangled.status_code == 422
        async with database.session() as session:
            still = {
                (p.customer_id, p.kind): p.opted_out
                for p in (await session.execute(select(ContactPoint))).scalars()
            }
        assert still == opted

        everything = await api.http.post(f"/preferences/{token}", data={"action": "unsubscribe"})
        assert "U bent afgemeld" in everything.text
        async with database.session() as session:
            c1 = (
                await session.execute(
                    select(ContactPoint.opted_out).where(ContactPoint.customer_id == "c1")
                )
            ).scalars()
            assert all(c1)

        bad_language = await api.http.post(
            f"/preferences/{token}", data={"language": "xx", "action": "save"}
        )
        assert bad_language.status_code == 422


def _chosen_language(html: str) -> list[str]:
    """The options of the page's language select that are marked chosen."""
    select_ = re.search(r'<select name="language">(.*?)</select>', html, re.DOTALL)
    assert select_ is not None, html
    return re.findall(r'<option value="([^"]+)" selected>', select_.group(1))


@pytest.mark.parametrize(
    ("stored", "shown"),
    [("nl-BE", "nl"), ("en-GB", "en"), ("nl", "nl"), ("de", "en"), ("NL_be", "nl")],
)
async def test_saving_the_preferences_keeps_a_regional_language(
    database: Database, stored: str, shown: str
) -> None:
    """The select offered only en/nl and marked none chosen for "nl-BE", so the browser
    submitted the first option: saving the page to stop SMS made the customer's messages
    English. It shows the language their messages are in (the renderer's fallback: nl-BE
    reads nl, a language without templates the default) and writes the language only when
    the customer chose another."""
    async with api_client(database) as api:
        await _seed_customer(database, "c1", "ann@example.org", "+31612345678")
        async with database.session() as session, session.begin():
            await session.execute(
                update(Customer).where(Customer.id == "c1").values(language=stored)
            )
            email = (
                await session.execute(select(ContactPoint.id).where(ContactPoint.kind == "email"))
            ).scalar_one()
        token = make_token(SECRET, "c1", "preferences", START + timedelta(days=30), issued=START)
        shown_page = await api.call("GET", f"/preferences/{token}", None)
        assert _chosen_language(shown_page.text) == [shown]

        async def save(language: str) -> str:
            saved = await api.http.post(
                f"/preferences/{token}",
                data={"point": [str(email)], "language": language, "action": "save"},
            )
            # The page answers in the language of the customer's messages.
            assert saved.status_code == 200
            assert {"en": "Saved.", "nl": "Opgeslagen."}[language] in saved.text
            assert _chosen_language(saved.text) == [language]
            async with database.session() as session:
                customer = await session.get(Customer, "c1")
                assert customer is not None
                return customer.language

        assert await save(shown) == stored  # SMS off, language left as it was
        async with database.session() as session:
            sms = (
                await session.execute(
                    select(ContactPoint.opted_out).where(ContactPoint.kind == "sms")
                )
            ).scalar_one()
        assert sms
        other = "en" if shown == "nl" else "nl"
        assert await save(other) == other  # a choice of the customer's is written
        assert await save(shown) == shown


async def test_preference_links_are_signed_scoped_and_expire(database: Database) -> None:
    async with api_client(database) as api:
        await _seed_customer(database, "c1", "ann@example.org", "+31612345678")
        good = make_token(SECRET, "c1", "preferences", START + timedelta(hours=1))
        forged = make_token("another-secret", "c1", "preferences", START + timedelta(hours=1))
        other_purpose = make_token(SECRET, "c1", "unsubscribe", START + timedelta(hours=1))
        payload, _, signature = good.rpartition(".")
        tampered = payload.replace(payload.split(".")[0], "YzI") + "." + signature  # "c2"
        for token, reason in (  # the reason's own words, not the checker's English
            (forged, "does not match the one we sent"),
            (tampered, "does not match the one we sent"),
            (other_purpose, "belongs to another of our pages"),
            ("garbage", "not a link we recognise"),
        ):
            response = await api.call("GET", f"/preferences/{token}", None)
            assert response.status_code == 400, token
            assert reason in response.text
            post = await api.http.post(f"/preferences/{token}", data={"action": "unsubscribe"})
            assert post.status_code == 400
        api.clock.advance(timedelta(hours=2))
        expired = await api.call("GET", f"/preferences/{good}", None)
        assert expired.status_code == 400 and "expired" in expired.text


async def test_an_expired_preferences_link_says_how_to_get_a_fresh_one_or_stop(
    database: Database,
) -> None:
    """It said only "the link has expired". A preferences link keeps its expiry (it can
    switch addresses back on), but its page now says that the next message carries a fresh
    link, and can still unsubscribe."""
    async with api_client(database) as api:
        await _seed_customer(database, "c1", "ann@example.org", "+31612345678")
        token = make_token(SECRET, "c1", "preferences", START + timedelta(days=30), issued=START)
        async with database.session() as session, session.begin():
            # The customer had stopped SMS; an old link must not switch it back on.
            await session.execute(
                update(ContactPoint).where(ContactPoint.kind == "sms").values(opted_out=True)
            )
            points = {p.kind: p.id for p in (await session.execute(select(ContactPoint))).scalars()}
        api.clock.advance(timedelta(days=31))

        async def opted_out() -> dict[str, bool]:
            async with database.session() as session:
                rows = (await session.execute(select(ContactPoint))).scalars()
                return {p.kind: p.opted_out for p in rows}

        shown = await api.call("GET", f"/preferences/{token}", None)
        assert shown.status_code == 400 and "This link has expired" in shown.text
        assert "The next message Example Transit sends you carries a fresh one" in shown.text
        assert 'name="action" value="unsubscribe"' in shown.text
        assert 'name="point"' not in shown.text and "a•••@example.org" not in shown.text
        saved = await api.http.post(
            f"/preferences/{token}",
            data={"point": [str(points["email"]), str(points["sms"])], "action": "save"},
        )
        assert saved.status_code == 400 and "This link has expired" in saved.text
        assert await opted_out() == {"email": False, "sms": True}
        stopped = await api.http.post(f"/preferences/{token}", data={"action": "unsubscribe"})
        assert stopped.status_code == 200 and "You are unsubscribed" in stopped.text
        assert await opted_out() == {"email": True, "sms": True}
        # A customer created later under the same id is not reached by the old link.
        async with database.session() as session, session.begin():
            await session.execute(
                update(ContactPoint).where(ContactPoint.kind == "email").values(opted_out=False)
            )
            await session.execute(
                update(Customer)
                .where(Customer.id == "c1")
                .values(created_at=START + timedelta(days=2))
            )
        assert (await api.call("GET", f"/preferences/{token}", None)).status_code == 404
        again = await api.http.post(f"/preferences/{token}", data={"action": "unsubscribe"})
        assert again.status_code == 404
        assert await opted_out() == {"email": False, "sms": True}


async def test_oversized_bodies_are_refused_with_413(database: Database) -> None:
    async with api_client(database, settings(max_body_bytes=4096)) as api:
        big = {**DECLARE, "message": "x" * 5000}
        declared = await api.call("POST", "/api/v1/incidents", json=big)
        assert declared.status_code == 413
        assert "4096" in declared.json()["error"]["message"]

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 1000

        streamed = await api.http.post(
            "/api/v1/incidents",
            content=chunks(),
            headers={**api.auth("admin"), "Content-Type": "application/json"},
        )
        assert streamed.status_code == 413, streamed.text
        # Only the import's own POST counts its body itself; no other method on that path.
        anonymous = await api.http.put(
            "/api/v1/customers/import",
            content=b"x" * 10_000,
            headers={"Content-Type": "application/json"},
        )
        assert anonymous.status_code == 413
        assert (await api.call("GET", "/api/v1/incidents")).json()["items"] == []


async def test_settled_deliveries_are_counted_in_the_background_not_at_every_scrape(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every row a round ever wrote was counted at every scrape, on every daemon: 1.8 s a
    scrape at 2.5 million rows on SQLite, holding the daemon's connection. The outbox
    (pending, sending) is counted live; the settled states at most every few minutes."""

    def sent(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
        return samples.get(("broadcaster_deliveries", (("channel", "email"), ("state", "sent"))), 0)

    async def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = (await api.call("GET", "/metrics", "viewer")).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def add(api: Api, customer: str, state: str, channel: str) -> None:
        async with database.session() as session, session.begin():
            round_id, incident_id = (
                await session.execute(select(Round.id, Round.incident_id))
            ).one()
            session.add(
                Delivery(
                    round_id=round_id,
                    incident_id=incident_id,
                    customer_id=customer,
                    channel=channel,
                    address="x",
                    state=state,
                    next_attempt_at=START,
                    created_at=START,
                )
            )

    async with api_client(database) as api:
        await _seed_customer(database, "c1", "ann@example.org", "+31612345678")
        await _seed_customer(database, "c2", "bob@example.org", "+31687654321")
        await api.call("POST", "/api/v1/incidents", json=DECLARE)
        await add(api, "c1", "sent", "email")
        assert sent(await scrape(api)) == 1  # the first scrape counts them
        await add(api, "c2", "sent", "email")
        await add(api, "c1", "pending", "sms")
        later = await scrape(api)
        assert sent(later) == 1  # the last count, not a new scan
        assert later[("broadcaster_outbox_depth", ())] == 1  # live
        monkeypatch.setattr(metrics, "SETTLED_EVERY", 0.0)
        deadline = time.monotonic() + 10
        while sent(await scrape(api)) != 2:  # counted again in the background
            assert time.monotonic() < deadline, "the settled deliveries were not counted again"
            await asyncio.sleep(0.05)
        await metrics.stop_counting(api.state)  # as the daemon does before its store closes
