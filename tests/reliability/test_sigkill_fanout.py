"""SIGKILL in the middle of a 50,000-delivery fan-out: after a restart none is lost, and
the repeats are no more than the deliveries in flight (workers x batch size), counted.

The daemon runs as a process on SQLite with the console channel writing one JSON line per
message to a file: the fastest local sink, so the test measures the daemon, not a fake
provider. The kill comes when 2% of the messages are out, while the round is still
being materialised and the workers are sending. ``BROADCASTER_TEST_FANOUT`` sets the size
(50,000 by default; the test is bounded by its timeouts either way).

The delivery lease is 10 s, not shorter: while the round is materialised (2,000 rows per
transaction) a worker may wait seconds for SQLite's write lock before it can record what it
sent, and a lease that expires meanwhile lets another worker send the batch again with no
crash at all (seen with a 3 s lease: 200 extra repeats). ``delivery.lease`` must outlast the
slowest claim-send-record, as docs/scaling.md says.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.harness import Daemon, cli, query, wait_until

pytestmark = pytest.mark.e2e

FANOUT = int(os.environ.get("BROADCASTER_TEST_FANOUT", "50000"))
WORKERS, BATCH = 4, 200
IN_FLIGHT = WORKERS * BATCH


def _config(folder: Path) -> Path:
    config = folder / "config.yaml"
    config.write_text(
        f"""
database: {{url: "sqlite+aiosqlite:///{folder / "store.db"}"}}
schedule: {{sweep_interval: 200ms, round_lease: 3s, audience_batch: 2000, cadence: {{minor: 6h}}}}
delivery:
  channels: [console]
  workers: {WORKERS}
  batch_size: {BATCH}
  lease: 10s
  poll_interval: 100ms
channels: {{console: {{type: console, path: "{folder / "sink.jsonl"}"}}}}
http: {{enabled: false}}
log: {{format: json, level: INFO}}
""",
        encoding="utf-8",
    )
    lines = ["id,name,email,components"]
    lines += [f"C{n:06d},Customer {n},c{n}@example.org,rail" for n in range(FANOUT)]
    (folder / "customers.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def _lines(sink: Path) -> int:
    if not sink.exists():
        return 0
    with sink.open("rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def _keys(sink: Path) -> tuple[Counter[str], int]:
    """Idempotency keys in the sink, and how many lines were cut short by the kill."""
    keys: Counter[str] = Counter()
    torn = 0
    for line in sink.read_text(encoding="utf-8").splitlines():
        try:
            keys[json.loads(line)["key"]] += 1
        except ValueError:
            torn += 1
    return keys, torn


def test_sigkill_mid_fanout_loses_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path)
    db, sink = tmp_path / "store.db", tmp_path / "sink.jsonl"
    cli(config, "db", "upgrade")
    cli(config, "customers", "import", str(tmp_path / "customers.csv"))
    log = tmp_path / "daemon.log"
    daemon = Daemon(config, log).start()
    started = time.monotonic()
    try:
        declared = cli(
            config,
            "incident",
            "declare",
            "--title",
            "Signal failure",
            "--severity",
            "minor",
            "--component",
            "rail",
            "--message",
            "Trains are delayed.",
        )
        incident = int(re.findall(r"declared incident (\d+)", declared.stdout)[0])
        wait_until(lambda: _lines(sink) >= FANOUT // 50, 240, "the fan-out under way")
    finally:
        daemon.kill()
    killed_at = _lines(sink)
    materialised = int(str(query(db, "select count(*) from deliveries")[0][0]))
    daemon = Daemon(config, log).start()
    try:
        wait_until(
            lambda: (
                query(db, "select count(*) from deliveries where state = 'sent'")[0][0] == FANOUT
            ),
            300,
            "every delivery sent after the restart",
        )
        elapsed = time.monotonic() - started
    finally:
        assert daemon.stop() == 0, daemon.log()[-3000:]

    keys, torn = _keys(sink)
    stored = {f"delivery-{row[0]}" for row in query(db, "select id from deliveries")}
    assert len(stored) == FANOUT
    states = query(db, "select state, count(*) from deliveries group by state")
    assert states == [("sent", FANOUT)], states
    lost = stored - set(keys)
    assert not lost, f"{len(lost)} deliveries never reached the sink"
    assert set(keys) <= stored
    repeats = sum(n - 1 for n in keys.values())
    rounds = query(db, "select number, state from rounds where incident_id = ?", incident)
    print(
        f"\nfan-out {FANOUT}: killed after {killed_at} messages ({materialised} deliveries "
        f"materialised); all sent {elapsed:.1f}s after the declaration; lost 0; "
        f"repeated {repeats} (in-flight limit {IN_FLIGHT}); torn lines {torn}"
    )
    assert repeats + torn <= IN_FLIGHT
    assert rounds[0][1] == "dispatched"
