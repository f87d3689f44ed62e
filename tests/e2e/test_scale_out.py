"""Three daemons on one PostgreSQL: the work is shared, nothing is sent twice or lost, and
when the leader is killed another takes over scheduling."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from bench.pgbouncer import Bouncer
from tests.e2e.harness import Daemon, cli, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

CUSTOMERS = 20_000


def _config(folder: Path, url: str, bouncer: Bouncer | None = None) -> Path:
    config = folder / "config.yaml"
    database = f'{{url: "{url}"}}'
    if bouncer is not None:  # the daemons and the CLI through it; leadership and migrations past it
        database = f'{{url: "{bouncer.url}", pooler: transaction, direct_url: "{url}"}}'
    config.write_text(
        f"""
database: {database}
schedule: {{sweep_interval: 300ms, round_lease: 5s, cadence: {{minor: 1h}}}}
delivery: {{channels: [console], workers: 2, batch_size: 200, lease: 10s, poll_interval: 100ms}}
channels: {{console: {{type: console}}}}
http: {{enabled: false}}
log: {{format: json, level: INFO}}
""",
        encoding="utf-8",
    )
    lines = ["id,name,email,components"]
    lines += [f"C{n:06d},Customer {n},c{n}@example.org,rail" for n in range(CUSTOMERS)]
    (folder / "customers.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def _scalar(url: str, sql: str, *args: object) -> object:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")

    async def run() -> object:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def _sent(url: str, number: int) -> int:
    return int(
        str(
            _scalar(
                url,
                "select count(*) from deliveries d join rounds r on r.id = d.round_id "
                "where r.number = $1 and d.state = 'sent'",
                number,
            )
        )
    )


def _console(log: str) -> list[str]:
    """The delivery keys a daemon printed on its console channel."""
    keys = []
    for line in log.splitlines():
        if line.startswith('{"channel"'):
            keys.append(json.loads(line)["key"])
    return keys


@pytest.mark.parametrize("through", ["direct", "pgbouncer"])
def test_three_daemons_share_the_work_and_survive_the_leader(
    tmp_path: Path, postgres_url: str, through: str, request: pytest.FixtureRequest
) -> None:
    """``pgbouncer``: the same through PgBouncer in transaction pooling mode, three server
    sessions for the three daemons and the CLI (``database.pooler: transaction``)."""
    bouncer = request.getfixturevalue("pgbouncer") if through == "pgbouncer" else None
    config = _config(tmp_path, postgres_url, bouncer)
    cli(config, "db", "upgrade")
    assert (
        f"imported {CUSTOMERS}"
        in cli(config, "customers", "import", str(tmp_path / "customers.csv")).stdout
    )
    daemons = [Daemon(config, tmp_path / f"daemon{n}.log").start() for n in range(3)]
    try:
        declared = cli(
            config,
            "incident",
            "declare",
            "--title",
            "Trains",
            "--severity",
            "minor",
            "--component",
            "rail",
            "--message",
            "No trains.",
        ).stdout
        incident = re.search(r"incident (\d+)", declared)
        assert incident
        wait_until(lambda: _sent(postgres_url, 1) == CUSTOMERS, 120, "round 1 sent")
        leaders = [d for d in daemons if "became the leader" in d.log()]
        assert len(leaders) == 1, "exactly one daemon schedules rounds"
        leader = leaders[0]
        leader.kill()
        killed_at = time.monotonic()
        others = [d for d in daemons if d is not leader]
        waited = wait_until(
            lambda: any("became the leader" in d.log() for d in others), 10, "a new leader"
        )
        print(f"\nnew leader after {waited:.1f}s (kill at {killed_at:.0f})")
        cli(config, "incident", "update", incident.group(1), "--message", "Buses run.")
        wait_until(lambda: _sent(postgres_url, 2) == CUSTOMERS, 120, "round 2 sent")
    finally:
        for daemon in daemons:
            if daemon.process is not None and daemon.process.poll() is None:
                assert daemon.stop() == 0, daemon.log()
    if bouncer is not None:  # nothing the pooler's sharing of server sessions disturbed
        assert not [d for d in daemons if "prepared statement" in d.log()]
    printed = [_console(d.log()) for d in daemons]
    counts = Counter(key for keys in printed for key in keys)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    print(f"per daemon: {[len(keys) for keys in printed]}, duplicates: {duplicates}")
    assert len(counts) == 2 * CUSTOMERS, "every delivery of both rounds was printed"
    assert duplicates == 0
    assert all(len(keys) > 0 for keys in printed), "the work was spread over all three"
    rounds = _scalar(postgres_url, "select count(*) from rounds where state = 'dispatched'")
    assert rounds == 2
