"""End to end: ``broadcaster run`` as a process, driven through the CLI, observed by SMTP."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from broadcaster.devsmtp import SmtpSink
from tests.e2e.harness import (
    Daemon,
    cli,
    duplicates,
    query,
    rounds_by_customer,
    wait_until,
    write_config,
    write_customers,
)

pytestmark = pytest.mark.e2e

CADENCE = 3.0


def _declare(config: Path) -> int:
    result = cli(
        config,
        "incident",
        "declare",
        "--title",
        "Card payments failing",
        "--severity",
        "critical",
        "--component",
        "payments",
        "--region",
        "north",
        "--message",
        "Card payments fail; we are investigating.",
    )
    match = re.search(r"declared incident (\d+)", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def test_declare_updates_at_cadence_then_resolution_then_silence(tmp_path: Path) -> None:
    with SmtpSink() as sink:
        config = write_config(tmp_path, sink.port, cadence=f"{CADENCE}s")
        affected, unaffected = write_customers(tmp_path / "customers.csv", 6, 3)
        cli(config, "db", "upgrade")
        imported = cli(config, "customers", "import", str(tmp_path / "customers.csv"))
        assert "imported 9" in imported.stdout
        daemon = Daemon(config, tmp_path / "daemon.log").start()
        try:
            incident_id = _declare(config)
            declared = time.monotonic()
            wait_until(lambda: len(sink.messages) >= len(affected), 2.0, "first round within 2s")
            first_round_at = time.monotonic()
            assert first_round_at - declared <= 2.0
            assert {r for m in sink.messages for r in m.recipients} == set(affected)
            first = sink.messages[0].message
            assert str(first["X-Broadcaster-Round"]) == f"{incident_id}/1"
            body = first.get_body(preferencelist=("plain",))
            assert body is not None and "next update by" in body.get_content()

            # Two "no news" rounds at the cadence.
            wait_until(lambda: len(sink.messages) >= 3 * len(affected), 4 * CADENCE, "round 3")
            rounds = rounds_by_customer(sink.messages)
            assert all(r[:3] == [1, 2, 3] for r in rounds.values()), rounds
            subjects = {str(m.message["Subject"]) for m in sink.messages[len(affected) :]}
            assert all(s.startswith("Still working on it") for s in subjects), subjects
            times = sorted(m.received_at for m in sink.messages)
            gap = times[len(affected)] - times[len(affected) - 1]
            assert gap.total_seconds() >= CADENCE * 0.8, f"round 2 came {gap} after round 1"

            cli(config, "incident", "resolve", str(incident_id), "--message", "All fixed.")
            wait_until(
                lambda: all(
                    any(
                        str(m.message["X-Broadcaster-Kind"]) == "resolution" and a in m.recipients
                        for m in sink.messages
                    )
                    for a in affected
                ),
                5,
                "resolution to everyone",
            )
            settled = len(sink.messages)
            # Then nothing more: two cadences of silence.
            deadline = time.monotonic() + 2 * CADENCE
            while time.monotonic() < deadline:
                assert len(sink.messages) == settled, "a message was sent after the resolution"
                time.sleep(0.1)
            assert not {r for m in sink.messages for r in m.recipients} & set(unaffected)
            assert duplicates(sink.messages) == 0
            pending = query(
                tmp_path / "store.db", "select count(*) from rounds where state='pending'"
            )
            assert pending == [(0,)]
        finally:
            code = daemon.stop()
        assert code == 0, daemon.log()
        assert "daemon stopped" in daemon.log()
        shown = cli(config, "incident", "show", str(incident_id)).stdout
        assert "resolution" in shown and "promises: kept" in shown


def _all_sent(db: Path, number: int) -> bool:
    rows = query(
        db,
        "select d.state, count(*) from deliveries d join rounds r on r.id = d.round_id "
        "where r.number = ? group by d.state",
        number,
    )
    return bool(rows) and all(state == "sent" for state, _ in rows)


@pytest.mark.parametrize("moment", ["mid-round", "between-rounds"])
def test_sigkill_then_restart_sends_every_round_once(tmp_path: Path, moment: str) -> None:
    customers = 30
    with SmtpSink(delay=0.03) as sink:
        config = write_config(tmp_path, sink.port, cadence="4s", lease="2s")
        affected, _ = write_customers(tmp_path / "customers.csv", customers, 2)
        cli(config, "db", "upgrade")
        cli(config, "customers", "import", str(tmp_path / "customers.csv"))
        log = tmp_path / "daemon.log"
        daemon = Daemon(config, log).start()
        incident_id = _declare(config)
        db = tmp_path / "store.db"
        if moment == "mid-round":
            wait_until(lambda: len(sink.messages) >= 8, 10, "round 1 under way")
        else:
            wait_until(lambda: _all_sent(db, 1), 15, "round 1 recorded as sent")
        daemon.kill()
        killed_with = len(sink.messages)
        daemon = Daemon(config, log).start()
        try:
            wait_until(lambda: _all_sent(db, 2), 30, "round 2 sent after the restart")
            cli(config, "incident", "resolve", str(incident_id), "--message", "Fixed.")
            final = query(db, "select number from rounds where kind = 'resolution'")[0][0]
            wait_until(lambda: _all_sent(db, int(str(final))), 30, "resolution sent")
        finally:
            assert daemon.stop() == 0, daemon.log()
        dispatched = sorted(
            int(str(n))
            for (n,) in query(db, "select number from rounds where state = 'dispatched'")
        )
        assert dispatched[:2] == [1, 2] and dispatched[-1] == int(str(final))
        rounds = rounds_by_customer(sink.messages)
        assert set(rounds) == set(affected)
        for address, numbers in rounds.items():
            assert sorted(set(numbers)) == dispatched, f"{address} got rounds {numbers}"
        dups = duplicates(sink.messages)
        print(f"\n[{moment}] killed after {killed_with} messages; in-flight duplicates: {dups}")
        if moment == "between-rounds":
            assert dups == 0
        else:
            assert dups <= 2 * 5, "more duplicates than deliveries in flight (workers x batch)"
