"""Customer import: stream a CSV or JSON Lines file into the store, batch by batch, idempotently.

Why it is shaped this way:

- **Streamed.** The file is read line by line and at most ``batch_size`` records are held at
  once, so memory stays flat whatever the file size; a line longer than
  :data:`MAX_LINE_BYTES` is refused rather than buffered.
- **Bulk.** Each batch is one transaction of Core ``executemany`` statements (upsert the
  customers, then diff their contact points and subscriptions); the ORM unit of work is ~60x
  slower for this (see DESIGN.md, hot paths).
- **Idempotent.** Re-importing a file changes nothing the file did not change: customers are
  upserted (``created_at`` only set on first insert; name, language, time zone and channel
  order become the file's), a contact point that is still listed keeps its row and therefore
  its ``opted_out`` / ``disabled`` flags, ones no longer listed are deleted, new ones inserted;
  subscriptions become exactly the file's set.
- **Bad rows do not stop good ones.** A row that fails validation is reported (file, line,
  field, reason) and skipped; the rest is imported. Only unusable input (missing file, unknown
  format, bad CSV header) fails the import, and it does so before anything is written. A CSV
  quote never closed costs its own record only: the lines it took in are read again.
- **Duplicate ids: the later row wins.** The file is applied as a sequence of upserts, so
  a customer that appears twice ends up as its last row says (within a batch the earlier row
  is dropped; across batches the later batch overwrites). Each occurrence counts as imported.

Reading and validating run in a worker thread (``asyncio.to_thread``), one batch at a time,
so that the event loop stays responsive when the import runs inside the daemon or the API.
(Reading the next batch while writing the previous one was measured: no faster, because
validation holds the GIL; most of its time is email-validator and phonenumbers.)
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, ClassVar, TypeVar, cast

from sqlalchemy import Table, delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from broadcaster.clock import Clock
from broadcaster.customers.rows import (
    CustomerRow,
    HeaderError,
    Problem,
    RowError,
    RowRejected,
    check_csv_header,
    from_csv_record,
    from_json_line,
)
from broadcaster.store import (
    ContactPoint,
    Customer,
    Database,
    Delivery,
    DeliveryEvent,
    Subscription,
)

if TYPE_CHECKING:
    from _csv import Reader as CsvReader

FORMATS = ("csv", "jsonl")
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
MAX_LINE_BYTES = 1 << 20
T = TypeVar("T")
_IN_CHUNK = 1000  # ids per IN (...) list: well under SQLite's and asyncpg's parameter limits

_CUSTOMERS = cast(Table, Customer.__table__)
_CONTACT_POINTS = cast(Table, ContactPoint.__table__)
_SUBSCRIPTIONS = cast(Table, Subscription.__table__)
_DELIVERIES = cast(Table, Delivery.__table__)
_DELIVERY_EVENTS = cast(Table, DeliveryEvent.__table__)
REMOVED = "the address was removed from the customer (an import or an update)"
"""Why a delivery still waiting for an address an import removed is not sent."""
_UPDATED_COLUMNS = [
    "name",
    "language",
    "timezone",
    "channel_order",
    "tier",
    "tags",
    "region",
    "sla",
    "account_manager",
    "updated_at",
]
"""What a re-import overwrites: every column the file describes (``created_at`` is kept).
``postal_address`` too, for the rows that give it (:attr:`CustomerRow.gives_postal_address`):
a file without it leaves the stored one as it is."""


class ImportInputError(Exception):
    """The input cannot be imported at all (missing file, unknown format, bad CSV header)."""


@dataclass
class ImportResult:
    """Counts of the import, and the first :attr:`MAX_ERRORS` rejected rows (memory stays flat)."""

    MAX_ERRORS: ClassVar[int] = 1000

    imported: int = 0
    rejected: int = 0
    errors: list[RowError] = field(default_factory=list)
    warned: int = 0
    warnings: list[RowWarning] = field(default_factory=list)
    """Imported rows the admin should look at (the first :attr:`MAX_ERRORS`)."""

    def reject(self, error: RowError) -> None:
        self.rejected += 1
        if len(self.errors) < self.MAX_ERRORS:
            self.errors.append(error)

    def warn(self, warning: RowWarning) -> None:
        self.warned += 1
        if len(self.warnings) < self.MAX_ERRORS:
            self.warnings.append(warning)


class RowWarning(RowError):
    """An imported row with something that will not work as its file meant: an account
    manager who is not in the staff directory, say."""


def detect_format(path: Path, fmt: str | None = None) -> str:
    """``fmt`` when given, else from the file name's extension; raise if neither says."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ImportInputError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
        return fmt
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise ImportInputError(
            f"{path}: cannot tell the format from the extension; "
            f"name it .csv, .jsonl or .ndjson, or pass --format csv|jsonl"
        )
    return found


async def import_customers(
    database: Database,
    path: Path,
    *,
    clock: Clock,
    fmt: str | None = None,
    channels: Collection[str] | None = None,
    staff: Collection[str] | None = None,
    batch_size: int = 1000,
    on_error: Callable[[RowError], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Import every valid row of ``path``; report the others through ``on_error``.

    ``channels`` are the configured channel names: a row whose preferred order names another
    is rejected (None: names are checked for their form only). ``staff`` are the staff
    directory's ids: a row whose account manager is not among them is imported, with a
    warning (None: not checked); warnings go to ``on_error`` too. ``on_progress`` receives the
    number of bytes read so far after each batch. Raises :class:`ImportInputError` before
    writing anything when the file cannot be used.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    reader = await asyncio.to_thread(
        _Reader.open,
        path,
        detect_format(path, fmt),
        None if channels is None else frozenset(channels),
        None if staff is None else frozenset(staff),
    )
    result = ImportResult()
    try:
        while True:
            batch = await asyncio.to_thread(reader.read_batch, batch_size)
            for error in batch.errors:
                if isinstance(error, RowWarning):
                    result.warn(error)
                else:
                    result.reject(error)
                if on_error is not None:
                    on_error(error)
            if batch.rows:
                async with database.begin() as connection:
                    await _write_batch(database, connection, batch.rows, clock.now())
                result.imported += len(batch.rows)
            if on_progress is not None:
                on_progress(batch.bytes_read)
            if batch.done:
                break
    finally:
        await asyncio.to_thread(reader.close)
    if result.imported:
        # The next round reads these tables by plans made from their statistics; stale
        # ones (a large import since autovacuum last looked) made PostgreSQL pick the
        # contact points of a 5,000-customer batch by scanning them all, one batch at a time.
        for table in CUSTOMER_TABLES:
            await database.refresh_statistics(table)
    return result


CUSTOMER_TABLES = ("customers", "contact_points", "subscriptions")
"""What an import writes; their planner statistics are refreshed after it."""


@dataclass
class _Batch:
    rows: list[CustomerRow]
    errors: list[RowError]
    bytes_read: int
    done: bool


class _Lines:
    """The file's lines, counted in bytes for the progress bar, capped in length for memory.

    An over-long line is skipped up to its end and stands as an empty line (line numbers stay
    right); ``overlong`` counts them so the record that contained one is rejected.
    ``position`` is where the next line starts, so that the CSV reader can go back to a line
    (see :meth:`rewind`); ``bytes_read``, for the progress bar, never goes back.
    """

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.position = 0
        self.bytes_read = 0
        self.overlong = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            first = self.position == 0
            line = self._read(MAX_LINE_BYTES)
            if not line:
                return
            if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n") and self._skip_rest():
                self.overlong += 1
                line = b"\n"
            if first:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a BOM, as spreadsheets write
            yield line

    def _read(self, limit: int) -> bytes:
        line = self.file.readline(limit)
        self.position += len(line)
        self.bytes_read = max(self.bytes_read, self.position)
        return line

    def _skip_rest(self) -> bool:
        """Read past the end of the current line; False if there was nothing left (EOF)."""
        skipped = False
        while chunk := self._read(MAX_LINE_BYTES):
            skipped = True
            if chunk.endswith(b"\n"):
                break
        return skipped

    def text(self) -> Iterator[str]:
        # surrogateescape: bad bytes reach the row validator, which rejects that field alone.
        return (line.decode("utf-8", "surrogateescape") for line in self)

    def rewind(self, position: int) -> bool:
        """Read on from the line after the one that starts at ``position``; False when the
        file cannot go back (not a regular file)."""
        if not self.file.seekable():
            return False
        self.file.seek(position)
        self.position = position
        next(iter(self), None)
        return True


_TOO_LONG = Problem(None, f"a line is longer than {MAX_LINE_BYTES} bytes")


class _Reader:
    """Hands out batches of validated rows and row errors from one open file."""

    def __init__(
        self, file: BinaryIO, lines: _Lines, items: Iterator[CustomerRow | RowError]
    ) -> None:
        self._file = file
        self._lines = lines
        self._items = items

    @classmethod
    def open(
        cls,
        path: Path,
        fmt: str,
        channels: Collection[str] | None = None,
        staff: Collection[str] | None = None,
    ) -> _Reader:
        """Open the file and, for CSV, check the header now: before anything is written."""
        try:
            file = path.open("rb")
        except OSError as exc:
            raise ImportInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
        try:
            lines = _Lines(file)
            parse = _open_csv if fmt == "csv" else _jsonl_items
            items = _noting_strangers(parse(lines, str(path), channels), str(path), staff)
        except BaseException:
            file.close()
            raise
        return cls(file, lines, items)

    def read_batch(self, size: int) -> _Batch:
        """Up to ``size`` records, good or bad (so a file of bad rows is batched too)."""
        rows: list[CustomerRow] = []
        errors: list[RowError] = []
        for item in self._items:
            if isinstance(item, RowError):
                errors.append(item)
            else:
                rows.append(item)
            if len(rows) + len(errors) >= size:
                return _Batch(rows, errors, self._lines.bytes_read, done=False)
        return _Batch(rows, errors, self._lines.bytes_read, done=True)

    def close(self) -> None:
        self._file.close()


def _noting_strangers(
    items: Iterator[tuple[int, CustomerRow] | RowError],
    source: str,
    staff: Collection[str] | None,
) -> Iterator[CustomerRow | RowError]:
    """The rows, each followed by a warning when its account manager is not staff."""
    for item in items:
        if isinstance(item, RowError):
            yield item
            continue
        line, row = item
        yield row
        if staff is not None and row.account_manager and row.account_manager not in staff:
            yield RowWarning(
                source,
                line,
                (
                    Problem(
                        "account_manager",
                        f"{row.account_manager!r} is not in the staff directory "
                        "(staff.people in the config): a follow-up the rules give to the "
                        "account manager goes to the rule's escalation instead, or to nobody",
                    ),
                ),
            )


def _csv_reader(lines: _Lines) -> CsvReader:
    # Strict: a quote left open is an error at the next quote or at the end of the file,
    # not a cell that silently takes in every record after it.
    return csv.reader(lines.text(), strict=True)


def _open_csv(
    lines: _Lines, source: str, channels: Collection[str] | None
) -> Iterator[tuple[int, CustomerRow] | RowError]:
    """Read and check the header (raising :class:`ImportInputError`), then stream records."""
    reader = _csv_reader(lines)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ImportInputError(f"{source}:1: unreadable CSV header: {exc}") from None
    if not header or lines.overlong:
        raise ImportInputError(f"{source}:1: the first line must be the header (id,name,...)")
    joined = ",".join(header)
    if "\x00" in joined or joined.startswith(("\udcff\udcfe", "\udcfe\udcff")):
        raise ImportInputError(
            f"{source}:1: the file is not UTF-8 but looks like UTF-16 (a byte order mark or "
            "NUL bytes between the letters); save it as CSV UTF-8"
        )
    try:
        names = check_csv_header(header)
    except HeaderError as exc:
        raise ImportInputError(f"{source}:1: {exc}") from None
    return _csv_items(reader, names, lines, source, channels)


_RUNS_ON = "; its record runs to line {end}: is a quote opened here and not closed?"


def _csv_items(
    reader: CsvReader,
    names: list[str],
    lines: _Lines,
    source: str,
    channels: Collection[str] | None,
) -> Iterator[tuple[int, CustomerRow] | RowError]:
    """One item per record, numbered by the record's *first* line (header = line 1).

    ``csv.reader`` rather than ``DictReader``: a quoted cell may span lines, so the start line
    must be taken before each record is read, and DictReader hides the blank lines it skips.

    A quote that is never closed takes every line after it into its cell, up to the end of
    the file: that record is reported, and the lines after its first are read again as
    records of their own, so that one stray quote costs one row, not the rest of the file.
    (The file is rewound to that line: memory stays flat.)
    """
    base = 0  # lines before the ones this reader has read (it restarts after a rewind)
    while True:
        start, offset, overlong = base + reader.line_num + 1, lines.position, lines.overlong
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            end = base + reader.line_num
            if str(exc) == "unexpected end of data":  # the quote runs to the end of the file
                again = end > start and lines.rewind(offset)
                yield RowError(source, start, (_never_closed(start, end, again),))
                if again:
                    reader, base = _csv_reader(lines), start
                continue
            reason = f"unreadable CSV: {exc}"
            if "expected after" in str(exc):
                reason += (
                    " (something follows a closing quote: a space, say; quote the whole field)"
                )
            if end > start:
                reason += f"{_RUNS_ON.format(end=end)} (lines {start}-{end} not imported)"
            yield RowError(source, start, (Problem(None, reason),))
            continue
        end = base + reader.line_num
        if lines.overlong != overlong:
            yield RowError(source, start, (_TOO_LONG,))
        elif not cells or all(not cell or cell.isspace() for cell in cells):
            continue  # a blank line, or a spreadsheet's empty row
        elif len(cells) != len(names):
            reason = f"has {len(cells)} fields, the header has {len(names)}"
            if end > start:  # a quoted cell ran over several lines
                reason += f"{_RUNS_ON.format(end=end)} (lines {start}-{end} not imported)"
            yield RowError(source, start, (Problem(None, reason),))
        else:
            try:
                yield start, from_csv_record(dict(zip(names, cells, strict=True)), channels)
            except RowRejected as exc:
                yield RowError(source, start, exc.problems)


def _never_closed(start: int, end: int, again: bool) -> Problem:
    """What a quote that runs from line ``start`` to the end of the file (line ``end``) costs;
    ``again``: the lines after ``start`` are read again."""
    reason = f"unreadable CSV: a quote opened on line {start} is never closed"
    if end == start:
        return Problem(None, f"{reason} (it is the last line): line {start} could not be read")
    reason += f" (it runs to the end of the file, line {end})"
    if again:
        reason += f": line {start} is skipped and the file read again from line {start + 1}"
    else:
        reason += f": lines {start}-{end} could not be read"
    return Problem(None, reason)


def _jsonl_items(
    lines: _Lines, source: str, channels: Collection[str] | None
) -> Iterator[tuple[int, CustomerRow] | RowError]:
    """One item per non-blank line, numbered from 1."""
    overlong = 0
    for number, line in enumerate(lines, start=1):
        if lines.overlong != overlong:
            overlong = lines.overlong
            yield RowError(source, number, (_TOO_LONG,))
        elif line.strip():
            try:
                yield number, from_json_line(line, channels)
            except RowRejected as exc:
                yield RowError(source, number, exc.problems)


async def _write_batch(
    database: Database, connection: AsyncConnection, rows: list[CustomerRow], now: datetime
) -> None:
    """Apply one batch in the caller's transaction: upsert customers, then diff their children."""
    latest = {row.id: row for row in rows}  # a repeated id: the later row wins
    # The postal address a row leaves out is kept: the last one given for its id in this
    # batch (as the rows applied one after another would leave it), else the stored one.
    addresses = {row.id: row.postal_address for row in rows if row.gives_postal_address}
    values: list[dict[str, object]] = [
        {
            "id": row.id,
            "name": row.name,
            "language": row.language,
            "timezone": row.timezone,
            "channel_order": row.channel_order(),
            "tier": row.tier,
            "tags": row.stored_tags(),
            "region": row.region,
            "sla": row.sla,
            "account_manager": row.account_manager,
            "created_at": now,
            "updated_at": now,
        }
        for row in latest.values()
    ]
    given = [
        {**value, "postal_address": addresses[row_id]}
        for row_id, value in zip(latest, values, strict=True)
        if row_id in addresses
    ]
    kept = [value for row_id, value in zip(latest, values, strict=True) if row_id not in addresses]
    if given:
        await connection.execute(
            database.upsert(_CUSTOMERS, ["id"], [*_UPDATED_COLUMNS, "postal_address"]), given
        )
    if kept:
        await connection.execute(database.upsert(_CUSTOMERS, ["id"], _UPDATED_COLUMNS), kept)
    ids = list(latest)
    points = dict.fromkeys(
        (row.id, kind, address) for row in latest.values() for kind, address in row.contact_points()
    )
    new_point = {"opted_out": False, "disabled": False, "disabled_reason": None, "updated_at": now}
    await _replace_children(
        database, connection, _CONTACT_POINTS, "address", ids, points, new_point, consent=True
    )
    topics = dict.fromkeys(
        (row.id, kind, value) for row in latest.values() for kind, value in row.subscriptions()
    )
    await _replace_children(database, connection, _SUBSCRIPTIONS, "value", ids, topics, {})


async def _replace_children(
    database: Database,
    connection: AsyncConnection,
    table: Table,
    value_column: str,
    customer_ids: list[str],
    wanted: dict[tuple[str, str, str], None],
    defaults: Mapping[str, object],
    *,
    consent: bool = False,
) -> None:
    """Make the ``(customer_id, kind, value)`` rows of these customers exactly ``wanted``'s keys.

    Rows already present are left untouched (their ids and flags survive a re-import);
    only the difference is written, so re-importing an unchanged file writes nothing here.

    ``consent`` (contact points): a customer opted out of every address they had (the
    one-click unsubscribe, a STOP on their only number) is opted out on the addresses this
    adds too: a rotated push token or a new number must not bring back the messages they
    stopped. An email address that differs only in case from one it replaces keeps that
    one's opt-out and disabled flags (a CRM that changed ``Jane.Doe@`` to ``jane.doe@``).
    """
    value = table.c[value_column]
    existing: dict[tuple[str, str, str], int] = {}
    opted_out: set[int] = set()
    columns = [table.c.id, table.c.customer_id, table.c.kind, value]
    if consent:
        columns.append(table.c.opted_out)
    for chunk in _chunks(customer_ids):
        query = select(*columns).where(table.c.customer_id.in_(chunk))
        for found_row in await connection.execute(query):
            existing[(found_row[1], found_row[2], found_row[3])] = found_row[0]
            if consent and found_row[4]:
                opted_out.add(found_row[0])
    stale = {key: row_id for key, row_id in existing.items() if key not in wanted}
    unsubscribed: set[str] = set()
    if consent:
        opted_in = {key[0] for key, row_id in existing.items() if row_id not in opted_out}
        unsubscribed = {key[0] for key in existing} - opted_in
        # An email address that changed only in case is the same contact point, written
        # anew: its id (the deliveries waiting for it), opt-out and disabled flags stay.
        by_case = {(key[0], key[2].lower()): key for key in stale if key[1] == "email"}
        for customer_id, kind, found in wanted:
            old = by_case.pop((customer_id, found.lower()), None) if kind == "email" else None
            if old is not None and (customer_id, kind, found) not in existing:
                await connection.execute(
                    update(table).where(table.c.id == stale.pop(old)).values({value: found})
                )
                existing[(customer_id, kind, found)] = -1
    for stale_ids in _chunks(list(stale.values())):
        if consent:
            await _cancel_waiting(connection, stale_ids, defaults["updated_at"])
        await connection.execute(delete(table).where(table.c.id.in_(stale_ids)))
    new: list[dict[str, object]] = []
    for customer_id, kind, found in wanted:
        if (customer_id, kind, found) in existing:
            continue
        row = {"customer_id": customer_id, "kind": kind, value_column: found, **defaults}
        if customer_id in unsubscribed:
            row["opted_out"] = True
        new.append(row)
    if new:
        statement = database.insert_ignoring_duplicates(table, "customer_id", "kind", value_column)
        await connection.execute(statement, new)


async def _cancel_waiting(connection: AsyncConnection, point_ids: list[int], now: object) -> None:
    """Cancel the deliveries still waiting to go to these contact points, about to be
    removed: held for quiet hours or a retry, one would otherwise still go to an address the
    customer's record no longer has (a number given to someone else)."""
    cancelled = (
        (
            await connection.execute(
                update(_DELIVERIES)
                .where(
                    _DELIVERIES.c.contact_point_id.in_(point_ids), _DELIVERIES.c.state == "pending"
                )
                .values(state="cancelled", last_error=REMOVED)
                .returning(_DELIVERIES.c.id)
            )
        )
        .scalars()
        .all()
    )
    if cancelled:
        await connection.execute(
            insert(_DELIVERY_EVENTS),
            [
                {"delivery_id": i, "at": now, "state": "cancelled", "detail": REMOVED}
                for i in cancelled
            ],
        )


def _chunks(items: list[T]) -> Iterator[list[T]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


__all__ = [
    "FORMATS",
    "ImportInputError",
    "ImportResult",
    "RowError",
    "detect_format",
    "import_customers",
]


class CustomerExists(ValueError):
    """A customer to be created only is already in the store."""

    def __init__(self, customer_ids: list[str]) -> None:
        super().__init__(f"customer {', '.join(map(repr, customer_ids))} exists")
        self.customer_ids = customer_ids


CUSTOMER_LOCKS = 0x6375
"""The first key of the transaction-scoped advisory locks (PostgreSQL) that make "is this
customer new?" and the write one step: two requests creating one id at once (the row does
not exist yet, so there is no row to lock) queue on the lock instead of both finding none."""


async def upsert_customers(
    database: Database,
    rows: list[CustomerRow],
    now: datetime,
    also: Callable[[AsyncConnection], Awaitable[None]] | None = None,
    *,
    create_only: bool = False,
) -> set[str]:
    """Create or replace these customers (with their contact points and subscriptions) in
    one transaction, exactly as an import of the same rows would; ``also`` writes in the
    same transaction (the audit entry). Returns the ids that were new. ``create_only``:
    :class:`CustomerExists` (and nothing written) if any already is in the store.

    Whether a customer is new is read in the writing transaction, after the writers of the
    same ids are serialised (SQLite's BEGIN IMMEDIATE; on PostgreSQL an advisory lock per
    id), so of two concurrent creations of one id exactly one is told it created it."""
    ids = sorted({row.id for row in rows})
    async with database.begin() as connection:
        if database.dialect == "postgresql":
            for customer_id in ids:  # in one order: two writers never wait on each other
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:space, hashtext(:id))"),
                    {"space": CUSTOMER_LOCKS, "id": customer_id},
                )
        existing = set(
            (
                await connection.execute(select(_CUSTOMERS.c.id).where(_CUSTOMERS.c.id.in_(ids)))
            ).scalars()
        )
        if create_only and existing:
            raise CustomerExists(sorted(existing))
        await _write_batch(database, connection, rows, now)
        if also is not None:
            await also(connection)
    return set(ids) - existing
