"""Fan-out: one round to N customers, from round start to every delivery recorded as sent.

For each channel (push = the webhook channel, email = SMTP, sms = Twilio) and each store
(SQLite, PostgreSQL), N customers are written to a fresh store, the daemon is started, an
incident is declared for all of them, and the clock runs from the round's ``started_at``
(the daemon's claim) until the dispatcher has recorded N deliveries as sent. Beside it, in
the same run: the raw client stack replaying the same request N times to the same sink
(no store), raw aiohttp for the HTTP channels, and Apprise (``json://``) for the push sink.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import httpx
from sqlalchemy import func, select

from bench.baselines import (
    Timed,
    apprise_json,
    raw_aiohttp,
    raw_httpx,
    raw_smtp,
    raw_smtp_pipelined,
    raw_twilio_sdk,
)
from bench.pgbouncer import Bouncer
from bench.pipeline import (
    COMPONENT,
    CONTACT_KIND,
    bench_settings,
    channel_specs,
    running_daemon,
)
from bench.procfs import (
    cpu_seconds,
    postmaster_pid,
    server_cpu_seconds,
    thread_cpu_seconds,
    threads_per_delivery_us,
)
from bench.report import Row
from bench.sinks import Sinks
from bench.store import add_customers, store_url
from broadcaster.clock import RealClock
from broadcaster.incidents import service
from broadcaster.store import Database, Delivery, Round
from channels.email import EmailSettings
from channels.http_common import pooled_client
from channels.twilio_sms import HttpxTwilioClient
from channels.webhook import WebhookSettings

T = TypeVar("T")

CHANNELS = ("push", "email", "sms")
STACK = "channel-client"
"""The channels' own client stack, replaying without a store: the
:class:`~channels.http_common.PostClient` of the webhook and Twilio channels (sending
straight through pyreqwest's pool); the email channel's pipelined SMTP transactions."""
SDK = "twilio-sdk"
"""The Twilio SDK on its own async client (aiohttp), for comparison with the SMS channel."""
SINK_OF = {"push": "hook", "email": "smtp", "sms": "twilio"}
MESSAGE = (
    "Trains on line 1 are not running between Central and Harbour because of a signal "
    "failure. Replacement buses run every 10 minutes from the station forecourt."
)


async def pipeline_run(
    sinks: Sinks,
    backend: str,
    channel: str,
    n: int,
    workdir: Path,
    processes: int = 1,
    pgbouncer: bool = False,
) -> dict[str, Any]:
    """One round of ``n`` deliveries on ``channel`` through the daemon, on ``backend``, with
    ``processes`` dispatch processes (``delivery.processes``). The CPU per delivery is this
    process's (``cpu_scope`` says what that covers); on a PostgreSQL server on this host the
    server's CPU for the same span is read too. With ``pgbouncer`` (PostgreSQL only) the
    daemon's store is a PgBouncer in transaction mode in front of the database
    (``database.pooler: transaction``; :mod:`bench.pgbouncer`), whose CPU is read too."""
    specs = channel_specs(
        hook_url=sinks.hook_url,
        smtp_port=sinks.smtp_port,
        twilio_url=sinks.twilio_url,
        twilio_sid=sinks.twilio_sid,
        twilio_token=sinks.twilio_token,
    )
    bouncer: Bouncer | None = None
    async with store_url(backend, workdir) as url:
        database = Database(url)
        try:
            await add_customers(
                database,
                n,
                components=[COMPONENT],
                kinds=[CONTACT_KIND[channel]],
                hook_url=sinks.hook_url,
            )
            pooled: dict[str, Any] = {}
            if pgbouncer and backend == "postgresql":
                # As many server sessions as the daemon's pool may open (5 + 10 overflow).
                bouncer = Bouncer(url, sessions=15).start()
                pooled = {"url": bouncer.url, "pooler": "transaction", "direct_url": url}
            settings = bench_settings(
                url,
                {channel: specs[channel]},
                [channel],
                sweep="100ms",
                delivery={"processes": processes},
                database=pooled,
            )
            await sinks.reset()
            postmaster = (
                await postmaster_pid(database) if database.dialect == "postgresql" else None
            )
            async with running_daemon(settings) as running:
                clock = RealClock()
                server_before = server_cpu_seconds(postmaster)
                bouncer_before = cpu_seconds(bouncer.pid if bouncer else None)
                threads_before = thread_cpu_seconds()
                cpu_before = time.process_time()
                declared = clock.now()
                await service.declare(
                    database,
                    clock,
                    service.Declaration(
                        "Line 1: no trains", "major", MESSAGE, components=[COMPONENT]
                    ),
                )
                deadline = time.monotonic() + 120 + n / 50
                if processes == 1:
                    # Polls a counter of the dispatcher: there is no event to wait on.
                    while running.sent < n and time.monotonic() < deadline:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
                else:  # the other processes' counters are theirs: ask the store
                    while await _sent(database) < n and time.monotonic() < deadline:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                finished = datetime.now(UTC)
                cpu = time.process_time() - cpu_before
                threads_after = thread_cpu_seconds()
                server_after = server_cpu_seconds(postmaster)
                bouncer_after = cpu_seconds(bouncer.pid if bouncer else None)
                stats = vars(running.engine.dispatcher.stats).copy()
            async with database.session() as session:
                started = (
                    await session.execute(select(Round.started_at).where(Round.number == 1))
                ).scalar_one()
                states = dict(
                    (
                        await session.execute(
                            select(Delivery.state, func.count()).group_by(Delivery.state)
                        )
                    ).all()
                )
        finally:
            await database.dispose()
            if bouncer is not None:
                bouncer.remove()
    if started is None:
        raise RuntimeError("the round was never started")
    received = (await sinks.stats()).get(SINK_OF[channel], 0)
    seconds = (finished - started).total_seconds()
    sent = int(states.get("sent", 0))
    server = None if server_before is None or server_after is None else server_after - server_before
    pooler = (
        None if bouncer_before is None or bouncer_after is None else bouncer_after - bouncer_before
    )
    return {
        "backend": backend,
        "channel": channel,
        "customers": n,
        "sent": sent,
        "states": states,
        "received_by_sink": received,
        "claim_delay_seconds": round((started - declared).total_seconds(), 3),
        "seconds": round(seconds, 3),
        "rate": round(sent / seconds, 1) if seconds > 0 else 0.0,
        "processes": processes,
        "pgbouncer": bouncer is not None,
        # This process's CPU from declaration to the last outcome, per delivery sent: the
        # daemon's (its dispatch processes' not counted when there are several).
        "cpu_per_delivery_us": round(cpu / sent * 1e6, 1) if sent and processes == 1 else None,
        "cpu_scope": _cpu_scope(backend, processes),
        # The same, per thread of this process (the event loop's, the HTTP client's,
        # SQLite's): where a delivery's CPU goes (/proc, at the clock tick's resolution).
        "cpu_per_delivery_us_by_thread": (
            threads_per_delivery_us(threads_before, threads_after, sent) if processes == 1 else {}
        ),
        # The whole server's (every connection's, other clients' too), same span.
        "postgresql_cpu_seconds": None if server is None else round(server, 2),
        "postgresql_cpu_per_delivery_us": (
            round(server / sent * 1e6, 1) if server is not None and sent else None
        ),
        # PgBouncer's process (``--pgbouncer``), same span.
        "pgbouncer_cpu_per_delivery_us": (
            round(pooler / sent * 1e6, 1) if pooler is not None and sent else None
        ),
        "dispatch_stats": {k: v for k, v in stats.items() if k != "by_channel"},
    }


def _cpu_scope(backend: str, processes: int) -> str:
    """What ``cpu_per_delivery_us`` covers."""
    if processes > 1:
        return "not measured: the dispatch processes' CPU is not this process's"
    if backend == "sqlite":
        return "this process, SQLite's work included"
    return "this process only, not the PostgreSQL server's"


def _cpu_note(result: dict[str, Any]) -> str:
    """The CPU per delivery and what it covers, for a row's note ("" when not measured)."""
    cpu = result.get("cpu_per_delivery_us")
    if not cpu:
        return ""
    note = f"{cpu:,.0f} µs CPU per delivery ({result['cpu_scope']})"
    server = result.get("postgresql_cpu_per_delivery_us")
    if server is not None:
        note += f", PostgreSQL server {server:,.0f} µs per delivery"
    pooler = result.get("pgbouncer_cpu_per_delivery_us")
    if pooler is not None:
        note += f", PgBouncer {pooler:,.0f} µs per delivery"
    return note


async def _sent(database: Database) -> int:
    async with database.session() as session:
        query = select(func.count()).select_from(Delivery).where(Delivery.state == "sent")
        return int((await session.execute(query)).scalar_one())


PLAIN_HTTPX_UP_TO = 10_000
"""Plain httpx (its own pool) is measured up to this many messages: at a few hundred per
second, 100,000 would take minutes and say nothing new."""


def channel_connections(channel: str) -> int:
    """The connection pool of the HTTP channel's own client: the webhook channel's
    ``max_connections`` default; the Twilio channel's pool, which it sets in its client
    (``HttpxTwilioClient``; not a setting), read from one (no connection is opened)."""
    if channel == "push":
        default = WebhookSettings.model_fields["max_connections"].default
        return int(default)
    direct = HttpxTwilioClient()._client._direct
    if direct is None:  # cannot happen: no transport was given
        raise RuntimeError("the Twilio client has no pooled sender")
    return direct._max_connections


async def raw_runs(sinks: Sinks, channel: str, n: int) -> dict[str, Timed]:
    """The baselines for ``channel``, replaying what the pipeline last sent."""
    sample = await sinks.sample(SINK_OF[channel])
    if channel == "email":
        # As many connections as the email channel's pool (its default: the bench's
        # channel leaves pool_size alone).
        pool = EmailSettings().pool_size
        return {
            "aiosmtplib": await raw_smtp(sinks.smtp_port, sample, n, connections=pool),
            STACK: await raw_smtp_pipelined(sinks.smtp_port, sample, n, connections=pool),
        }
    base = f"http://127.0.0.1:{sinks.hook_port}" if channel == "push" else sinks.twilio_url
    url = base + sample["path"]
    # As many connections as the channel's own client (PostClient) has, the same client stack.
    connections = channel_connections(channel)
    runs = {
        STACK: await raw_httpx(url, sample, n, client=pooled_client(10.0, connections)),
        "aiohttp": await raw_aiohttp(url, sample, n, connections=connections),
    }
    if n <= PLAIN_HTTPX_UP_TO:
        plain = httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=connections))
        runs["httpx"] = await raw_httpx(url, sample, n, client=plain)
        if channel == "sms":
            form = dict(parse_qsl(sample["body"].decode("utf-8")))
            runs[SDK] = await raw_twilio_sdk(
                sinks.twilio_url, sinks.twilio_sid, sinks.twilio_token, form, n
            )
    return runs


async def run(
    workdir: Path,
    *,
    sizes: list[int],
    backends: list[str],
    channels: list[str] | None = None,
    apprise_count: int,
    processes: list[int] | None = None,
    pipeline_only: bool = False,
    repeat: int = 1,
    pgbouncer: bool = False,
) -> dict[str, Any]:
    """The scenario; with ``pipeline_only`` the project's rounds alone, without the baselines
    (for comparing two builds or two event loops in alternating runs: no ratio, no target).

    With ``repeat`` above 1, each figure is the median of that many rounds, the pipeline's
    and the baselines' taken in turn (pipeline, baselines, pipeline, ...), so that a slow
    spell of the host falls on both sides; the issue's reference figures are medians of 3.
    The pipeline's row is its median round (the lower middle one of an even count: a round
    that ran, with its own CPU figures); every round is kept in the JSON. With
    ``pgbouncer`` the daemon reaches PostgreSQL through a PgBouncer in transaction mode
    (see :func:`pipeline_run`)."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, not {repeat}")
    results: list[dict[str, Any]] = []
    rows: list[Row] = []
    baselines: dict[str, Any] = {}
    notes: list[str] = []
    apprised: list[Timed] = []
    with Sinks() as sinks:
        for n in sizes:
            for channel in channels or list(CHANNELS):
                raws: dict[str, list[Timed]] = {}
                runs: list[dict[str, Any]] = []
                for turn in range(repeat):
                    for backend in backends:
                        for count in processes or [1]:
                            result = await pipeline_run(
                                sinks, backend, channel, n, workdir, count, pgbouncer
                            )
                            runs.append(result | {"turn": turn + 1})
                        if pipeline_only:
                            continue
                        for name, timed in (await raw_runs(sinks, channel, n)).items():
                            raws.setdefault(name, []).append(timed)
                    if pipeline_only or channel != "push" or not apprise_count:
                        continue
                    # Apprise once a turn, the first time the push channel runs (the
                    # pipeline's last request is its sample).
                    if len(apprised) < repeat:
                        sample = await sinks.sample("hook")
                        document = json.loads(sample["body"])
                        apprised.append(
                            await asyncio.to_thread(
                                apprise_json,
                                f"json://127.0.0.1:{sinks.hook_port}/hook",
                                document["subject"],
                                document["text"],
                                apprise_count,
                            )
                        )
                results += runs
                if pipeline_only:
                    rows += [_pipeline_row(median) for median in _medians(runs)]
                    continue
                raw_rates = {k: statistics.median(t.rate for t in v) for k, v in raws.items()}
                notes += [
                    f"{channel} {n:,} raw {name}: {t.errors} of {t.count} requests failed "
                    f"(first: {t.first_error})"
                    for name, timed in raws.items()
                    for t in timed
                    if t.errors
                ]
                baselines[f"{channel}/{n}"] = {k: [t.as_dict() for t in v] for k, v in raws.items()}
                same = "aiosmtplib" if channel == "email" else STACK
                apprise_rate = statistics.median(t.rate for t in apprised) if apprised else None
                for result in runs:
                    result["raw_rates"] = raw_rates
                for median in _medians(runs):
                    rows.extend(_rows(median, raw_rates[same], same, raw_rates, apprise_rate))
    if apprised:  # the median run, and every run
        middle = _middle(apprised, lambda timed: timed.rate)
        baselines["apprise_json"] = middle.as_dict() | {"runs": [t.as_dict() for t in apprised]}
    return {
        "runs": results,
        "baselines": baselines,
        "rows": [r.as_dict() for r in rows],
        "notes": notes,
        "repeat": repeat,
    }


def _medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per store and process count, in the order they first ran: the median round of
    ``runs`` (the lower middle one of an even count), with every round's rate beside it
    (``rates``) and ``sent`` the fewest any round sent, so that a round left unfinished
    marks the figure incomplete. One round is returned as it is."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for result in runs:
        groups.setdefault((result["backend"], result["processes"]), []).append(result)
    medians = []
    for group in groups.values():
        if len(group) == 1:
            medians.append(group[0])
            continue
        middle = _middle(group, lambda result: result["rate"])
        medians.append(
            middle
            | {
                "rates": [result["rate"] for result in group],
                "sent": min(result["sent"] for result in group),
            }
        )
    return medians


def _middle(items: list[T], rate: Callable[[T], float]) -> T:
    """The median of ``items`` by ``rate``: the lower middle one of an even count, so that
    it is one that ran."""
    return sorted(items, key=rate)[(len(items) - 1) // 2]


def _spread(result: dict[str, Any]) -> str:
    """The spread of a figure of several rounds ("median of 3 rounds (a-b/s)"), else ""."""
    rates = result.get("rates")
    if not rates:
        return ""
    return f"median of {len(rates)} rounds ({min(rates):,.0f}-{max(rates):,.0f}/s)"


def _label(result: dict[str, Any]) -> str:
    label = f"{result['channel']} {result['customers']:,} {result['backend']}"
    if result.get("processes", 1) > 1:
        label += f" {result['processes']}p"
    if result.get("pgbouncer"):
        label += " via pgbouncer"
    return label


def _pipeline_row(result: dict[str, Any]) -> Row:
    label = _label(result)
    note = "; ".join(part for part in ("pipeline only", _spread(result), _cpu_note(result)) if part)
    return Row(f"fan-out {label}", float(result["rate"]), "msg/s", note=note)


def _rows(
    result: dict[str, Any],
    same_rate: float,
    same: str,
    raw_rates: dict[str, float],
    apprise_rate: float | None,
) -> list[Row]:
    label = _label(result)
    rate = float(result["rate"])
    complete = result["sent"] == result["customers"]
    note = "" if complete else f"only {result['sent']:,} of {result['customers']:,} sent"

    def against(baseline: str, base: float, target: float | None, **extra: Any) -> Row:
        """The pipeline's rate beside ``base`` (the rate of ``baseline``); without a
        target, for comparison only."""
        if target is None:
            extra.setdefault("note", note or "for comparison: no target")
        else:
            extra.setdefault("note", note)
            extra["complete"] = complete
        return Row(
            f"fan-out {label}",
            rate,
            "msg/s",
            baseline=f"{baseline} {base:,.0f}/s",
            ratio=rate / base if base else None,
            target=target,
            **extra,
        )

    rows = [
        against(
            f"raw {same}",
            same_rate,
            0.8,
            note="; ".join(part for part in (note, _spread(result), _cpu_note(result)) if part),
        )
    ]
    if result["channel"] == "email" and STACK in raw_rates:
        # The raw client is aiosmtplib, which sends one command at a time; the
        # channel pipelines where the relay offers it. Its own stack without a store is
        # the measure of the pipeline's overhead alone.
        rows.append(against("raw channel SMTP, pipelined", raw_rates[STACK], 0.8))
    if "httpx" in raw_rates:
        rows.append(against("raw httpx, own pool", raw_rates["httpx"], None))
    if SDK in raw_rates:
        rows.append(against("Twilio SDK, own client", raw_rates[SDK], None))
    if result["channel"] == "push":
        rows.append(against("raw aiohttp", raw_rates["aiohttp"], 0.5))
        if apprise_rate:
            rows.append(against("Apprise json://", apprise_rate, 5.0))
    return rows
