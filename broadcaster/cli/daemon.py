"""``broadcaster run``: the daemon in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import signal

from broadcaster import eventloop
from broadcaster.cli.common import (
    STORE_ERRORS,
    ConfigOption,
    check_sqlite_path,
    fail,
    settings_or_exit,
    store_problem,
)
from broadcaster.daemon import Daemon
from broadcaster.logs import configure_logging
from broadcaster.store.migrate import upgrade_async
from broadcaster.web.app import StartupError

log = logging.getLogger("broadcaster.cli")


def run(config: ConfigOption = None) -> None:
    """Run the daemon: rounds on schedule, deliveries on every configured channel."""
    settings = settings_or_exit(config)
    configure_logging(settings.log.level, settings.log.format)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        daemon = Daemon(settings)
        loop.add_signal_handler(signal.SIGHUP, daemon.reload_rules)
        try:
            check_sqlite_path(settings.database.url)
            # Past any pooler: a migration's DDL and autocommit blocks need a session.
            await upgrade_async(settings.database.direct)
        except STORE_ERRORS as exc:
            raise StartupError(store_problem(settings.database.direct, exc)) from None
        await daemon.run(stop)

    try:
        eventloop.run(main(), settings.event_loop)
    except (eventloop.EventLoopError, StartupError) as exc:
        raise fail(str(exc), 2) from None
