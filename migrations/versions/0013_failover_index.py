"""deliveries: an index on the delivery each failed over from

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

Deleting a delivery sets ``failover_from_id`` to NULL on the deliveries that failed over
from it (the foreign key's ON DELETE SET NULL). With no index on that column, both
PostgreSQL and SQLite looked for them by reading the whole table, once per deleted
delivery: a purge (migration 0012), or a customer's erasure, on a table of millions. The
index is partial (only deliveries that failed over, few, are in it), so a round's inserts
do not touch it.

On PostgreSQL it is built CONCURRENTLY, outside the migration's transaction, so that
writes go on while it reads the table; this migration does nothing else, so that one
stopped halfway runs again from the start: a concurrent build that failed leaves an invalid
index behind, which is dropped first.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAILOVER = "ix_deliveries_failover_from_id"


def upgrade() -> None:
    where = sa.text("failover_from_id IS NOT NULL")
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(FAILOVER, "deliveries", ["failover_from_id"], sqlite_where=where)
        return
    with op.get_context().autocommit_block():
        op.drop_index(
            FAILOVER, table_name="deliveries", postgresql_concurrently=True, if_exists=True
        )
        op.create_index(
            FAILOVER,
            "deliveries",
            ["failover_from_id"],
            postgresql_where=where,
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    op.drop_index(FAILOVER, table_name="deliveries")
