"""message retention: incidents record when their messages were purged, and deliveries get
an index on the delivery they failed over from

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

``retention.messages`` purges the deliveries, delivery history and staff notices of
incidents closed long enough ago (``broadcaster.incidents.retention``). The incident keeps
its delivery counts by round, channel and state (``incidents.delivery_counts``), written
before the first delivery goes, which its report shows from then on, and the time the purge
was done (``incidents.messages_purged_at``), after which a purge does not look at it again.

Deleting a delivery sets ``failover_from_id`` to NULL on the deliveries that failed over
from it (the foreign key's ON DELETE SET NULL). With no index on that column, both
PostgreSQL and SQLite looked for them by reading the whole table, once per deleted
delivery: a purge, or a customer's erasure, on a table of millions. The index is partial
(only deliveries that failed over, few, are in it), so a round's inserts do not touch it;
on PostgreSQL it is built concurrently, so that writes go on while it is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAILOVER = "ix_deliveries_failover_from_id"


def upgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery_counts", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("messages_purged_at", sa.DateTime(timezone=True), nullable=True)
        )
    where = sa.text("failover_from_id IS NOT NULL")
    if op.get_bind().dialect.name == "postgresql":
        # Built CONCURRENTLY, outside the migration's transaction: a plain CREATE INDEX
        # blocks every write to the table while it reads it all, and the deployments that
        # need retention have the largest deliveries tables.
        with op.get_context().autocommit_block():
            op.create_index(
                FAILOVER,
                "deliveries",
                ["failover_from_id"],
                postgresql_where=where,
                postgresql_concurrently=True,
            )
    else:
        op.create_index(FAILOVER, "deliveries", ["failover_from_id"], sqlite_where=where)


def downgrade() -> None:
    op.drop_index(FAILOVER, table_name="deliveries")
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_column("messages_purged_at")
        batch_op.drop_column("delivery_counts")
