"""What the daemon's extra dispatch processes tell it of their channel pauses.

A pause is the process's own (:mod:`broadcaster.dispatch.pause`), but the daemon's
``/metrics`` shows the pauses of all its processes: on the pipe that said it was ready
(:mod:`broadcaster.dispatch.processes`), a child reports its pause board when it changed, at
most every :data:`REPORT_EVERY` and once more as it stops (:class:`PauseReporter`); the
daemon reads the reports (:func:`listen`) and keeps the latest of each process
(:data:`REPORTED`). A report is a 4-byte big-endian length, then the board as JSON
(:meth:`~broadcaster.dispatch.pause.PauseBoard.snapshot`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from typing import Final

from broadcaster.dispatch.pause import BOARD, PauseBoard

log = logging.getLogger("broadcaster.daemon")

_REPORT = struct.Struct(">I")
"""The length of a pause report on the child's pipe, before its bytes."""
REPORT_EVERY: Final = 1.0
"""Seconds between a child's pause reports, at most one each, and only when it changed."""
LONGEST_REPORT: Final = 1 << 20
"""Bytes a pause report may have (a board names at most 20 scopes per channel: a few KB)."""
READY: Final = b"r"


class ProcessBoards:
    """The boards the daemon's extra dispatch processes report
    (:mod:`broadcaster.dispatch.processes`), by the number of the process's start: the
    latest of each one running, and the last ones of those that ended added together, so
    that ``/metrics`` counts the pauses of the whole daemon and its counters never go back
    when a process is started again. A process reports at most once a second and once more
    as it stops: what one that was killed did after its last report is lost."""

    def __init__(self) -> None:
        self._running: dict[int, PauseBoard] = {}
        self._names: dict[str, set[str]] = {}
        """The scopes the totals name, kept across scrapes: a scope named once stays named
        (and one counted under ``other`` stays there), whichever process ends."""
        self._ended = PauseBoard(_names=self._names)

    def report(self, process: int, board: PauseBoard) -> None:
        self._running[process] = board

    def ended(self, process: int) -> None:
        board = self._running.pop(process, None)
        if board is not None:
            self._ended.absorb(board)

    def total(self, own: PauseBoard) -> PauseBoard:
        """``own`` (this process's board) and every dispatch process's, as one."""
        merged = PauseBoard(_names=self._names)
        for board in (own, self._ended, *self._running.values()):
            merged.absorb(board)
        return merged


REPORTED = ProcessBoards()
"""What this daemon's dispatch processes reported (:class:`ProcessBoards`)."""


async def listen(
    number: int,
    pid: int | None,
    reader: asyncio.StreamReader,
    ready: asyncio.Future[bool],
    reports: ProcessBoards,
    transport: asyncio.BaseTransport | None = None,
) -> None:
    """Read a child's pipe: its ready byte (``ready`` is then True; False when the pipe ends
    first), then its pause reports, each kept in ``reports`` as process ``number``'s, until
    the pipe ends with the child; then its last report counts as an ended process's. A
    report that cannot be read ends the listening with a warning: the daemon goes on, and
    only that child's later pauses are missing from ``/metrics``."""
    try:
        first = await reader.read(1)
        if not ready.done():
            ready.set_result(first == READY)
        if first != READY:
            return
        while True:
            try:
                head = await reader.readexactly(_REPORT.size)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise ValueError("the pipe ended within a report's length") from None
                return  # the child ended
            (length,) = _REPORT.unpack(head)
            if length > LONGEST_REPORT:
                raise ValueError(f"a report of {length} bytes, more than {LONGEST_REPORT}")
            try:
                body = await reader.readexactly(length)
            except asyncio.IncompleteReadError:
                raise ValueError("the pipe ended within a report") from None
            reports.report(number, PauseBoard.from_snapshot(body))
    except (ValueError, RecursionError, OSError) as exc:
        log.warning(
            "dispatch process sent a pause report that cannot be read; its pauses from now "
            "on are left out of /metrics",
            extra={"pid": pid, "reason": str(exc)},
        )
    finally:
        if not ready.done():
            ready.set_result(False)
        if transport is not None:
            transport.close()
        reports.ended(number)


class PauseReporter:
    """A child's side of :func:`listen`: the ready byte, then its pause board
    (:data:`~broadcaster.dispatch.pause.BOARD`) whenever it changed, at most every
    :data:`REPORT_EVERY`, never more than one report waiting in the pipe; once more at
    :meth:`aclose`. A daemon that is gone (a broken pipe) ends the reports, nothing else:
    the child notices the daemon's end on its standard input."""

    def __init__(self, board: PauseBoard = BOARD, every: float = REPORT_EVERY) -> None:
        self._board = board
        self._every = every
        self._writer: asyncio.StreamWriter | None = None
        self._last = PauseBoard().snapshot()
        self._task: asyncio.Task[None] | None = None

    async def start(self, fd: int) -> None:
        """Say ready on ``fd`` (closed with the reporter) and start reporting."""
        loop = asyncio.get_running_loop()
        os.set_inheritable(fd, False)  # a process of ours must not hold the daemon's pipe open
        pipe = os.fdopen(fd, "wb", 0)
        try:
            transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), pipe
            )
        except BaseException:
            pipe.close()
            raise
        # Drained means empty: a report waits for the last one to be read.
        transport.set_write_buffer_limits(high=0)
        self._writer = asyncio.StreamWriter(transport, protocol, None, loop)
        self._writer.write(READY)
        self._task = asyncio.ensure_future(self._every_so_often())

    async def _every_so_often(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            self.report()

    def report(self) -> None:
        """The board, if it changed since the last report and nothing waits in the pipe."""
        writer = self._writer
        if writer is None or writer.is_closing() or writer.transport.get_write_buffer_size():
            return
        snapshot = self._board.snapshot()
        if snapshot != self._last:
            writer.write(_REPORT.pack(len(snapshot)) + snapshot)
            self._last = snapshot

    async def aclose(self) -> None:
        """The last report, then the pipe closed: waiting for each at most
        :data:`REPORT_EVERY` (a daemon that reads nothing more holds no stop up)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        writer = self._writer
        if writer is None:
            return
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(writer.drain(), self._every)  # a report on its way
        self.report()
        self._writer = None
        writer.close()  # writes what it holds first
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(writer.wait_closed(), self._every)
