"""``broadcaster feeds``: check the configured feeds without changing anything.

``feeds check [NAME]`` fetches each configured source once (or only NAME), parses it and
prints what the daemon would do with every item right now: create, update, resolve,
reopen, leave unchanged or ignore, plus the items it would skip and, for snapshot feeds,
the open incidents it would resolve once their grace period has passed. It reads the
store but never writes to it (not even a schema upgrade).

Exit status: 0 every source was read, 1 some source could not be fetched or parsed,
2 the configuration is invalid or names no such feed, or the store's schema is not this
version's (``broadcaster db upgrade`` brings it there).
"""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import select

from broadcaster.cli.common import ConfigOption, fail, run, settings_or_exit
from broadcaster.clock import Clock, RealClock
from broadcaster.incidents.lifecycle import OPEN_STATUSES
from broadcaster.intake.apply import base_external_id, plan_event
from broadcaster.intake.events import FeedError
from broadcaster.intake.watch import FeedSettings, FeedWatcher, FetchError, peers_of, shown_url
from broadcaster.store import Database, Incident, StoreConfig
from broadcaster.store.migrate import schema_behind

app = typer.Typer(
    help="Feeds: check the configured incident feeds (dry run).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

VERBS = {
    "created": "create",
    "updated": "update",
    "resolved": "resolve",
    "reopened": "reopen",
    "unchanged": "unchanged",
    "ignored": "ignore",
    "error": "error",
}


@app.callback()
def _feeds() -> None:
    """Check the configured feeds."""


async def check_feed(
    feed: FeedSettings, database: Database, clock: Clock, peers: frozenset[str] = frozenset()
) -> tuple[bool, list[str]]:
    """Lines describing what polling ``feed`` now would do; False when it cannot be read.
    ``peers``: the configured feeds whose items are its own (:func:`peers_of`), as the
    daemon's watcher has them: a CAP alert another CAP feed brought first is not new."""
    watcher = FeedWatcher(feed, database, clock, peers=peers)
    head = f"{feed.name} ({feed.kind}) {shown_url(feed.url)}"  # no key, no user:pass@
    try:
        data = await watcher.fetch()
        if data is None:  # no validators were sent, but a server may still say so
            return True, [f"{head}: not modified"]
        result = watcher.parse(data)
    except FetchError as exc:
        return False, [f"{head}: fetch failed: {exc.args[0]}"]
    except FeedError as exc:
        return False, [f"{head}: document refused: {exc.reason}"]
    lines = [f"{head}: {len(result.events)} event(s), {len(result.skipped)} skipped"]
    for event in result.events:
        planned = await plan_event(
            database, clock, event, reopen_within=feed.reopen_within, peers=peers
        )
        target = f" #{planned.incident_id}" if planned.incident_id is not None else ""
        why = f" ({planned.reason})" if planned.reason else ""
        lines.append(
            f"  {VERBS[planned.kind]:<9} {event.external_id}{target}: {event.title!r} "
            f"[{event.severity}, {event.status}]{why}"
        )
    for skipped in result.skipped:
        lines.append(f"  skip      {skipped.item_id or '?'}: {skipped.reason}")
    snapshot = result.snapshot if feed.snapshot is None else feed.snapshot
    if snapshot:
        present = result.present()
        async with database.session() as session:
            rows = (
                await session.execute(
                    select(Incident.id, Incident.external_id).where(
                        Incident.source == feed.name, Incident.status.in_(OPEN_STATUSES)
                    )
                )
            ).all()
        for incident_id, external_id in rows:
            if external_id is not None and base_external_id(external_id, present) not in present:
                lines.append(
                    f"  resolve   {external_id} #{incident_id}: missing from the snapshot "
                    f"(after {feed.grace} grace)"
                )
    return True, lines


class _SchemaBehind(Exception):
    """The store's schema is not this version's (feeds check never upgrades it)."""


async def _check(
    feeds: list[FeedSettings], store: StoreConfig, configured: list[FeedSettings]
) -> bool:
    database = Database.configured(store)
    ok = True
    try:
        behind = await schema_behind(database.engine)
        if behind is not None:
            raise _SchemaBehind(behind)
        for feed in feeds:
            peers = peers_of(feed, configured)
            readable, lines = await check_feed(feed, database, RealClock(), peers)
            ok = ok and readable
            for line in lines:
                typer.echo(line)
    finally:
        await database.dispose()
    return ok


@app.command("check")
def check(
    name: Annotated[str | None, typer.Argument(help="only this feed")] = None,
    config: ConfigOption = None,
) -> None:
    """Fetch each configured feed once and print what it would create, update or resolve."""
    settings = settings_or_exit(config)
    configured: list[FeedSettings] = list(getattr(settings, "feeds", None) or [])
    feeds = configured
    if name is not None:
        feeds = [f for f in configured if f.name == name]
        if not feeds:
            raise fail(f"no feed named {name!r} in the configuration", 2)
    if not feeds:
        typer.echo("no feeds configured")
        return
    try:
        readable = run(_check(feeds, settings.database, configured))
    except _SchemaBehind as exc:
        raise fail(str(exc), 2) from None
    if not readable:
        raise typer.Exit(1)
