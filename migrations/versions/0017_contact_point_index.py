"""deliveries: an index on the contact point each was written for

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07

Removing a contact point (a re-import that no longer lists an address, a customer's
erasure) sets ``contact_point_id`` to NULL on its deliveries (the foreign key's ON DELETE
SET NULL), and an import now cancels the ones still waiting to be sent to it. With no index
on that column both PostgreSQL and SQLite read the whole deliveries table for each address
removed: 200 changed addresses beside 500,000 deliveries took 9 s. The index is partial
(deliveries to no contact point, a ``customer`` channel's, are not in it).

As 0013: built CONCURRENTLY on PostgreSQL, outside the migration's transaction, and an
invalid index left by a build that failed is dropped first, so that the migration runs
again from the start.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONTACT_POINT = "ix_deliveries_contact_point_id"


def upgrade() -> None:
    where = sa.text("contact_point_id IS NOT NULL")
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(CONTACT_POINT, "deliveries", ["contact_point_id"], sqlite_where=where)
        return
    with op.get_context().autocommit_block():
        op.drop_index(
            CONTACT_POINT, table_name="deliveries", postgresql_concurrently=True, if_exists=True
        )
        op.create_index(
            CONTACT_POINT,
            "deliveries",
            ["contact_point_id"],
            postgresql_where=where,
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    op.drop_index(CONTACT_POINT, table_name="deliveries")
