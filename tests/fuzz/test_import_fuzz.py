"""Customer import, whole files: whatever the bytes, the importer either refuses the file
with ImportInputError (naming it) or imports the good rows and reports each bad one with its
``file:line`` and the field at fault. Never another exception, never a row without a place.

tests/unit/test_customer_rows.py fuzzes one record at a time; here the file reader is in the
loop too: encodings, BOMs, quoting across lines, ragged rows, NUL bytes, over-long lines,
CRLF, and a few files through :func:`import_customers` into a real store.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broadcaster.clock import FakeClock
from broadcaster.customers.importer import (
    ImportInputError,
    _Reader,
    import_customers,
)
from broadcaster.customers.rows import CSV_COLUMNS, RowError
from broadcaster.store import Database
from broadcaster.store.migrate import upgrade
from tests.reliability.common import START

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GOOD_CSV = (
    "id,name,language,timezone,email,phone,components,regions\n"
    "C1,Ann,en,Europe/Amsterdam,ann@example.org,+31612345678,payments,north\n"
    'C2,"Bob, Jr.",nl,Europe/Amsterdam,bob@example.org,,payments;web,\n'
)
GOOD_JSONL = (
    json.dumps({"id": "C1", "name": "Ann", "email": "ann@example.org", "components": ["x"]})
    + "\n"
    + json.dumps({"id": "C2", "name": "Bob", "phone": "+31612345678", "regions": ["north"]})
    + "\n"
)
PIECES = [
    ",",
    '"',
    "\n",
    "\r\n",
    "\r",
    ";",
    "\x00",
    "\ufeff",
    "\xff",
    "{",
    "}",
    "[",
    "]",
    ":",
    "é",
    "+31",
    "@",
    " ",
    "\t",
    "null",
    "true",
    "1e999",
    "\\u0000",
    "\\ud800",
]


def _lines_in(data: bytes) -> int:
    return data.count(b"\n") + 1


def _read_all(path: Path, fmt: str) -> tuple[int, list[RowError]]:
    reader = _Reader.open(path, fmt)
    rows, errors = 0, []
    try:
        while True:
            batch = reader.read_batch(7)
            rows += len(batch.rows)
            errors += batch.errors
            if batch.done:
                return rows, errors
    finally:
        reader.close()


def _check(data: bytes, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"customers.{fmt}"
        path.write_bytes(data)
        try:
            _rows, errors = _read_all(path, fmt)
        except ImportInputError as exc:
            assert str(path) in str(exc) or str(exc).startswith(str(path)), exc
            assert fmt == "csv", f"a JSONL file refused as a whole: {exc}"
            return
        for error in errors:
            assert error.source == str(path)
            assert 1 <= error.line <= _lines_in(data), (error, data)
            assert error.problems and all(p.message for p in error.problems), error
            assert str(error).startswith(f"{path}:{error.line}: ")


@st.composite
def mutated(draw: st.DrawFn, seed: str) -> bytes:
    text = seed
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        piece = draw(st.sampled_from(PIECES) | st.text(max_size=4))
        if draw(st.booleans()):
            text = text[:at] + piece + text[at:]
        else:
            text = text[:at] + text[at + draw(st.integers(1, 10)) :]
    encoding = draw(st.sampled_from(["utf-8", "latin-1", "utf-16"]))
    return text.encode(encoding, errors="replace")


@FUZZ
@given(data=st.binary(max_size=600), fmt=st.sampled_from(["csv", "jsonl"]))
def test_arbitrary_bytes(data: bytes, fmt: str) -> None:
    _check(data, fmt)


@FUZZ
@given(data=mutated(GOOD_CSV))
def test_mutated_csv(data: bytes) -> None:
    _check(data, "csv")


@FUZZ
@given(data=mutated(GOOD_JSONL))
def test_mutated_jsonl(data: bytes) -> None:
    _check(data, "jsonl")


@FUZZ
@given(
    header=st.lists(st.sampled_from(CSV_COLUMNS), min_size=1, max_size=6, unique=True),
    rows=st.lists(st.lists(st.text(max_size=12) | st.sampled_from(PIECES), max_size=8), max_size=5),
)
def test_ragged_rows_under_a_valid_header(header: list[str], rows: list[list[str]]) -> None:
    lines = [",".join(header)] + [",".join(cells) for cells in rows]
    _check("\n".join(lines).encode("utf-8", "surrogatepass"), "csv")


def test_an_over_long_line_is_one_located_error(tmp_path: Path) -> None:
    path = tmp_path / "customers.jsonl"
    huge = json.dumps({"id": "C9", "name": "x" * 2_000_000})
    path.write_text(GOOD_JSONL + huge + "\n" + GOOD_JSONL, encoding="utf-8")
    rows, errors = _read_all(path, "jsonl")
    assert rows == 4
    assert [e.line for e in errors] == [3]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated(GOOD_CSV) | mutated(GOOD_JSONL).map(lambda b: b"JSONL" + b))
def test_through_the_store(data: bytes) -> None:
    """A few mutated files imported for real: the counts add up, nothing raises."""
    fmt = "jsonl" if data.startswith(b"JSONL") else "csv"
    data = data.removeprefix(b"JSONL")
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{folder}/store.db"
        upgrade(url)
        path = Path(folder) / f"customers.{fmt}"
        path.write_bytes(data)

        async def run() -> None:
            database = Database(url)
            errors: list[RowError] = []
            try:
                result = await import_customers(
                    database, path, clock=FakeClock(START), on_error=errors.append
                )
            except ImportInputError:
                assert fmt == "csv"
                return
            finally:
                await database.dispose()
            assert result.rejected == len(errors)
            assert all(e.line >= 1 and e.problems for e in errors)

        asyncio.run(run())
