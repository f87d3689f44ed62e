"""Extra dispatch processes: ``delivery.processes - 1`` children that claim, send and record.

Dispatch is CPU-bound in Python (rendering, signing, HTTP, the store's statements), so one
process uses one core however many workers it runs. With ``delivery.processes`` above 1
the daemon starts that many more processes of ``python -m broadcaster.dispatch.processes``
beside its own workers; each is a dispatcher only (no round loop, HTTP server or feeds),
with its own lease owner, claiming from the same store as every other: deliveries are
claimed under leases (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, SQLite's write lock), so
the processes share the work and never send a claimed delivery twice. The store stays the
truth: a child keeps nothing that the store does not have.

The parent hands a child its settings (secrets included) as a pickle on the child's
standard input, never on the command line, and keeps that pipe open: when the parent
dies, even by SIGKILL, the child reads end-of-file and stops as on SIGTERM (finishes and
records what is in flight, gives back its leases). The parent starts again one that died,
after a pause, and stops its children with SIGTERM as soon as its own stop begins (not
once its own workers have drained: until told, a child goes on claiming batches), then
waits for them beside its own workers. It kills a child only as a last resort, one still
running :func:`stop_bound` after the SIGTERM, when the leases of any batch it holds have
lapsed and other workers may have taken the batch over anyway.

A child's channel pauses (:mod:`broadcaster.dispatch.pause`) are its own, but the daemon's
``/metrics`` shows them: on the pipe that said it was ready, the child reports its pause
board when it changed, at most every second and once more as it stops; the daemon keeps
the latest of each (:mod:`broadcaster.dispatch.reports`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import struct
import sys
from datetime import timedelta

from broadcaster.clock import RealClock
from broadcaster.config.durations import format_duration
from broadcaster.config.settings import DeliverySettings, Settings
from broadcaster.dispatch.reports import REPORT_EVERY, REPORTED, PauseReporter, listen
from broadcaster.dispatch.worker import LEASES_KEPT
from broadcaster.eventloop import EventLoopError, loop_name
from broadcaster.eventloop import run as run_on_loop

log = logging.getLogger("broadcaster.daemon")

RESTART_PAUSE = timedelta(seconds=2)
"""The pause before starting again a child that died; doubled for each child in a row that
died within ``STEADY_AFTER`` of its start (a bad rules file, say), up to ``RESTART_PAUSE_MAX``."""
RESTART_PAUSE_MAX = timedelta(seconds=60)
STEADY_AFTER = timedelta(seconds=30)
READY_TIMEOUT = timedelta(seconds=30)
"""How long the daemon's start waits for a child to be ready to claim."""


def stop_bound(delivery: DeliverySettings) -> timedelta:
    """How long a child may take to stop after its SIGTERM before it is killed: the longest
    a message being sent keeps its lease (``LEASES_KEPT`` leases), and one lease more to
    record the outcomes (a failed write is tried again for up to a lease). A child stops
    as soon as what it handed to its channels is sent and recorded, far sooner as a rule
    (a channel's own timeouts end a slow send first); one still running after this is
    stuck, and the leases of what it holds have lapsed, so other workers may have claimed
    it again already: killing it then sends nothing twice that waiting would not. 5 min
    30 s with the default 30 s ``delivery.lease``."""
    return delivery.lease * (LEASES_KEPT + 1)


_LENGTH = struct.Struct(">Q")


class DispatchProcesses:
    """The daemon's extra dispatch processes: started, restarted when they die, stopped."""

    def __init__(self, settings: Settings, count: int) -> None:
        self._payload = pickle.dumps(settings)
        self._count = count
        self._children: list[asyncio.subprocess.Process | None] = [None] * count
        self._started_at: list[float] = [0.0] * count
        self._pause = RESTART_PAUSE.total_seconds()
        self._stopping = False
        self.stop_within = stop_bound(settings.delivery)
        """How long :meth:`stop` waits for the children before it kills those still running."""
        self.started = 0
        """Processes started so far, restarts included."""
        self._listening: set[asyncio.Task[None]] = set()

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children if child is not None]

    async def start(self) -> None:
        """Start the children and wait (up to ``READY_TIMEOUT``) until each is ready to
        claim: a daemon that says it is ready has its whole dispatch capacity."""
        for index in range(self._count):
            self._children[index] = await self._spawn(index, wait_ready=True)

    async def _spawn(self, index: int, *, wait_ready: bool = False) -> asyncio.subprocess.Process:
        loop = asyncio.get_running_loop()
        ready_read, ready_write = os.pipe()
        try:
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "broadcaster.dispatch.processes",
                str(ready_write),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(ready_write,),
            )
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)
        pipe = os.fdopen(ready_read, "rb", 0)
        reader = asyncio.StreamReader()
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), pipe
            )
        except BaseException:
            pipe.close()
            raise
        self.started += 1
        ready: asyncio.Future[bool] = loop.create_future()
        listening = asyncio.ensure_future(
            listen(self.started, child.pid, reader, ready, REPORTED, transport)
        )
        self._listening.add(listening)
        listening.add_done_callback(self._listening.discard)
        if child.stdin is None:  # cannot happen with stdin=PIPE; for the type checker
            raise RuntimeError("the dispatch process has no standard input")
        child.stdin.write(_LENGTH.pack(len(self._payload)) + self._payload)
        await child.stdin.drain()  # the pipe stays open: its end tells the child we died
        self._started_at[index] = loop.time()
        log.info("dispatch process started", extra={"index": index + 1, "pid": child.pid})
        if not wait_ready:
            return child
        try:
            if not await asyncio.wait_for(asyncio.shield(ready), READY_TIMEOUT.total_seconds()):
                log.error("dispatch process stopped while starting", extra={"pid": child.pid})
        except TimeoutError:
            log.warning("dispatch process is slow to start", extra={"pid": child.pid})
        return child

    async def supervise(self, stop: asyncio.Event) -> None:
        """Until ``stop``: start again, after a pause, any child that died."""
        while not stop.is_set():
            waits = {
                asyncio.ensure_future(child.wait()): index
                for index, child in enumerate(self._children)
                if child is not None
            }
            stopping = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({stopping, *waits}, return_when=asyncio.FIRST_COMPLETED)
            for waiter in (stopping, *waits):
                if waiter not in done:
                    waiter.cancel()
            if stop.is_set():
                return
            for waiter in done & waits.keys():
                index = waits[waiter]
                dead, self._children[index] = self._children[index], None
                if dead is not None and dead.stdin is not None:
                    dead.stdin.close()
                lived = asyncio.get_running_loop().time() - self._started_at[index]
                if lived >= STEADY_AFTER.total_seconds():
                    self._pause = RESTART_PAUSE.total_seconds()
                log.error(
                    "dispatch process died; starting it again",
                    extra={
                        "index": index + 1,
                        "exit_code": waiter.result(),
                        "after_seconds": round(lived, 1),
                        "pause_seconds": self._pause,
                    },
                )
                if not await self._restart(index, stop):
                    return

    async def _restart(self, index: int, stop: asyncio.Event) -> bool:
        """Start child ``index`` again after the current pause, trying again (with the
        pause doubled) while starting it fails; False once ``stop`` is set."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._pause)
            if stop.is_set():
                return False
            self._pause = min(self._pause * 2, RESTART_PAUSE_MAX.total_seconds())
            try:
                child = self._children[index] = await self._spawn(index)
            except Exception:  # fork or pipe failing (out of memory, say): not the end
                log.exception("could not start a dispatch process", extra={"index": index + 1})
                continue
            if self._stopping or stop.is_set():  # the stop began while it was starting
                with contextlib.suppress(ProcessLookupError):
                    child.terminate()
                return False
            return True

    async def stop(self) -> None:
        """SIGTERM every child at once and wait for them all (together, not one after
        another) to finish what they handed to their channels, record it and give back
        their leases; kill one still running :attr:`stop_within` after the SIGTERM (a last
        resort: see :func:`stop_bound`). Called as soon as the daemon's stop begins, beside
        its own workers' draining."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_within.total_seconds()
        ended: list[asyncio.subprocess.Process] = []
        # Looked at again once those are done: one the supervisor was starting when the
        # stop began is there too (and has had its SIGTERM from _restart).
        while running := [c for c in self._children if c is not None and c not in ended]:
            for child in running:
                if child.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.terminate()
            await asyncio.gather(*(self._end(child, deadline) for child in running))
            ended += running
        # Their last pause reports: the pipes end with the children (unless a process of
        # theirs holds one open: then its listening ends here).
        if self._listening:
            _, pending = await asyncio.wait(set(self._listening), timeout=REPORT_EVERY)
            for listening in pending:
                listening.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _end(self, child: asyncio.subprocess.Process, deadline: float) -> None:
        """Wait for ``child`` to exit until ``deadline`` (the loop's time), then kill it."""
        try:
            async with asyncio.timeout_at(deadline):
                await child.wait()
        except TimeoutError:
            log.error(
                "dispatch process did not stop within %s of its SIGTERM; killing it",
                format_duration(self.stop_within),
                extra={"pid": child.pid},
            )
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
        if child.stdin is not None:
            child.stdin.close()


async def run_child(settings: Settings, ready_fd: int | None = None) -> None:
    """A dispatch process: the daemon's workers, and nothing else, until SIGTERM, SIGINT or
    the parent's end (end-of-file on standard input). Writes a byte to ``ready_fd`` once it
    can claim, then its pause reports (:class:`~broadcaster.dispatch.reports.PauseReporter`),
    and closes it as it ends."""
    from broadcaster.dispatch.channels import build_channels
    from broadcaster.dispatch.loop import dispatch_worker, wind_down
    from broadcaster.engine import Engine
    from broadcaster.heap import settle
    from broadcaster.logs import Redaction, secret_values, set_redaction
    from broadcaster.store import Database

    redact = settings.log.redact
    set_redaction(
        Redaction(secrets=redact.secrets, phones=redact.phones, emails=redact.emails),
        secret_values(settings),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def parent_gone() -> None:
        if not os.read(sys.stdin.fileno(), 4096):
            loop.remove_reader(sys.stdin.fileno())
            log.warning("the daemon that started this dispatch process is gone; stopping")
            stop.set()

    loop.add_reader(sys.stdin.fileno(), parent_gone)
    clock = RealClock()
    database = Database.configured(settings.database)
    channels = build_channels(settings, clock)
    engine = await Engine.create(settings, database, clock, channels)
    delivery = settings.delivery
    frozen = settle()
    log.info(
        "dispatch process ready",
        extra={
            "owner": engine.owner,
            "pid": os.getpid(),
            "frozen_objects": frozen,
            "event_loop": loop_name(),
        },
    )
    reporter = PauseReporter()
    if ready_fd is not None:
        await reporter.start(ready_fd)
    never = asyncio.Event()  # no round loop here to wake the workers: they poll
    try:
        await asyncio.gather(
            *(
                dispatch_worker(engine.dispatcher, never, stop, index, delivery.poll_interval)
                for index in range(delivery.workers)
            )
        )
    finally:
        await wind_down(engine, database)
        await reporter.aclose()
        log.info(
            "dispatch process stopped",
            extra={"pid": os.getpid(), "stats": vars(engine.dispatcher.stats)},
        )


def read_settings() -> Settings:
    """The settings the parent wrote on standard input (length, then the pickle)."""
    stream = sys.stdin.buffer
    header = stream.read(_LENGTH.size)
    if len(header) != _LENGTH.size:
        raise SystemExit("broadcaster.dispatch.processes: started without settings")
    (size,) = _LENGTH.unpack(header)
    payload = stream.read(size)
    # Our own parent's bytes over a private pipe, not input from anyone else.
    settings = pickle.loads(payload)  # noqa: S301
    if not isinstance(settings, Settings):
        raise SystemExit("broadcaster.dispatch.processes: not a Settings pickle")
    return settings


def main() -> None:
    """The child's entry point; it ends without the interpreter's finalization once its
    channels have sent (:func:`channels.http_transport.exit_now`)."""
    from channels import http_transport

    http_transport.run_main(_main)


def _main() -> None:
    from broadcaster.logs import configure_logging

    settings = read_settings()
    configure_logging(settings.log.level, settings.log.format)
    ready_fd = int(sys.argv[1]) if len(sys.argv) > 1 else None
    from rules import RulesError

    try:
        run_on_loop(run_child(settings, ready_fd), settings.event_loop)
    except EventLoopError as exc:
        log.error("dispatch process cannot start", extra={"reason": str(exc)})
        raise SystemExit(1) from None
    except RulesError as exc:  # the daemon keeps its last good rules; a new process has none
        log.error(
            "dispatch process cannot start: the rules file cannot be used",
            extra={"problems": exc.problems},
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
