"""Soak: continuous incidents under fault injection for N minutes, against the real daemon.

``python -m bench.soak [--minutes 30] [--customers 400] [--every 30] [--fault-rate 0.2]``

What runs:

- ``broadcaster run`` as a child process, on a SQLite store in a temporary folder, sending
  on two channels: the signed webhook and Twilio SMS, each to its fake provider from
  ``tests/fakes`` behind the fault injectors of ``tests/reliability/chaos.py``: one request in
  five (``--fault-rate``) gets a 5xx, a 429 with Retry-After, a timeout, a late answer after
  the provider accepted, a slow answer, or a TCP reset;
- this process declares an incident every ``--every`` seconds on one of four components,
  posts an update half-way and resolves it after one to three minutes, through the same
  service functions the CLI uses; cadences are 20-45 s so that promises come due all the time;
- the daemon's resident memory (VmRSS) is sampled every 5 s.

At the end it stops declaring, resolves what is open, waits for the daemon to drain, stops it
with SIGTERM and checks, from the store and the fakes:

- memory: the median RSS of the last minute is within 10% of the median of the first minute
  after warm-up (the first third of the run, at least one minute);
- no delivery stuck: none ``pending`` or ``sending`` once drained, none ``failed``, none that
  took over five minutes from its round to its send (the median, p99 and max are printed);
- every promise kept: no promise ``late`` or left ``open``;
- every delivery the store calls sent was received by its provider, once per key (repeats
  from late answers are counted and reported, not hidden).

It prints the figures and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import func, select

from broadcaster.clock import RealClock
from broadcaster.incidents import service
from broadcaster.store import Database, Delivery, Incident, Promise, Round
from tests.fakes.http import serve
from tests.fakes.twilio import FakeTwilio, new_sid
from tests.fakes.webhook import WebhookReceiver
from tests.reliability.chaos import KINDS, Chaos, ResetProxy

COMPONENTS = ("payments", "web", "mobile-app", "rail")
SEVERITIES = ("critical", "major", "minor")
SECRET = "whsec-soak-0123456789abcdef0123"  # noqa: S105 - the fake receiver's
CLIENT_TIMEOUT = 1.0
SAMPLE_EVERY = 5.0
STUCK_AFTER = 300.0
"""A delivery that took longer than this from its round to its send counts as stuck (the
retry budget here — 12 tries, backoff capped at 10 s — spans under two minutes)."""


@dataclass
class Figures:
    rss_mib: list[tuple[float, float]] = field(default_factory=list)
    declared: int = 0
    updates: int = 0
    resolved: int = 0


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _write_config(folder: Path, hook_url: str, sms_url: str, twilio: FakeTwilio) -> Path:
    config = folder / "config.yaml"
    config.write_text(
        f"""
database: {{url: "sqlite+aiosqlite:///{folder / "store.db"}"}}
schedule:
  sweep_interval: 500ms
  promise_grace: 10s
  round_lease: 30s
  audience_batch: 200
  cadence: {{critical: 20s, major: 30s, minor: 45s}}
delivery:
  channels: [hook, sms]
  workers: 4
  batch_size: 50
  lease: 30s
  poll_interval: 200ms
  max_attempts: 12
  backoff: {{initial: 1s, maximum: 10s, jitter: 0.2}}
channels:
  hook:
    type: webhook
    contact: email
    url: "{hook_url}/hooks/soak"
    secret: "{SECRET}"
    timeout: {CLIENT_TIMEOUT}
  sms:
    type: twilio
    account_sid: "{twilio.account_sid}"
    auth_token: "{twilio.auth_token}"
    messaging_service_sid: "{new_sid("MG")}"
    base_url: "{sms_url}"
    status_callback_url: "http://127.0.0.1:9/sms/status"
    timeout: {CLIENT_TIMEOUT}
messages: {{organisation: Soak Transit}}
http: {{enabled: false}}
log: {{level: INFO, format: json}}
""",
        encoding="utf-8",
    )
    return config


def _write_customers(path: Path, count: int, rng: random.Random) -> None:
    lines = ["id,name,language,timezone,email,phone,components"]
    for n in range(count):
        subscribed = ";".join(sorted(set(rng.sample(COMPONENTS, rng.choice((1, 2))))))
        language = "nl" if n % 3 == 0 else "en"
        lines.append(
            f"S{n:05d},Customer {n},{language},Europe/Amsterdam,"
            f"soak{n:05d}@example.org,+3161{n:07d},{subscribed}"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _cli(config: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "broadcaster", *args, "--config", str(config)],
        check=True,
        capture_output=True,
        timeout=300,
    )


async def _drive(
    database: Database, until: float, every: float, rng: random.Random, figures: Figures
) -> None:
    """Declare, update and resolve incidents until ``until`` (monotonic), then resolve all."""
    clock = RealClock()
    open_: dict[int, tuple[float, float, bool]] = {}  # id -> (resolve at, update at, updated)
    next_declare = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= until:
            break
        if now >= next_declare:
            lifetime = rng.uniform(60, 180)
            incident = await service.declare(
                database,
                clock,
                service.Declaration(
                    title=f"Soak incident {figures.declared + 1}",
                    severity=rng.choice(SEVERITIES),
                    message="Something is wrong; we are looking into it.",
                    components=[rng.choice(COMPONENTS)],
                ),
            )
            figures.declared += 1
            open_[incident.id] = (now + lifetime, now + lifetime / 2, False)
            next_declare = now + every
        for incident_id, (resolve_at, update_at, updated) in list(open_.items()):
            if now >= resolve_at:
                await _resolve(database, clock, incident_id)
                figures.resolved += 1
                del open_[incident_id]
            elif now >= update_at and not updated:
                await service.post_update(
                    database,
                    clock,
                    incident_id,
                    service.UpdateRequest(
                        "Cause found; a fix is being rolled out.", status="identified"
                    ),
                )
                figures.updates += 1
                open_[incident_id] = (resolve_at, update_at, True)
        await asyncio.sleep(0.5)
    for incident_id in open_:
        await _resolve(database, clock, incident_id)
        figures.resolved += 1


async def _resolve(database: Database, clock: RealClock, incident_id: int) -> None:
    await service.resolve(
        database,
        clock,
        incident_id,
        service.UpdateRequest(
            "Resolved.",
            responsibility="We are responsible for this disruption.",
            regret="We are sorry.",
            remedy="Service is back.",
            cause="A faulty deploy.",
            prevention="We added a check.",
        ),
    )


async def _busy(database: Database) -> int:
    """Rounds and deliveries still to do."""
    async with database.session() as session:
        rounds = (
            await session.execute(
                select(func.count())
                .select_from(Round)
                .where(Round.state.in_(("pending", "materialising")))
            )
        ).scalar_one()
        deliveries = (
            await session.execute(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.state.in_(("pending", "sending")))
            )
        ).scalar_one()
    return int(rounds) + int(deliveries)


async def _sample(pid: int, stop: asyncio.Event, figures: Figures, started: float) -> None:
    while not stop.is_set():
        rss = _rss_mib(pid)
        if rss is not None:
            figures.rss_mib.append((time.monotonic() - started, rss))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)


def _median_between(samples: list[tuple[float, float]], start: float, end: float) -> float:
    chosen = [rss for at, rss in samples if start <= at <= end]
    return statistics.median(chosen) if chosen else float("nan")


async def soak(minutes: float, customers: int, every: float, fault_rate: float, seed: int) -> int:
    rng = random.Random(seed)
    receiver, twilio = WebhookReceiver(SECRET), FakeTwilio()
    http_rate, reset_rate = fault_rate * 0.8, fault_rate * 0.2
    hook_chaos = Chaos(receiver.app, rate=http_rate, client_timeout=CLIENT_TIMEOUT, seed=seed)
    sms_chaos = Chaos(twilio.app, rate=http_rate, client_timeout=CLIENT_TIMEOUT, seed=seed + 1)
    figures = Figures()
    with (
        tempfile.TemporaryDirectory(prefix="bc-soak-") as tmp,
        serve(hook_chaos) as hook_url,
        serve(sms_chaos) as sms_url,
        ResetProxy(int(hook_url.rsplit(":", 1)[1]), rate=reset_rate, seed=seed + 2) as hook_proxy,
        ResetProxy(int(sms_url.rsplit(":", 1)[1]), rate=reset_rate, seed=seed + 3) as sms_proxy,
    ):
        folder = Path(tmp)
        config = _write_config(folder, hook_proxy.url, sms_proxy.url, twilio)
        _write_customers(folder / "customers.csv", customers, rng)
        _cli(config, "db", "upgrade")
        _cli(config, "customers", "import", str(folder / "customers.csv"))
        log = (folder / "daemon.log").open("w", encoding="utf-8")
        daemon = subprocess.Popen(  # noqa: ASYNC220 - starts at once; waited for below
            [sys.executable, "-m", "broadcaster", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        database = Database(f"sqlite+aiosqlite:///{folder / 'store.db'}")
        started = time.monotonic()
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(_sample(daemon.pid, stop_sampling, figures, started))
        try:
            await _drive(database, started + minutes * 60, every, rng, figures)
            declared_for = time.monotonic() - started
            deadline = time.monotonic() + 180
            while await _busy(database) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(1)
            drained_after = time.monotonic() - started - declared_for
        finally:
            stop_sampling.set()
            await sampler
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=60)
            log.close()
        report = await _report(database, receiver, twilio)
        await database.dispose()
        daemon_log = (folder / "daemon.log").read_text(encoding="utf-8")

    counts = hook_chaos.counts + sms_chaos.counts
    resets = hook_proxy.resets + sms_proxy.resets
    requests = counts["requests"] + resets
    faults = sum(counts[k] for k in KINDS) + resets
    warm = max(60.0, declared_for / 3)
    baseline = _median_between(figures.rss_mib, warm, warm + 60)
    final = _median_between(figures.rss_mib, declared_for - 60, declared_for)
    growth = final / baseline - 1 if baseline == baseline and final == final else float("nan")
    peak = max((rss for _, rss in figures.rss_mib), default=float("nan"))
    first = figures.rss_mib[0][1] if figures.rss_mib else float("nan")

    print(f"soak: {declared_for / 60:.1f} min of incidents, drained {drained_after:.0f} s later")
    print(
        f"  customers {customers}; incidents declared {figures.declared}, updates "
        f"{figures.updates}, resolved {figures.resolved}"
    )
    print(
        f"  rounds {report['rounds']}; deliveries {report['deliveries']} "
        f"{report['states']}; attempts {report['attempts']}"
    )
    print(
        f"  provider requests {requests}, faults incl. slow answers {faults} "
        f"({faults / max(requests, 1):.1%}): "
        f"{ {k: counts[k] for k in KINDS} } resets {resets}"
    )
    print(
        f"  received once per key: {report['received']} of {report['sent']} sent; lost "
        f"{report['lost']}; repeats dropped by key {report['repeats']}"
    )
    waits: list[float] = report["waits"]
    if waits:
        p50, p99 = waits[len(waits) // 2], waits[min(len(waits) - 1, int(len(waits) * 0.99))]
        print(f"  created -> sent: median {p50:.1f} s, p99 {p99:.1f} s, max {waits[-1]:.1f} s")
    print(f"  promises {report['promises']}")
    print(
        f"  daemon RSS MiB: first {first:.1f}, after warm-up {baseline:.1f}, last minute "
        f"{final:.1f}, peak {peak:.1f}; growth {growth:+.1%} ({len(figures.rss_mib)} samples)"
    )
    errors = daemon_log.count('"level": "error"')
    print(f"  daemon exit code {code}; errors logged {errors}")

    problems = []
    if not growth < 0.10:
        problems.append(f"memory grew {growth:+.1%} after warm-up (limit +10%)")
    if report["stuck"]:
        problems.append(f"{report['stuck']} deliveries stuck (pending or sending)")
    slow = sum(1 for wait in waits if wait > STUCK_AFTER)
    if slow:
        problems.append(f"{slow} deliveries took over {STUCK_AFTER:.0f} s from round to send")
    if report["states"].get("failed"):
        problems.append(f"{report['states']['failed']} deliveries failed")
    if report["promises"].get("late") or report["promises"].get("open"):
        problems.append(f"promises not kept: {report['promises']}")
    if report["lost"]:
        problems.append(f"{report['lost']} sent deliveries never reached their provider")
    if code != 0:
        problems.append(f"the daemon exited {code}")
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print("OK: memory stable, no delivery stuck, every promise kept, nothing lost")
    return 1 if problems else 0


async def _report(
    database: Database, receiver: WebhookReceiver, twilio: FakeTwilio
) -> dict[str, Any]:
    async with database.session() as session:
        states: dict[str, int] = {
            str(state): int(count)
            for state, count in await session.execute(
                select(Delivery.state, func.count()).group_by(Delivery.state)
            )
        }
        promises: dict[str, int] = {
            str(state): int(count)
            for state, count in await session.execute(
                select(Promise.state, func.count()).group_by(Promise.state)
            )
        }
        rounds = (await session.execute(select(func.count()).select_from(Round))).scalar_one()
        attempts = (await session.execute(select(func.sum(Delivery.attempts)))).scalar_one()
        sent_rows = (
            await session.execute(
                select(Delivery.id, Delivery.channel).where(Delivery.state == "sent")
            )
        ).all()
        incidents = (await session.execute(select(func.count()).select_from(Incident))).scalar_one()
        waits = sorted(
            (sent_at - created_at).total_seconds()
            for created_at, sent_at in await session.execute(
                select(Delivery.created_at, Delivery.sent_at).where(Delivery.sent_at.is_not(None))
            )
            if sent_at is not None
        )
    received: Counter[str] = Counter()
    for hook in receiver.accepted:
        received[hook.headers["idempotency-key"]] += 1
    repeats = receiver.duplicates
    sms_keys: Counter[str] = Counter()
    for request in twilio.received():
        callback = urlsplit(request.form.get("StatusCallback", ""))
        key = parse_qs(callback.query).get("delivery", [""])[0]
        sms_keys[key] += 1
    repeats += sum(n - 1 for n in sms_keys.values())
    keys = set(received) | set(sms_keys)
    sent = {f"delivery-{row_id}" for row_id, _ in sent_rows}
    return {
        "incidents": incidents,
        "rounds": rounds,
        "deliveries": sum(states.values()),
        "states": states,
        "attempts": attempts,
        "promises": promises,
        "stuck": states.get("pending", 0) + states.get("sending", 0),
        "sent": len(sent),
        "received": len(sent & keys),
        "lost": len(sent - keys),
        "repeats": repeats,
        "waits": waits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between incidents")
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=9)
    args = parser.parse_args()
    sys.exit(
        asyncio.run(soak(args.minutes, args.customers, args.every, args.fault_rate, args.seed))
    )


if __name__ == "__main__":
    main()


__all__ = ["Figures", "main", "soak"]
