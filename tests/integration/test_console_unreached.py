"""The console's "Not reached": the figures and the first customers on the incident page,
every one a page at a time on its own page; viewers see the figures only; bad input refused."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy import insert

from broadcaster.store import Customer, Subscription
from broadcaster.web.console import unreached as console_unreached
from channels.base import DeliveryError, Message, Target
from tests.integration.test_console import Console, app, declare, run_rounds, signed_in

__all__ = ["app"]  # the console fixture, used by name


def _fail_some(target: Target, _message: Message) -> DeliveryError | None:
    """V2's mailbox is gone; S1's server asks to try later; V1 is reached."""
    if target.customer_id == "V2":
        return DeliveryError("550 no such mailbox", retryable=False)
    if target.customer_id == "S1":
        return DeliveryError("421 try later", retryable=True)
    return None


def _customers(html: str) -> list[str]:
    return re.findall(r'<tr data-customer="([^"]+)" class="first">', html)


async def _incident(app: Console) -> int:
    csrf = await signed_in(app.http, "ann")
    app.email.fail = _fail_some
    incident_id = await declare(app, csrf)
    await run_rounds(app)
    return incident_id


async def test_the_incident_page_says_who_was_not_reached(
    app: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident_id = await _incident(app)
    page = await app.http.get(f"/console/incidents/{incident_id}")
    assert page.status_code == 200, page.text
    assert 'data-unreached="1" data-trying="1"' in page.text
    assert "Not reached: 1</span> (and 1 still being tried)" in page.text
    assert _customers(page.text) == ["S1", "V2"]
    row = page.text[page.text.index('data-customer="V2"') :]
    assert "550 no such mailbox" in row[: row.index("</tr>")]
    assert "not yet" in page.text[page.text.index('data-customer="S1"') :]
    assert 'id="unreached-more"' not in page.text

    monkeypatch.setattr(console_unreached, "ON_INCIDENT_PAGE", 1)
    page = await app.http.get(f"/console/incidents/{incident_id}")
    assert _customers(page.text) == ["S1"]
    more = re.search(r'id="unreached-more">[^<]*<a href="([^"]+)"', page.text)
    assert more and more.group(1) == f"/console/incidents/{incident_id}/unreached?after=S1"
    rest = await app.http.get(more.group(1))
    assert rest.status_code == 200 and _customers(rest.text) == ["V2"]


async def test_a_subscriber_without_an_address_is_listed_as_no_address(app: Console) -> None:
    """N1, subscribed to rail with no contact point, gets no message: listed, by id among
    the others, with no channel."""
    async with app.state.database.session() as session, session.begin():
        await session.execute(
            insert(Customer).values(
                id="N1", name="Customer N1", created_at=app.clock.now(), updated_at=app.clock.now()
            )
        )
        await session.execute(
            insert(Subscription).values(customer_id="N1", kind="component", value="rail")
        )
    incident_id = await _incident(app)
    page = await app.http.get(f"/console/incidents/{incident_id}")
    assert page.status_code == 200, page.text
    assert 'data-unreached="2" data-trying="1"' in page.text
    assert "1 failed, 1 no_address" in " ".join(page.text.split())
    assert _customers(page.text) == ["N1", "S1", "V2"]
    row = page.text[page.text.index('data-customer="N1"') :]
    row = row[: row.index("</tr>")]
    assert "no_address" in row and "no usable address on any channel" in row
    final = await app.http.get(
        f"/console/incidents/{incident_id}/unreached", params={"only": "final"}
    )
    assert _customers(final.text) == ["N1", "V2"]


async def test_the_list_pages_and_filters(app: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    incident_id = await _incident(app)
    monkeypatch.setattr(console_unreached, "LIST_LIMIT", 1)
    url = f"/console/incidents/{incident_id}/unreached"
    first = await app.http.get(url)
    assert first.status_code == 200 and _customers(first.text) == ["S1"]
    following = re.search(r'href="([^"]+)" id="unreached-next"', first.text)
    assert following and following.group(1) == f"{url}?after=S1"
    second = await app.http.get(following.group(1))
    assert _customers(second.text) == ["V2"] and 'id="unreached-next"' not in second.text
    assert 'id="unreached-first"' in second.text
    final = await app.http.get(url, params={"only": "final"})
    assert _customers(final.text) == ["V2"]
    trying = await app.http.get(url, params={"only": "trying", "after": "S1"})
    assert _customers(trying.text) == [] and 'id="unreached-none"' in trying.text


async def test_viewers_see_the_figures_not_the_customers(app: Console) -> None:
    incident_id = await _incident(app)
    async with httpx.AsyncClient(transport=app.transport, base_url="http://daemon") as viewer:
        await signed_in(viewer, "vera")
        for url in (
            f"/console/incidents/{incident_id}",
            f"/console/incidents/{incident_id}/unreached",
        ):
            page = await viewer.get(url)
            assert page.status_code == 200, page.text
            assert 'data-unreached="1" data-trying="1"' in page.text
            assert 'id="unreached-withheld"' in page.text
            assert "data-customer=" not in page.text and "550 no such mailbox" not in page.text


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [
        ({"after": "x" * 65}, 422, "after: a customer id is 1 to 64 characters"),
        ({"only": "failed"}, 422, "only: &#39;failed&#39; is not one of final, trying"),
    ],
)
async def test_bad_input_is_refused_naming_it(
    app: Console, query: dict[str, str], status: int, says: str
) -> None:
    incident_id = await _incident(app)
    page = await app.http.get(f"/console/incidents/{incident_id}/unreached", params=query)
    assert page.status_code == status
    assert says in page.text


async def test_an_unknown_or_impossible_incident(app: Console) -> None:
    await signed_in(app.http, "ann")
    missing = await app.http.get("/console/incidents/424242/unreached")
    assert missing.status_code == 404 and "There is no incident 424242." in missing.text
    huge = await app.http.get(f"/console/incidents/{2**70}/unreached")
    assert huge.status_code == 422
