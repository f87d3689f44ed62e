"""The daemon: APScheduler wake-ups, one round loop and N dispatch workers in one event loop
(and, with ``delivery.processes`` above 1, more dispatch workers in child processes).

APScheduler (3.11, asyncio scheduler, in-memory job store) only sets events: a precise
``date`` job for the next due round and an ``interval`` safety sweep that notices rounds
written by the CLI or another process, and the intervals of the follow-up sweep and the
rules file check. The due times themselves live in the store. Every job is the coroutine
:func:`wake`, which APScheduler runs on the event loop (a plain function would run in a
worker thread, where an asyncio event must not be set); the work each wake-up asks for
runs in the daemon's own tasks, which finish what is in flight at shutdown.

Shutdown (SIGTERM/SIGINT): stop claiming, let in-flight sends finish and be recorded,
release the round and delivery leases, close channels, exit 0. After a SIGKILL, the next
start claims what the dead process held once its leases expire.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import select

from broadcaster.clock import Clock, RealClock
from broadcaster.config.durations import format_duration
from broadcaster.config.settings import Settings
from broadcaster.dispatch.channels import build_channels
from broadcaster.dispatch.loop import ERROR_PAUSE, dispatch_worker, wait_for, wind_down
from broadcaster.dispatch.processes import DispatchProcesses
from broadcaster.engine import Engine
from broadcaster.eventloop import loop_name
from broadcaster.followups.service import OPEN_STATES
from broadcaster.heap import settle
from broadcaster.intake.watch import FeedWatcher, start_watchers
from broadcaster.logs import Redaction, secret_values, set_redaction
from broadcaster.schedule.leader import Leadership
from broadcaster.store import Database, Followup
from broadcaster.web import metrics
from broadcaster.web.api import idempotency
from broadcaster.web.app import StartupError, bind, create_app, make_server
from broadcaster.web.state import WebState
from channels.base import Channel
from rules import RulesError

log = logging.getLogger("broadcaster.daemon")


FIRST_PURGE_AFTER = timedelta(minutes=1)
"""How long after start a daemon first purges (``retention``), at most."""

STUCK_ROUND_PAUSE = timedelta(seconds=1)
"""How soon the leader looks again at a round that is due but could not be taken (locked by
a transaction of a daemon whose host went away, until the server drops its session), rather
than at once, over and over."""


async def wake(event: asyncio.Event) -> None:
    """A scheduler job: set ``event``, on the event loop.

    APScheduler's asyncio executor runs a coroutine function as a task on the loop and a
    plain one in the loop's thread pool, where ``event.set()`` would touch the loop from
    another thread (neither asyncio's loop nor uvloop's is thread-safe), and where a job
    still pending at shutdown is cancelled and logged as an error."""
    event.set()


CAPACITY_REFRESH = 10.0
"""Seconds between two reads of the capacity warnings from the store (for ``/healthz``)."""

SKEW_SHARE_OF_LEASE = 10
"""A clock further than a tenth of the lease from the database's is warned of at start."""


async def warn_of_clock_skew(database: Database, clock: Clock, lease: timedelta) -> float | None:
    """Log a warning when this host's clock is far from the database server's; returns the
    offset in seconds (None on SQLite, or when the server cannot be asked).

    Leases are written and compared with each daemon's own clock: a daemon whose clock
    runs ahead of the one holding a batch sees its leases expire early (with the default
    30 s lease, renewed every 10 s, from 20 s ahead) and sends the batch again. Daemons
    on several hosts need their clocks kept together (NTP); the database server's is the
    one reference they all can see."""
    try:
        offset = await database.clock_offset(clock.now)
    except Exception as exc:  # the store may be down at start: leadership retries later
        log.warning("cannot compare this host's clock with the database's: %r", exc)
        return None
    if offset is not None and abs(offset) > lease.total_seconds() / SKEW_SHARE_OF_LEASE:
        log.warning(
            "this host's clock is %.1f s %s the database server's: daemons on hosts whose "
            "clocks differ by more than two thirds of the lease send batches twice; keep "
            "every host on NTP",
            abs(offset),
            "behind" if offset > 0 else "ahead of",
            extra={"clock_offset_s": round(offset, 3), "lease_s": lease.total_seconds()},
        )
    return offset


async def warn_of_unknown_owners(database: Database, staff: set[str]) -> list[str]:
    """Log a warning when open follow-ups are owned by staff the configuration no longer
    names (someone who left, a renamed id): their reminders and escalations cannot reach
    anyone, and the incident cannot be closed until they are done or waived. Returns the
    owners."""
    try:
        async with database.session() as session:
            owners = sorted(
                (
                    await session.execute(
                        select(Followup.owner)
                        .where(Followup.state.in_(OPEN_STATES), Followup.owner.not_in(staff))
                        .distinct()
                    )
                ).scalars()
            )
    except Exception as exc:  # the store may be down at start: nothing to say then
        log.warning("cannot look for follow-ups of unknown staff: %r", exc)
        return []
    if owners:
        log.warning(
            "open follow-ups are owned by staff no longer in the configuration (%s): "
            "an admin can claim them for someone else (POST /api/v1/followups/ID/claim with "
            '{"staff": ...}), or add those people back under staff.people',
            ", ".join(owners),
            extra={"owners": owners},
        )
    return owners


def leases_past_grace(settings: Settings) -> list[str]:
    """What would make a round a daemon dies in reach its customers after its promise's
    grace: a lease (round or delivery) as long as ``schedule.promise_grace``. The dead
    daemon's round and batch wait out their leases before another daemon takes them
    over, and the batch must still be sent after that."""
    grace = settings.schedule.promise_grace
    found = []
    for name, lease in (
        ("schedule.round_lease", settings.schedule.round_lease),
        ("delivery.lease", settings.delivery.lease),
    ):
        if lease >= grace:
            found.append(
                f"{name} ({format_duration(lease)}) is not shorter than schedule.promise_grace "
                f"({format_duration(grace)}): when a daemon dies mid-round, the work it held "
                "waits out the lease and its customers hear after the promised time; keep "
                "leases under the grace by the time a batch takes to send (the defaults: 30s "
                "against 1m)"
            )
    return found


async def each_wake(
    due: asyncio.Event, stop: asyncio.Event, work: Callable[[], Awaitable[object]], what: str
) -> None:
    """Run ``work`` each time ``due`` is set, one run at a time, until ``stop``; a run in
    progress when ``stop`` is set finishes. A failing run is logged, and the next wake-up
    runs it again."""
    while True:
        await wait_for(due, stop, None)
        if stop.is_set():
            return
        due.clear()
        try:
            await work()
        except Exception:
            log.exception("%s failed; trying again at the next wake-up", what)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        channels: Mapping[str, Channel] | None = None,
    ) -> None:
        self.clock = clock or RealClock()
        self._channels = channels
        if settings.delivery.processes > 1 and (
            channels is not None or not isinstance(self.clock, RealClock)
        ):
            # Extra processes build their channels from the settings and read the real
            # clock: a daemon given its own (tests, benchmarks) dispatches in its own
            # process, with the whole of each rate limit.
            log.warning(
                "delivery.processes ignored: this daemon was given its own channels or clock",
                extra={"processes": settings.delivery.processes},
            )
            delivery = settings.delivery.model_copy(update={"processes": 1})
            settings = settings.model_copy(update={"delivery": delivery})
        self.settings = settings
        self.ready = asyncio.Event()
        self.http_port: int | None = None
        self._engine: Engine | None = None
        self._reloads: set[asyncio.Task[bool]] = set()
        self.leadership: Leadership

    async def run(self, stop: asyncio.Event) -> None:
        redact = self.settings.log.redact
        set_redaction(
            Redaction(secrets=redact.secrets, phones=redact.phones, emails=redact.emails),
            secret_values(self.settings),
        )
        database = Database.configured(self.settings.database)
        channels = self._channels or build_channels(self.settings, self.clock)
        try:
            engine = await Engine.create(self.settings, database, self.clock, channels)
        except RulesError as exc:
            await database.dispose()
            raise StartupError(
                "the rules file cannot be used:\n  " + "\n  ".join(exc.problems)
            ) from exc
        self._engine = engine
        self.leadership = Leadership(database, engine.owner)
        for problem in leases_past_grace(self.settings):
            log.warning(problem)
        if isinstance(self.clock, RealClock):
            await warn_of_clock_skew(database, self.clock, self.settings.delivery.lease)
        await warn_of_unknown_owners(database, set(self.settings.staff.people))
        web = WebState(
            self.settings,
            database,
            self.clock,
            engine.dispatcher.link_secret,
            rules=engine.rules,
            capacity=lambda: engine.capacity_warnings,
            escalation=engine.escalation,
            directory=engine.directory,
        )
        server = None
        listener = None
        if self.settings.http.enabled:
            http = self.settings.http
            try:
                listener = bind(http.host, http.port)
            except StartupError:
                await engine.aclose()
                await database.dispose()
                raise
            server = make_server(create_app(web), http.host, http.port)
            self.http_port = listener.getsockname()[1]
        rounds_due = asyncio.Event()
        web.wake = rounds_due.set  # a declaration through the API or console
        work_ready = asyncio.Event()
        followups_due = asyncio.Event()
        rules_due = asyncio.Event()
        scheduler = AsyncIOScheduler(timezone=UTC)
        purge_due = asyncio.Event()
        retention = self.settings.retention
        jobs: list[tuple[str, asyncio.Event, timedelta, dict[str, datetime]]] = [
            ("sweep", rounds_due, self.settings.schedule.sweep_interval, {}),
            ("followup-sweep", followups_due, self.settings.rules.followup_sweep, {}),
        ]
        if engine.rules.path is not None:
            jobs.append(("rules-reload", rules_due, self.settings.rules.reload_interval, {}))
        if retention.messages is not None:
            # The first purge a minute after start (or sooner, with a shorter interval),
            # once leadership is settled, not an interval later: a daemon restarted more
            # often than the interval would never purge.
            first = datetime.now(UTC) + min(retention.interval, FIRST_PURGE_AFTER)
            jobs.append(("purge", purge_due, retention.interval, {"next_run_time": first}))
        for job, event, every, when in jobs:
            scheduler.add_job(
                wake,
                "interval",
                args=[event],
                seconds=every.total_seconds(),
                id=job,
                coalesce=True,
                max_instances=1,
                **when,
            )
        # Everything kept is built and nothing is in flight yet: freeze it out of the
        # collector's way (broadcaster/heap.py).
        frozen = settle()
        scheduler.start()
        web.scheduler_running = True
        log.info(
            "daemon started",
            extra={
                "owner": engine.owner,
                "channels": list(channels),
                "store": database.dialect,
                "event_loop": loop_name(),
            },
        )
        web.leading = lambda: self.leadership.leading
        round_loop = asyncio.create_task(
            self._round_loop(engine, scheduler, rounds_due, work_ready, stop, followups_due)
        )

        def round_loop_ended(task: asyncio.Task[None]) -> None:
            # It never ends but at a stop: if it did, no round would go out, and /healthz
            # must say so (it said "running" while nothing ran).
            web.scheduler_running = False
            if not stop.is_set() and not task.cancelled() and task.exception() is not None:
                log.error("the round loop ended", exc_info=task.exception())

        round_loop.add_done_callback(round_loop_ended)
        tasks = [
            round_loop,
            asyncio.create_task(
                each_wake(followups_due, stop, self._sweep_followups, "follow-up sweep")
            ),
        ]
        if database.dialect == "postgresql":
            # The lock can go while the round loop is in the middle of a pass (a large
            # round): what /healthz, the metrics and the leader-only work read must follow
            # within seconds, not at the next pass.
            tasks.append(asyncio.create_task(self.leadership.watch(stop)))
        if engine.rules.path is not None:
            # Reading and checking the file stays off the loop, as before.
            reload = engine.rules.reload_if_changed
            tasks.append(
                asyncio.create_task(
                    each_wake(rules_due, stop, lambda: asyncio.to_thread(reload), "rules check")
                )
            )
        if retention.messages is not None:
            tasks.append(
                asyncio.create_task(
                    each_wake(purge_due, stop, functools.partial(self._purge, stop), "purge")
                )
            )
        delivery = self.settings.delivery
        tasks += [
            asyncio.create_task(
                dispatch_worker(engine.dispatcher, work_ready, stop, index, delivery.poll_interval)
            )
            for index in range(delivery.workers)
        ]
        processes = self._extra_processes()
        try:
            if processes is not None:
                await processes.start()
                tasks.append(asyncio.create_task(processes.supervise(stop)))
            watchers, feed_tasks = start_watchers(
                self.settings.feeds, database, self.clock, stop, escalation=engine.escalation
            )
            self.feed_watchers: list[FeedWatcher] = watchers
            web.feeds = watchers
            tasks += feed_tasks
            if server is not None and listener is not None:
                tasks.append(asyncio.create_task(server.serve(sockets=[listener])))
                log.info(
                    "http listening",
                    extra={"address": f"{self.settings.http.host}:{self.http_port}"},
                )
            log.info("daemon ready", extra={"frozen_objects": frozen})
            self.ready.set()
            await stop.wait()
            log.info("stopping: finishing what is in flight")
        finally:
            stop.set()
            if server is not None:
                server.should_exit = True
            if processes is not None:
                # The extra dispatch processes are told to stop now, and waited for beside
                # this process's own workers: until told, they would go on claiming batches.
                tasks.append(asyncio.create_task(processes.stop()))
            await asyncio.gather(*tasks, return_exceptions=True)
            await metrics.stop_counting(web)
            scheduler.shutdown(wait=False)
            web.scheduler_running = False
            await self.leadership.release()
            await wind_down(engine, database)
            log.info("daemon stopped", extra={"stats": vars(engine.dispatcher.stats)})

    def _extra_processes(self) -> DispatchProcesses | None:
        """The extra dispatch processes ``delivery.processes`` asks for, if any."""
        extra = self.settings.delivery.processes - 1
        return DispatchProcesses(self.settings, extra) if extra >= 1 else None

    def reload_rules(self) -> None:
        """SIGHUP: reload the rules now (a bad file keeps the previous rules), in a worker
        thread: reading and checking a large file, or waiting for the periodic check's
        reload to finish, must not stall the loop's rounds and sends."""
        if self._engine is not None:
            task = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self._engine.rules.reload)
            )
            self._reloads.add(task)  # kept until done: the loop holds tasks weakly
            task.add_done_callback(self._reloads.discard)

    async def _sweep_followups(self) -> None:
        if self._engine is None or not self.leadership.leading:
            return
        # A failure (the store may be down) is logged by each_wake; the next sweep tries again.
        await self._engine.sweep_followups()
        await idempotency.prune(self._engine.database, self._engine.clock.now())

    async def _purge(self, stop: asyncio.Event) -> None:
        """The leader purges the messages of incidents closed ``retention.messages`` ago,
        batch by batch while it is running and leading."""
        keep = self.settings.retention.messages
        if self._engine is None or keep is None or not self.leadership.leading:
            return
        await self._engine.purge_messages(
            keep, lambda: not stop.is_set() and self.leadership.leading
        )

    async def _round_loop(
        self,
        engine: Engine,
        scheduler: AsyncIOScheduler,
        rounds_due: asyncio.Event,
        work_ready: asyncio.Event,
        stop: asyncio.Event,
        followups_due: asyncio.Event,
    ) -> None:
        failures = 0
        capacity_read = -CAPACITY_REFRESH
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            rounds_due.clear()
            due = None
            completed = 0
            try:  # leadership too: whatever fails, this loop must not end (rounds would stop)
                if loop.time() - capacity_read >= CAPACITY_REFRESH:
                    await engine.refresh_capacity()  # what /healthz shows, on every daemon
                    capacity_read = loop.time()
                leading = await self.leadership.ensure()
                if leading:
                    # This daemon's workers start on each batch of a round's deliveries as
                    # soon as it is committed, not when the whole round is written (other
                    # processes find it at their poll). A daemon that stops, or no longer
                    # leads (Leadership.watch), claims no further round, and gives back the
                    # one it is writing after the batch in hand (each batch is fenced by the
                    # round's lease): the new leader goes on from there at once.
                    completed = await engine.process_due_rounds(
                        lambda: stop.is_set() or not self.leadership.leading,
                        work_ready.set,
                        followups_due.set,
                    )
                    if completed:
                        work_ready.set()
                    leading = self.leadership.leading
                    if leading:
                        due = await engine.next_wakeup()
            except Exception as exc:  # the store may be down; keep the daemon alive and retry
                failures += 1
                if failures == 1:
                    log.exception("round processing failed; retrying")
                else:  # one traceback per outage, not one per attempt
                    log.warning(
                        "round processing still failing; retrying",
                        extra={"failures": failures, "reason": repr(exc)},
                    )
                await wait_for(asyncio.Event(), stop, ERROR_PAUSE.total_seconds())
                continue
            if failures:
                log.info("round processing recovered", extra={"failures": failures})
                failures = 0
            if not leading:
                # A follower: dispatch only; try again at the next sweep.
                await wait_for(rounds_due, stop, None)
                continue
            if due is not None:
                now = self.clock.now()
                if not completed and due <= now:
                    due = now + STUCK_ROUND_PAUSE  # due, yet none could be taken: no spin
                scheduler.add_job(
                    wake,
                    "date",
                    args=[rounds_due],
                    run_date=max(due, now),
                    id="next-round",
                    replace_existing=True,
                    misfire_grace_time=None,
                )
            await wait_for(rounds_due, stop, None)
