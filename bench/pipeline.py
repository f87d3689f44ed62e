"""The project under test: the real :class:`~broadcaster.daemon.Daemon`, in this process.

The benchmarks run the daemon the operator runs (APScheduler wake-ups, the round loop,
``delivery.workers`` dispatch workers, the channels built from settings), only without its
HTTP server, and declare incidents through the same service the CLI and the API call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from broadcaster.config.settings import Settings
from broadcaster.daemon import Daemon
from broadcaster.engine import Engine
from broadcaster.eventloop import DEFAULT_EVENT_LOOP, loop_name
from channels.base import Channel

WEBHOOK_SECRET = "bench-webhook-secret-0123456789"  # noqa: S105 - a local sink's key
LINK_SECRET = "bench-link-secret-0123456789abcdef"  # noqa: S105 - signs benchmark links
COMPONENT = "line-1"


def channel_specs(
    *, hook_url: str, smtp_port: int, twilio_url: str, twilio_sid: str, twilio_token: str
) -> dict[str, dict[str, Any]]:
    """The three channels of the fan-out scenario, pointed at the local sinks."""
    return {
        "push": {"type": "webhook", "url": hook_url, "secret": WEBHOOK_SECRET},
        "email": {
            "type": "email",
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "none",
            "from": "Broadcaster <noreply@example.com>",
        },
        "sms": {
            "type": "twilio",
            "account_sid": twilio_sid,
            "auth_token": twilio_token,
            "from_number": "+15005550006",
            "base_url": twilio_url,
            "status_callback_url": "http://127.0.0.1:9/hooks/twilio/status",
        },
    }


CONTACT_KIND = {"push": "webhook", "email": "email", "sms": "sms"}
"""The contact-point kind each channel addresses."""


def bench_settings(
    url: str,
    channels: Mapping[str, Mapping[str, Any]],
    broadcast: list[str],
    *,
    sweep: str = "1s",
    delivery: Mapping[str, Any] | None = None,
    schedule: Mapping[str, Any] | None = None,
    database: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings as an operator would write them: defaults, except the store (``url``, and
    ``database``'s other keys), the channels, no HTTP server and ``sweep``
    (``schedule.sweep_interval``)."""
    return Settings.model_validate(
        {
            "database": {"url": url, **(database or {})},
            "schedule": {"sweep_interval": sweep, **(schedule or {})},
            "delivery": {"channels": broadcast, **(delivery or {})},
            "channels": dict(channels),
            "http": {"enabled": False},
            "messages": {"link_secret": LINK_SECRET},
            # Dispatch processes (``delivery.processes``) on the loop the benchmark runs on.
            "event_loop": _running_loop(),
        }
    )


def _running_loop() -> str:
    try:
        return loop_name()
    except RuntimeError:  # no loop running: the daemon's default
        return DEFAULT_EVENT_LOOP


class RunningDaemon:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    @property
    def engine(self) -> Engine:
        engine = self.daemon._engine
        if engine is None:
            raise RuntimeError("the daemon has no engine yet")
        return engine

    @property
    def sent(self) -> int:
        """Deliveries recorded as sent so far (outcomes written to the store)."""
        return self.engine.dispatcher.stats.sent


async def start_daemon(daemon: Daemon, stop: asyncio.Event) -> asyncio.Task[None]:
    """``daemon`` running until ``stop`` is set: its task, once the daemon is ready (its
    start-up error raised, should it stop before)."""
    task = asyncio.create_task(daemon.run(stop))
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises the start-up error
        raise RuntimeError("the daemon stopped during start-up")
    return task


@asynccontextmanager
async def running_daemon(
    settings: Settings, channels: Mapping[str, Channel] | None = None
) -> AsyncIterator[RunningDaemon]:
    """The daemon, started and ready; stopped cleanly (in-flight work recorded) on exit."""
    stop = asyncio.Event()
    daemon = Daemon(settings, channels=channels)
    task = await start_daemon(daemon, stop)
    try:
        yield RunningDaemon(daemon)
    finally:
        stop.set()
        await task
