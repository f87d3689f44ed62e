"""``broadcaster incident unreached`` and the line ``incident show`` gives the customers not
reached: pages, the JSON form, the filter, and bad input refused with the option named."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update
from typer.testing import CliRunner

from broadcaster.cli.main import app
from broadcaster.store import Customer, Database, Delivery, Round, Subscription

runner = CliRunner()
START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)


def _seed(url: str, incident_id: int, rows: list[tuple[str, str | None, str, str | None]]) -> None:
    """(customer, channel, state, last error) deliveries in the incident's first round,
    marked written; a ``None`` channel: a subscriber of ``payments`` without a delivery."""

    async def write() -> None:
        database = Database(url)
        try:
            async with database.session() as session, session.begin():
                round_id = (
                    await session.execute(select(Round.id).where(Round.incident_id == incident_id))
                ).scalar_one()
                await session.execute(
                    update(Round).where(Round.id == round_id).values(materialised_at=START)
                )
                for cid in dict.fromkeys(row[0] for row in rows):
                    await session.execute(
                        insert(Customer).values(
                            id=cid, name=f"Name {cid}", created_at=START, updated_at=START
                        )
                    )
                for customer, channel, state, error in rows:
                    if channel is None:
                        session.add(
                            Subscription(customer_id=customer, kind="component", value="payments")
                        )
                        continue
                    session.add(
                        Delivery(
                            round_id=round_id,
                            incident_id=incident_id,
                            customer_id=customer,
                            channel=channel,
                            address="x",
                            state=state,
                            attempts=1,
                            next_attempt_at=START,
                            created_at=START,
                            last_error=error,
                        )
                    )
        finally:
            await database.dispose()

    asyncio.run(write())


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, Path, int]:
    """A store with one incident and its deliveries: (url, config, incident id)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    config = tmp_path / "config.yaml"
    config.write_text(f"database:\n  url: {url}\n")
    assert runner.invoke(app, ["db", "upgrade", "-c", str(config)]).exit_code == 0
    declared = runner.invoke(
        app,
        [
            "incident", "declare", "-t", "Payments down", "-m", "Card payments fail.",
            "-s", "major", "--component", "payments", "-c", str(config),
        ],
    )  # fmt: skip
    assert declared.exit_code == 0, declared.output
    incident_id = int(declared.output.split()[-1])
    _seed(
        url,
        incident_id,
        [
            ("c1", "email", "sent", None),
            ("c2", "email", "failed", "550 no such mailbox"),
            ("c2", "sms", "cancelled", "the customer opted out of this address"),
            ("c3", "email", "pending", "421 try later"),
            ("c4", "sms", "undelivered", "30005\x1b[2J"),
            ("c5", None, "", None),  # subscribed, no address: no delivery
        ],
    )
    return url, config, incident_id


def test_the_list_its_pages_and_the_show_line(store: tuple[str, Path, int]) -> None:
    _, config, incident = store
    listed = runner.invoke(app, ["incident", "unreached", str(incident), "-c", str(config)])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0] == (
        f"incident {incident}: not reached: 3 (failed 1, undelivered 1, no_address 1), "
        "and 1 still being tried"
    )
    assert lines[2].startswith("c2 ") and "failed" in lines[2] and "email" in lines[2]
    assert "550 no such mailbox" in lines[2]
    assert lines[3].startswith(" ") and "sms" in lines[3] and "cancelled" in lines[3]
    assert lines[4].startswith("c3 ") and "not yet" in lines[4] and "next try" in lines[4]
    assert lines[5].startswith("c4 ") and "undelivered" in lines[5]
    assert "\\x1b[2J" in lines[5] and "\x1b" not in listed.output  # no terminal control
    assert lines[6].startswith("c5 ") and "no_address" in lines[6]
    assert "no usable address on any channel" in lines[6]
    assert not any(line.startswith("c1 ") for line in lines)
    assert "more:" not in listed.output

    first = runner.invoke(
        app, ["incident", "unreached", str(incident), "--limit", "1", "-c", str(config)]
    )
    assert first.exit_code == 0, first.output
    assert first.output.splitlines()[-1] == "more: --after c2"
    rest = runner.invoke(
        app,
        ["incident", "unreached", str(incident), "--after", "c2", "--json", "-c", str(config)],
    )
    assert rest.exit_code == 0, rest.output
    body = json.loads(rest.output)
    assert [c["customer_id"] for c in body["customers"]] == ["c3", "c4", "c5"]
    assert body["incident_id"] == incident and body["next_after"] is None
    assert (body["unreached"], body["still_trying"]) == (3, 1)
    assert body["by_reason"] == {
        "failed": 1,
        "undelivered": 1,
        "cancelled": 0,
        "other": 0,
        "no_address": 1,
    }
    assert body["customers"][2]["reason"] == "no_address"
    assert body["customers"][2]["channels"] == []
    c3 = body["customers"][0]
    assert c3["still_trying"] is True and c3["reason"] == "trying"
    assert c3["channels"][0]["state"] == "pending"
    assert c3["channels"][0]["next_attempt_at"].startswith("2026-01-06T08:00:00")

    final = runner.invoke(
        app,
        ["incident", "unreached", str(incident), "--only", "final", "--json", "-c", str(config)],
    )
    assert [c["customer_id"] for c in json.loads(final.output)["customers"]] == ["c2", "c4", "c5"]

    show = runner.invoke(app, ["incident", "show", str(incident), "-c", str(config)])
    assert show.exit_code == 0, show.output
    assert "not reached: 3 (failed 1, undelivered 1, no_address 1), and 1 still being tried" in (
        show.output
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--limit", "0"], 2, "--limit"),
        (["--limit", "1001"], 2, "--limit"),
        (["--after", "x" * 65], 2, "--after: a customer id is 1 to 64 characters"),
        (["--after", ""], 2, "--after: a customer id is 1 to 64 characters"),
        (["--only", "failed"], 2, "--only: 'failed' is not one of final, trying"),
    ],
)
def test_bad_options_are_refused_naming_them(
    store: tuple[str, Path, int], args: list[str], code: int, message: str
) -> None:
    _, config, incident = store
    result = runner.invoke(app, ["incident", "unreached", str(incident), *args, "-c", str(config)])
    assert result.exit_code == code, result.output
    assert message in result.output


def test_an_unknown_incident_is_refused(store: tuple[str, Path, int]) -> None:
    _, config, _ = store
    result = runner.invoke(app, ["incident", "unreached", "424242", "-c", str(config)])
    assert result.exit_code == 1
    assert "error: no incident with id 424242" in result.output
    huge = runner.invoke(app, ["incident", "unreached", str(2**70), "-c", str(config)])
    assert huge.exit_code == 2
