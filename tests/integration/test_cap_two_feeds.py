"""One CAP alert brought by two configured feeds (an aggregator and the issuer's own, an
index and a single-alert feed) is one incident: CAP's ``sender,identifier`` is unique
worldwide. Other kinds' ids (an RSS guid) stay their feed's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update

from broadcaster.clock import FakeClock
from broadcaster.intake.apply import Applied
from broadcaster.intake.watch import FeedSettings, FeedWatcher, watchers_for
from broadcaster.store import Database, Incident, IncidentUpdate, Round
from tests.conftest import FIXTURES

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
ALERT = (FIXTURES / "cap" / "oasis-cap12-appendix-a1.xml").read_bytes()
SENDER = "hsas@dhs.gov"
IDENTIFIER = "43b080713727"
SENT = "2003-04-02T14:39:01-05:00"
KEY = f"{SENDER},{IDENTIFIER}"

NATIONAL_INDEX = "https://national.example/index.atom"
NATIONAL_ALERT = "https://national.example/alerts/a1.xml"
REGIONAL = "https://regional.example/current.xml"


def cap_message(
    identifier: str, kind: str, sent: str, *, sender: str = SENDER, refs: str = ""
) -> bytes:
    references = f"<references>{refs}</references>" if refs else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>{identifier}</identifier>
<sender>{sender}</sender><sent>{sent}</sent><status>Actual</status>
<msgType>{kind}</msgType><scope>Public</scope>{references}
<info><category>Security</category><event>Advisory</event><urgency>Immediate</urgency>
<severity>Severe</severity><certainty>Likely</certainty><headline>{kind} {identifier}</headline>
<description>Threat level {kind.lower()}.</description>
<area><areaDesc>Nationwide</areaDesc></area></info></alert>""".encode()


def index(updated: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        f"<id>urn:index</id><title>alerts</title><updated>{updated}</updated>"
        f"<entry><id>urn:a1</id><title>a1</title><updated>{updated}</updated>"
        f'<link rel="alternate" type="application/cap+xml" href="{NATIONAL_ALERT}"/></entry>'
        "</feed>"
    ).encode()


def feed(name: str, kind: str, url: str) -> FeedSettings:
    return FeedSettings.model_validate({"name": name, "kind": kind, "url": url, "hold": "0s"})


class Served:
    """The documents each URL answers with, changed as a test goes."""

    def __init__(self) -> None:
        self.documents: dict[str, bytes] = {
            NATIONAL_INDEX: index("2026-01-06T08:00:00Z"),
            NATIONAL_ALERT: ALERT,
            REGIONAL: ALERT,
        }
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(self.answer))

    def answer(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=self.documents[str(request.url)])

    def national(self, document: bytes, updated: str) -> None:
        """The aggregator's index lists ``document`` (changed at ``updated``)."""
        self.documents[NATIONAL_INDEX] = index(updated)
        self.documents[NATIONAL_ALERT] = document


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    served = Served()
    yield served
    await served.client.aclose()


def cap_watchers(database: Database, clock: FakeClock, served: Served) -> list[FeedWatcher]:
    """The aggregator's index and the issuer's own feed, configured side by side."""
    feeds = [
        feed("national", "cap_index", NATIONAL_INDEX),
        feed("regional", "cap", REGIONAL),
    ]
    return watchers_for(feeds, database, clock, served.client)


async def poll(watcher: FeedWatcher) -> Applied:
    [outcome] = await watcher.poll_once()
    assert outcome.kind != "error", outcome.reason
    return outcome


async def incidents(database: Database) -> list[Incident]:
    async with database.session() as session:
        return list((await session.execute(select(Incident).order_by(Incident.id))).scalars())


async def first_rounds(database: Database) -> list[int]:
    async with database.session() as session:
        return list(
            (await session.execute(select(Round.incident_id).where(Round.kind == "first")))
            .scalars()
            .all()
        )


async def notice_sent(database: Database) -> None:
    async with database.session() as session, session.begin():
        await session.execute(update(Round).values(state="dispatched"))


async def test_the_same_alert_through_two_feeds_is_one_incident_with_one_first_round(
    database: Database, served: Served
) -> None:
    national, regional = cap_watchers(database, FakeClock(START), served)
    created = await poll(national)
    assert created.kind == "created" and created.source == "national"
    again = await poll(regional)
    assert (again.kind, again.incident_id) == ("unchanged", created.incident_id)
    [incident] = await incidents(database)
    assert (incident.source, incident.external_id) == ("national", KEY)
    assert await first_rounds(database) == [incident.id]


async def test_the_same_alert_through_two_feeds_at_the_same_moment_is_one_incident(
    database: Database, served: Served
) -> None:
    """Both feeds are polled when the daemon starts: neither may find the alert new once
    the other has."""
    national, regional = cap_watchers(database, FakeClock(START), served)
    outcomes = await asyncio.gather(national.poll_once(), regional.poll_once())
    kinds = sorted(outcome.kind for [outcome] in outcomes)
    assert kinds == ["created", "unchanged"], outcomes
    [incident] = await incidents(database)
    assert await first_rounds(database) == [incident.id]


class _OwnLocks(dict[asyncio.AbstractEventLoop, asyncio.Lock]):
    """Every caller its own process lock: each apply as if in a daemon of its own."""

    def get(self, key: object, default: object = None) -> asyncio.Lock:
        return asyncio.Lock()


@pytest.mark.postgres
async def test_two_daemons_taking_the_alert_from_two_feeds_at_once_make_one_incident(
    postgres_url: str, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PostgreSQL every daemon polls every feed: one taking the alert from the index
    while another takes it from the issuer's feed still makes one incident."""
    from broadcaster.intake import apply
    from broadcaster.store.migrate import upgrade_async

    monkeypatch.setattr(apply, "_shared_locks", _OwnLocks())
    await upgrade_async(postgres_url)
    one, two = Database(postgres_url), Database(postgres_url)
    try:
        clock = FakeClock(START)
        [national, _] = cap_watchers(one, clock, served)
        [_, regional] = cap_watchers(two, clock, served)
        outcomes = await asyncio.gather(national.poll_once(), regional.poll_once())
        assert sorted(outcome.kind for [outcome] in outcomes) == ["created", "unchanged"]
        [incident] = await incidents(one)
        assert await first_rounds(one) == [incident.id]
    finally:
        await one.dispose()
        await two.dispose()


async def test_an_update_through_the_second_feed_updates_the_first_feeds_incident(
    database: Database, served: Served
) -> None:
    clock = FakeClock(START)
    national, regional = cap_watchers(database, clock, served)
    created = await poll(national)
    await notice_sent(database)
    clock.advance(timedelta(minutes=10))
    served.documents[REGIONAL] = cap_message(
        "43b080713728", "Update", "2003-04-02T15:39:01-05:00", refs=f"{KEY},{SENT}"
    )
    updated = await poll(regional)
    assert (updated.kind, updated.incident_id) == ("updated", created.incident_id)
    # The aggregator relays the same update later: applied already.
    served.national(served.documents[REGIONAL], "2026-01-06T08:10:00Z")
    assert (await poll(national)).kind == "unchanged"
    [incident] = await incidents(database)
    assert incident.title == "Update 43b080713728"
    async with database.session() as session:
        authors = (
            await session.execute(
                select(IncidentUpdate.author).where(IncidentUpdate.incident_id == incident.id)
            )
        ).scalars()
        assert len(list(authors)) == 2  # declared, then the one update


async def test_a_cancel_through_the_second_feed_resolves_the_first_feeds_incident(
    database: Database, served: Served
) -> None:
    clock = FakeClock(START)
    national, regional = cap_watchers(database, clock, served)
    created = await poll(regional)
    assert created.kind == "created"
    await notice_sent(database)
    clock.advance(timedelta(minutes=10))
    served.national(
        cap_message("43b080713729", "Cancel", "2003-04-02T16:39:01-05:00", refs=f"{KEY},{SENT}"),
        "2026-01-06T08:10:00Z",
    )
    resolved = await poll(national)
    assert (resolved.kind, resolved.incident_id) == ("resolved", created.incident_id)
    [incident] = await incidents(database)
    assert (incident.source, incident.status) == ("regional", "resolved")


async def test_one_identifier_from_two_senders_is_two_incidents(
    database: Database, served: Served
) -> None:
    """An identifier is unique per sender only."""
    national, regional = cap_watchers(database, FakeClock(START), served)
    served.documents[REGIONAL] = cap_message(IDENTIFIER, "Alert", SENT, sender="ops@other.example")
    first, second = await poll(national), await poll(regional)
    assert (first.kind, second.kind) == ("created", "created")
    assert first.incident_id != second.incident_id
    assert {(i.source, i.external_id) for i in await incidents(database)} == {
        ("national", KEY),
        ("regional", f"ops@other.example,{IDENTIFIER}"),
    }


async def test_incidents_made_per_feed_before_are_still_found_through_each_feed(
    database: Database, served: Served
) -> None:
    """Earlier builds made one incident per feed for the same alert: each feed's later
    messages still land on its own."""
    clock = FakeClock(START)
    old = [
        FeedWatcher(feed("national", "cap_index", NATIONAL_INDEX), database, clock, served.client),
        FeedWatcher(feed("regional", "cap", REGIONAL), database, clock, served.client),
    ]
    made = {(await poll(w)).source: (await incidents(database))[-1].id for w in old}
    assert len(set(made.values())) == 2
    await notice_sent(database)
    clock.advance(timedelta(minutes=10))
    national, regional = cap_watchers(database, clock, served)
    message = cap_message(
        "43b080713728", "Update", "2003-04-02T15:39:01-05:00", refs=f"{KEY},{SENT}"
    )
    served.documents[REGIONAL] = message
    served.national(message, "2026-01-06T08:10:00Z")
    outcome = await poll(regional)
    assert (outcome.kind, outcome.incident_id) == ("updated", made["regional"])
    outcome = await poll(national)
    assert (outcome.kind, outcome.incident_id) == ("updated", made["national"])
    assert len(await incidents(database)) == 2


def rss(guid: str, title: str) -> bytes:
    return (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Status</title>'
        f"<item><guid>{guid}</guid><title>{title}</title><description>{title}.</description>"
        "<pubDate>Tue, 06 Jan 2026 07:50:00 GMT</pubDate></item></channel></rss>"
    ).encode()


async def test_an_rss_guid_two_rss_feeds_share_is_still_two_incidents(
    database: Database, served: Served
) -> None:
    """An RSS guid is unique in its feed only: ``1`` on two feeds is two items."""
    served.documents["https://a.example/rss"] = rss("1", "Card payments down")
    served.documents["https://b.example/rss"] = rss("1", "Trains delayed")
    feeds = [
        feed("payments", "rss", "https://a.example/rss"),
        feed("trains", "rss", "https://b.example/rss"),
        feed("regional", "cap", REGIONAL),
    ]
    watchers = watchers_for(feeds, database, FakeClock(START), served.client)
    assert [w.peers for w in watchers[:2]] == [frozenset(), frozenset()]
    first, second = await poll(watchers[0]), await poll(watchers[1])
    assert (first.kind, second.kind) == ("created", "created")
    assert {(i.source, i.external_id) for i in await incidents(database)} == {
        ("payments", "1"),
        ("trains", "1"),
    }


async def test_feeds_check_knows_an_alert_another_cap_feed_brought_is_not_new(
    database: Database, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``broadcaster feeds check regional`` says what the daemon would do: nothing new for
    an alert the national feed already made an incident of."""
    from broadcaster.cli.feeds import check_feed
    from broadcaster.intake.watch import peers_of

    clock = FakeClock(START)
    national, regional = cap_watchers(database, clock, served)
    created = await poll(national)

    async def fetched(_watcher: FeedWatcher) -> bytes:
        return ALERT

    monkeypatch.setattr(FeedWatcher, "fetch", fetched)
    configured = [national.feed, regional.feed]
    readable, lines = await check_feed(
        regional.feed, database, clock, peers_of(regional.feed, configured)
    )
    assert readable
    assert any(
        line.split()[:2] == ["unchanged", KEY] and f"#{created.incident_id}" in line
        for line in lines
    ), lines
