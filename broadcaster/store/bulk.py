"""Many rows as one bound parameter: a table to join, select from or update from.

Dispatch writes a batch's outcomes (hundreds of rows) several times a second. Written as
``executemany`` of one statement per row, SQLAlchemy binds and converts every parameter of
every row in Python (a timestamp formatted per row on SQLite), which profiled as the larger
part of the store's CPU per delivery. Passed as one parameter instead, a batch costs one
conversion, and the statement is set-based: ``UPDATE … FROM`` and ``INSERT … SELECT``.

The rows travel as one array per column on PostgreSQL (``unnest`` of typed arrays) and as
one JSON array of arrays on SQLite (``json_each``); values must be what JSON carries
(ints, strings, None), in tuples.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, FromClause, bindparam, func, select, type_coerce
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import String, TypeEngine


def rows_table(
    dialect: str,
    name: str,
    columns: Sequence[tuple[str, TypeEngine[Any]]],
    rows: list[tuple[Any, ...]] | None = None,
) -> FromClause:
    """``rows`` as a table with ``columns`` (name, type), bound as parameters named after
    ``name`` (unique within one statement). Without ``rows`` the parameters are left
    unbound, for a statement built once and executed with :func:`rows_params` each time."""
    if dialect == "postgresql":
        arrays = [
            bindparam(f"{name}_{column}", type_=ARRAY(kind))
            if rows is None
            else bindparam(f"{name}_{column}", [row[i] for row in rows], type_=ARRAY(kind))
            for i, (column, kind) in enumerate(columns)
        ]
        return (
            func.unnest(*arrays)
            .table_valued(*(column for column, _ in columns))
            .render_derived(name=name)
        )
    document = (
        bindparam(f"{name}_rows", type_=String())
        if rows is None
        else bindparam(f"{name}_rows", json.dumps(rows), type_=String())
    )
    each = func.json_each(document).table_valued("value").alias(f"{name}_json")
    return select(
        *(
            type_coerce(func.json_extract(each.c.value, f"$[{i}]"), kind).label(column)
            for i, (column, kind) in enumerate(columns)
        )
    ).subquery(name)


def rows_params(
    dialect: str,
    name: str,
    columns: Sequence[tuple[str, TypeEngine[Any]]],
    rows: list[tuple[Any, ...]],
) -> dict[str, Any]:
    """The parameters of an unbound :func:`rows_table` of that ``name`` holding ``rows``."""
    if dialect == "postgresql":
        return {
            f"{name}_{column}": [row[i] for row in rows] for i, (column, _) in enumerate(columns)
        }
    return {f"{name}_rows": json.dumps(rows)}


def joined_by_key(dialect: str, condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """``condition`` on a table updated from a :func:`rows_table`, marked for SQLite's
    planner as true for most rows (``likely``), so that it looks each batch row up by its
    key instead of walking an index on ``condition``'s column for every row it matches and
    scanning the batch for each. Without it, the ``UPDATE deliveries … FROM`` of a batch
    walked every delivery in state ``sending``. PostgreSQL plans this from statistics."""
    return func.likely(condition) if dialect == "sqlite" else condition
