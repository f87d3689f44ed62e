"""The Alembic migrations: up, down to base and up again, on SQLite and PostgreSQL, and the
migrated schema is exactly what the models declare.

Alembic's env.py runs its own event loop (``asyncio.run``), so :func:`migrate.upgrade` and
:func:`migrate.downgrade` block; the tests here are synchronous and call them directly.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import JSON, DateTime, bindparam, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from broadcaster.store import migrate
from broadcaster.store.models import Base

T = TypeVar("T")

MODEL_TABLES = set(Base.metadata.tables)
VERSION_TABLE = "alembic_version"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    """An empty database, once per backend (PostgreSQL skips when it is not configured)."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    value: str = request.getfixturevalue(fixture)
    return value


def on_connection(url: str, work: Callable[[Connection], T]) -> T:
    """Run ``work`` on a sync view of an async connection (how Alembic itself runs)."""

    async def run() -> T:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def schema_differences(connection: Connection) -> list[Any]:
    """What autogenerate would write to bring the database to the models; [] when equal."""
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    differences: list[Any] = compare_metadata(context, Base.metadata)
    return differences


def table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def current(url: str) -> str | None:
    return asyncio.run(migrate.current_revision(url))


def revisions_base_to_head() -> list[Script]:
    scripts = ScriptDirectory.from_config(migrate.alembic_config("unused"))
    return list(reversed(list(scripts.walk_revisions("base", "heads"))))


def assert_at_head(url: str) -> None:
    assert current(url) == migrate.head_revision()
    assert on_connection(url, table_names) == MODEL_TABLES | {VERSION_TABLE}
    assert on_connection(url, schema_differences) == []


def assert_at_base(url: str) -> None:
    assert current(url) is None
    assert on_connection(url, table_names) == {VERSION_TABLE}
    # The comparison sees a missing schema: every model table (and its indexes) is to be added.
    differences = on_connection(url, schema_differences)
    assert {diff[0] for diff in differences} <= {"add_table", "add_index"}
    assert {diff[1].name for diff in differences if diff[0] == "add_table"} == MODEL_TABLES


def test_the_scripts_form_one_line_to_a_single_head() -> None:
    scripts = ScriptDirectory.from_config(migrate.alembic_config("unused"))
    assert len(scripts.get_heads()) == 1
    head = migrate.head_revision()
    assert head is not None
    chain = revisions_base_to_head()
    assert chain[0].down_revision is None
    assert chain[-1].revision == head
    for earlier, later in itertools.pairwise(chain):
        assert later.down_revision == earlier.revision


def test_empty_database_has_no_revision(url: str) -> None:
    assert current(url) is None


def test_upgrade_downgrade_upgrade(url: str) -> None:
    migrate.upgrade(url)
    assert_at_head(url)

    migrate.downgrade(url, "base")
    assert_at_base(url)

    migrate.upgrade(url)
    assert_at_head(url)


def test_upgrade_twice_is_harmless(url: str) -> None:
    migrate.upgrade(url)
    migrate.upgrade(url)
    assert_at_head(url)


def test_each_migration_steps_up_and_down(url: str) -> None:
    chain = revisions_base_to_head()
    for script in chain:
        migrate.upgrade(url, script.revision)
        assert current(url) == script.revision
    assert_at_head(url)
    for script in reversed(chain):
        migrate.downgrade(url, "-1")
        assert current(url) == script.down_revision
    assert_at_base(url)


async def test_upgrade_async_from_a_running_loop(url: str) -> None:
    await migrate.upgrade_async(url)
    assert await migrate.current_revision(url) == migrate.head_revision()


@pytest.mark.parametrize("offline_url", ["postgresql+asyncpg://offline@localhost/offline"])
def test_offline_mode_renders_sql_for_both_ways(offline_url: str) -> None:
    """``--sql`` mode (env.py's offline branch) writes the DDL without connecting.

    PostgreSQL only: on SQLite, batch mode changes a column by copying the table, which
    needs the live table to reflect, so SQLite migrations run online (``db upgrade``)."""
    config = migrate.alembic_config(offline_url)
    config.output_buffer = io.StringIO()
    command.upgrade(config, "head", sql=True)
    up = config.output_buffer.getvalue()
    for table in MODEL_TABLES:
        assert f"CREATE TABLE {table} " in up

    config = migrate.alembic_config(offline_url)
    config.output_buffer = io.StringIO()
    command.downgrade(config, "head:base", sql=True)
    down = config.output_buffer.getvalue()
    for table in MODEL_TABLES:
        assert f"DROP TABLE {table};" in down


def test_0011_keeps_older_follow_ups_without_an_owner_reference(url: str) -> None:
    """Tasks from before 0011 survive it both ways (SQLite copies the table) and have no
    owner reference: only their owner, escalation targets, managers and admins claim them."""
    migrate.upgrade(url, "0010")
    at = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)

    def seed(connection: Connection) -> None:
        for statement in (
            "INSERT INTO incidents (id, title, severity, status, source, declared_by, "
            "created_at, updated_at, rounds_made) "
            "VALUES (1, 'Down', 'critical', 'open', 'cli', 'ann', :at, :at, 0)",
            "INSERT INTO customers (id, name, language, timezone, created_at, updated_at) "
            "VALUES ('c1', 'Vera', 'en', 'UTC', :at, :at)",
            "INSERT INTO followups (incident_id, customer_id, rule, kind, owner, state, "
            "deadline_at, escalation_level, created_at) "
            "VALUES (1, 'c1', 'vip-call', 'call', 'ann', 'open', :at, 0, :at)",
        ):
            query = text(statement).bindparams(bindparam("at", at, DateTime(timezone=True)))
            connection.execute(query)
        connection.commit()

    def followups(connection: Connection) -> list[tuple[Any, ...]]:
        rows = connection.execute(text("SELECT * FROM followups")).mappings().all()
        return [(row["owner"], row["state"], row.get("owner_ref", "absent")) for row in rows]

    on_connection(url, seed)
    migrate.upgrade(url)
    assert on_connection(url, followups) == [("ann", "open", None)]
    migrate.downgrade(url, "0010")
    assert on_connection(url, followups) == [("ann", "open", "absent")]


@pytest.mark.postgres
def test_the_postgresql_steps_outside_a_transaction_run_again_after_a_stop(
    postgres_url: str,
) -> None:
    """0013 builds an index and 0015 validates a key outside the migration's transaction: a
    run stopped there leaves the work half done with the revision before. Run again, they
    finish: an index left behind (a failed concurrent build leaves one) is made anew, and
    validating a key already valid does nothing."""

    def run(sql: str) -> Callable[[Connection], None]:
        def work(connection: Connection) -> None:
            connection.exec_driver_sql(sql)
            connection.commit()

        return work

    def index_where(connection: Connection) -> str | None:
        found = connection.exec_driver_sql(
            "SELECT pg_get_expr(indpred, indrelid) FROM pg_index "
            "WHERE indexrelid = 'ix_deliveries_failover_from_id'::regclass"
        ).scalar_one()
        return None if found is None else str(found)

    migrate.upgrade(postgres_url, "0012")
    on_connection(
        postgres_url,
        run("CREATE INDEX ix_deliveries_failover_from_id ON deliveries (failover_from_id)"),
    )
    assert on_connection(postgres_url, index_where) is None  # the leftover, whole
    migrate.upgrade(postgres_url, "0014")
    assert on_connection(postgres_url, index_where) == "(failover_from_id IS NOT NULL)"
    on_connection(
        postgres_url,
        run("ALTER TABLE deliveries VALIDATE CONSTRAINT fk_deliveries_round_id_rounds"),
    )
    migrate.upgrade(postgres_url)
    assert_at_head(postgres_url)


def test_0018_keeps_the_rules_offers_as_data_and_as_their_old_text_on_the_way_down(
    url: str,
) -> None:
    """0018 adds ``incident_updates.compensation_offers`` (the rules' compensation, as data).
    Down, the offers become the text the version before wrote, where the operator wrote
    none, so that an older daemon still tells a resolution not yet sent what it gives."""
    migrate.upgrade(url, "0018")
    at = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
    credit = {"kind": "credit", "amount": "10.00", "currency": "EUR", "rule": "r1"}
    voucher = {"kind": "voucher", "amount": "5", "currency": "EUR", "rule": "r2"}

    def seed(connection: Connection) -> None:
        connection.execute(
            text(
                "INSERT INTO incidents (id, title, severity, status, source, declared_by, "
                "created_at, updated_at, rounds_made) "
                "VALUES (1, 'Down', 'major', 'resolved', 'cli', 'ann', :at, :at, 0)"
            ).bindparams(bindparam("at", at, DateTime(timezone=True)))
        )
        rows = [
            (1, None, [credit, voucher]),  # the rules' two offers
            (2, "A bunch of flowers", None),  # the operator's words
            (3, None, None),  # no compensation
            (4, "Een dagkaart", [credit]),  # both (the service never writes this)
            (5, None, []),  # an empty list
        ]
        for row_id, words, offers in rows:
            connection.execute(
                text(
                    "INSERT INTO incident_updates (id, incident_id, kind, status, message, "
                    "cause_kind, compensation, compensation_offers, author, created_at) "
                    "VALUES (:id, 1, 'resolved', 'resolved', 'Fixed.', 'unknown', :words, "
                    ":offers, 'ann', :at)"
                ).bindparams(
                    bindparam("at", at, DateTime(timezone=True)),
                    bindparam("offers", offers, JSON(none_as_null=True)),
                ),
                {"id": row_id, "words": words},
            )
        connection.commit()

    def compensation(connection: Connection) -> list[tuple[Any, ...]]:
        rows = connection.execute(text("SELECT * FROM incident_updates ORDER BY id")).mappings()
        return [(row["compensation"], row.get("compensation_offers", "absent")) for row in rows]

    on_connection(url, seed)
    migrate.downgrade(url, "0017")
    assert on_connection(url, compensation) == [
        ("a credit of 10.00 EUR; a voucher of 5 EUR", "absent"),
        ("A bunch of flowers", "absent"),
        (None, "absent"),
        ("Een dagkaart", "absent"),
        (None, "absent"),
    ]
    migrate.upgrade(url)
    assert [offers for _, offers in on_connection(url, compensation)] == [None] * 5
    assert_at_head(url)


def test_0022_adds_an_empty_postal_address_and_drops_it_keeping_the_customers(url: str) -> None:
    """Customers from before 0022 have no postal address on file; down again (SQLite copies
    the table) they are kept, their other columns as they were."""
    migrate.upgrade(url, "0021")
    at = datetime(2026, 12, 9, 9, 0, tzinfo=UTC)

    def seed(connection: Connection) -> None:
        query = text(
            "INSERT INTO customers (id, name, language, timezone, tier, created_at, updated_at) "
            "VALUES ('c1', 'Vera', 'nl', 'Europe/Amsterdam', 'vip', :at, :at)"
        ).bindparams(bindparam("at", at, DateTime(timezone=True)))
        connection.execute(query)
        connection.commit()

    def customers(connection: Connection) -> list[tuple[Any, ...]]:
        rows = connection.execute(text("SELECT * FROM customers")).mappings().all()
        return [(row["id"], row["tier"], row.get("postal_address", "absent")) for row in rows]

    def give_address(connection: Connection) -> None:
        connection.execute(text("UPDATE customers SET postal_address = 'Markt 1\nStad'"))
        connection.commit()

    on_connection(url, seed)
    migrate.upgrade(url)
    assert on_connection(url, customers) == [("c1", "vip", None)]
    on_connection(url, give_address)
    assert on_connection(url, customers) == [("c1", "vip", "Markt 1\nStad")]
    migrate.downgrade(url, "0021")
    assert on_connection(url, customers) == [("c1", "vip", "absent")]
