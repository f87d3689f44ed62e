"""``python -m bench.smtp_rtt [--rtt-ms 50] [--count 200] [--pool 4] [--json PATH]``: the
email channel to a relay at a distance, with and without SMTP pipelining (RFC 2920).

The relay is the development SMTP sink (aiosmtpd, offering PIPELINING) behind a local TCP
proxy that holds every chunk of data ``rtt/2`` in each direction, in order, as a link
that long would. The email channel sends ``count`` messages on ``pool`` connections,
once with ``pipelining: true`` and once with ``false``, in turn for ``--rounds`` rounds
(connecting is outside the clock), messages shaped as the fan-out's (those of
``python -m bench.email_build``). It prints messages a second and how many writes the
channel made a message (the proxy counts the chunks it forwards towards the relay: a
pipelined message is two, the envelope with DATA and then the message; one command at a
time, four).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.email_build import messages
from broadcaster.devsmtp import SmtpSink
from channels.email import EmailChannel, EmailSettings


class DelayProxy:
    """Forwards TCP connections on 127.0.0.1 to ``port``, each chunk ``delay`` seconds
    late in either direction (order kept); counts the chunks sent towards the relay."""

    def __init__(self, port: int, delay: float) -> None:
        self._port = port
        self._delay = delay
        self.upstream_chunks = 0
        self.listen_port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        for source, sink, upstream in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pump(source, sink, upstream=upstream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not chunk:
                    sink.close()
                    return
                sink.write(chunk)
                await sink.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while chunk := await source.read(65536):
                if upstream:
                    self.upstream_chunks += 1
                queue.put_nowait((loop.time() + self._delay, chunk))
            queue.put_nowait((loop.time() + self._delay, b""))
            await delivering
        except (ConnectionError, asyncio.CancelledError):
            delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await delivering
            sink.close()


async def one_run(
    sink_port: int, delay: float, count: int, pool: int, *, pipelining: bool
) -> dict[str, float]:
    """``count`` messages on ``pool`` connections through a proxy ``delay`` each way."""
    async with DelayProxy(sink_port, delay) as proxy:
        settings = EmailSettings.model_validate(
            {
                "host": "127.0.0.1",
                "port": proxy.listen_port,
                "security": "none",
                "pool_size": pool,
                "messages_per_connection": 100_000,
                "pipelining": pipelining,
                "from": "Operations <ops@example.com>",
            }
        )
        channel = EmailChannel("email", settings)
        try:
            pairs = messages(count + pool, non_ascii=False)
            # Open every connection first (connecting is not what is compared).
            await asyncio.gather(*(channel.send(t, m) for t, m in pairs[:pool]))
            before = proxy.upstream_chunks
            started = time.perf_counter()
            await asyncio.gather(*(channel.send(t, m) for t, m in pairs[pool:]))
            wall = time.perf_counter() - started
            writes = proxy.upstream_chunks - before
        finally:
            await channel.aclose()
    return {"rate": count / wall, "writes_per_message": writes / count}


async def run(rtt_ms: float, count: int, pool: int, rounds: int) -> dict[str, Any]:
    delay = rtt_ms / 2000
    runs: dict[str, list[dict[str, float]]] = {"pipelined": [], "one at a time": []}
    with SmtpSink() as sink:
        for _ in range(rounds):
            for label, pipelining in (("pipelined", True), ("one at a time", False)):
                runs[label].append(
                    await one_run(sink.port, delay, count, pool, pipelining=pipelining)
                )
        received = len(sink.messages)
    expected = rounds * 2 * (count + pool)
    if received != expected:
        raise RuntimeError(f"the relay received {received} messages, not {expected}")
    return {
        "rtt_ms": rtt_ms,
        "count": count,
        "pool": pool,
        "rounds": rounds,
        "runs": runs,
        "median_rate": {k: statistics.median(r["rate"] for r in v) for k, v in runs.items()},
        "writes_per_message": {
            k: statistics.median(r["writes_per_message"] for r in v) for k, v in runs.items()
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt-ms", type=float, default=50.0, help="round trip to the relay")
    parser.add_argument("--count", type=int, default=200, help="messages per run")
    parser.add_argument("--pool", type=int, default=4, help="SMTP connections (pool_size)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, taken in turn")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    for name in ("count", "pool", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.rtt_ms < 0:
        parser.error("--rtt-ms must not be negative")
    results = asyncio.run(run(args.rtt_ms, args.count, args.pool, args.rounds))
    print(
        f"email to a relay {args.rtt_ms:g} ms away, {args.count} messages on "
        f"{args.pool} connections, median of {args.rounds}:"
    )
    for label, rate in results["median_rate"].items():
        writes = results["writes_per_message"][label]
        print(f"  {label:<14} {rate:8.1f} msg/s   {writes:.2f} writes a message")
    pipelined, serial = results["median_rate"].values()
    print(f"  pipelined / one at a time: {pipelined / serial:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
