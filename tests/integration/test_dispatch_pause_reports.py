"""The daemon's ``/metrics`` counts the channel pauses of its extra dispatch processes: each
child reports its pause board on the pipe that said it was ready (``PauseReporter``), the
daemon reads the reports (``listen``) into its ``ProcessBoards``. Here both ends run in one
process over a real pipe; tests/e2e/test_dispatch_processes.py runs real children."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta

import pytest

from broadcaster.dispatch.pause import WHOLE, ChannelPauses, PauseBoard
from broadcaster.dispatch.reports import _REPORT, READY, PauseReporter, ProcessBoards, listen

NOW = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)


class Pipe:
    """The daemon's end of a child's pipe, read by :func:`listen` into ``reports``."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.reports = ProcessBoards()
        self.ready: asyncio.Future[bool] | None = None
        self.task: asyncio.Task[None] | None = None

    async def listen(self, number: int = 7) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self.read_fd, "rb", 0)
        )
        self.ready = loop.create_future()
        self.task = asyncio.ensure_future(
            listen(number, 4242, reader, self.ready, self.reports, transport)
        )

    def total(self) -> PauseBoard:
        return self.reports.total(PauseBoard())


async def until(condition: object, what: str, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_a_childs_pauses_reach_the_daemon_and_stay_counted_after_it_ends() -> None:
    pipe = Pipe()
    await pipe.listen()
    board = PauseBoard()
    pauses = ChannelPauses(monotonic=lambda: 0.0, board=board)
    reporter = PauseReporter(board, every=0.01)
    await reporter.start(pipe.write_fd)
    assert pipe.ready is not None and await pipe.ready is True

    pauses.throttled("sms", 30.0, "429", NOW)
    await until(lambda: pipe.total().pauses == {("sms", WHOLE): 1}, "the first report")
    # Counted at the stop, after the last periodic report: the final report carries it.
    reporter._every = 3600.0
    board.held_back("sms", 5)
    await reporter.aclose()
    assert pipe.task is not None
    await asyncio.wait_for(pipe.task, 5)  # the pipe ended with the reporter
    total = pipe.total()
    assert total.pauses == {("sms", WHOLE): 1} and total.deferred == {("sms", WHOLE): 5}
    assert total.until == {("sms", WHOLE): NOW + timedelta(seconds=30)}


async def test_a_child_that_ends_before_it_is_ready_says_so() -> None:
    pipe = Pipe()
    await pipe.listen()
    os.close(pipe.write_fd)
    assert pipe.ready is not None and await asyncio.wait_for(pipe.ready, 5) is False
    assert pipe.total().pauses == {}


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        (READY + _REPORT.pack(5) + b"[1,2]", "pause report: want an object"),
        (READY + _REPORT.pack(1 << 30), "a report of 1073741824 bytes"),
        (READY + _REPORT.pack(50) + b"{}", "the pipe ended within a report"),
        (READY + b"\x00\x00", "the pipe ended within a report's length"),
    ],
)
async def test_a_report_that_cannot_be_read_is_left_out_with_a_warning(
    written: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon goes on; what the child reported before stays counted."""
    pipe = Pipe()
    earlier = PauseBoard()
    ChannelPauses(monotonic=lambda: 0.0, board=earlier).throttled("push", None, "429", NOW)
    snapshot = earlier.snapshot()
    await pipe.listen()
    os.write(pipe.write_fd, READY + _REPORT.pack(len(snapshot)) + snapshot + written[1:])
    os.close(pipe.write_fd)
    with caplog.at_level(logging.WARNING, logger="broadcaster.daemon"):
        assert pipe.task is not None
        await asyncio.wait_for(pipe.task, 5)
    [warning] = [r for r in caplog.records if "pause report" in r.getMessage()]
    assert reason in str(getattr(warning, "reason", "")), warning.__dict__
    assert getattr(warning, "pid", None) == 4242
    assert pipe.total().pauses == {("push", WHOLE): 1}
