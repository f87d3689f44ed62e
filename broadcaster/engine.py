"""The engine: one step of each stage of the flow, shared by the daemon and the demo.

It holds no state the store does not have: every call reads what is due from the store,
so the daemon (woken by APScheduler) and the demo (driven by a fake clock) run the same
code.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from datetime import datetime

from broadcaster.clock import Clock
from broadcaster.compose.render import Renderer
from broadcaster.compose.templates import TemplateSet
from broadcaster.config.settings import Settings
from broadcaster.dispatch.worker import Dispatcher
from broadcaster.outbox.materialise import ChannelRoute, materialise_round
from broadcaster.schedule.rounds import LostLease, claim_due_round, next_wakeup, release_round
from broadcaster.store import Database
from broadcaster.store.secrets import get_or_create_secret
from channels.base import Channel

log = logging.getLogger("broadcaster.engine")


def make_owner() -> str:
    """A lease owner id unique to this process: host, pid and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def make_renderer(settings: Settings) -> Renderer:
    messages = settings.messages
    return Renderer(
        TemplateSet(messages.templates_dir, messages.default_language),
        organisation=messages.organisation,
        public_url=messages.public_url,
        sms_max_segments=messages.sms_max_segments,
    )


async def link_secret(settings: Settings, database: Database, clock: Clock) -> str:
    configured = settings.messages.link_secret
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value()
    return await get_or_create_secret(database, "link-signing", clock)


class Engine:
    def __init__(
        self,
        settings: Settings,
        database: Database,
        clock: Clock,
        channels: Mapping[str, Channel],
        owner: str | None = None,
        *,
        link_secret: str,
    ) -> None:
        self.settings = settings
        self.database = database
        self.clock = clock
        self.channels = channels
        self.owner = owner or make_owner()
        self.routes = [
            ChannelRoute(name, channels[name].contact) for name in settings.delivery.channels
        ]
        self.renderer = make_renderer(settings)
        self.dispatcher = Dispatcher(
            database,
            clock,
            channels,
            settings.delivery,
            settings.messages,
            self.owner,
            self.renderer,
            link_secret,
        )

    @classmethod
    async def create(
        cls,
        settings: Settings,
        database: Database,
        clock: Clock,
        channels: Mapping[str, Channel],
        owner: str | None = None,
    ) -> Engine:
        """An engine with the link secret from config, or the one kept in the store."""
        return cls(
            settings,
            database,
            clock,
            channels,
            owner,
            link_secret=await link_secret(settings, database, clock),
        )

    async def process_due_rounds(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Claim and materialise every due round; returns how many were completed."""
        done = 0
        while not should_stop():
            claimed = await claim_due_round(
                self.database, self.clock, self.settings.schedule, self.owner
            )
            if claimed is None:
                break
            log.info(
                "round started",
                extra={
                    "incident": claimed.incident_id,
                    "round": claimed.number,
                    "kind": claimed.kind,
                    "resumed": claimed.resumed,
                },
            )
            try:
                inserted = await materialise_round(
                    self.database,
                    self.clock,
                    claimed,
                    self.routes,
                    self.settings.schedule,
                    should_stop,
                )
            except LostLease as exc:
                log.warning("round lease lost", extra={"reason": str(exc)})
                continue
            if inserted is None:
                await release_round(self.database, claimed)
                log.info("round released at shutdown", extra={"round": claimed.number})
                break
            done += 1
            log.info(
                "round materialised",
                extra={
                    "incident": claimed.incident_id,
                    "round": claimed.number,
                    "deliveries": inserted,
                },
            )
        return done

    async def dispatch_all(self) -> int:
        """Send until nothing is due now (the demo and tests; the daemon runs workers)."""
        total = 0
        while (handled := await self.dispatcher.run_once()) > 0:
            total += handled
        return total

    async def next_wakeup(self) -> datetime | None:
        return await next_wakeup(self.database)

    async def aclose(self) -> None:
        for channel in self.channels.values():
            await channel.aclose()
