"""the claim index carries the delivery id: due deliveries come in claim order from it

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23

The dispatcher claims ``ORDER BY next_attempt_at, id`` among deliveries of one state. With
an index on (state, next_attempt_at) PostgreSQL still has to sort for the ``id``, and when
its statistics say the table is nearly empty (a big round materialised since the last
autovacuum analyse) it plans to read, join and sort every due delivery to return the
batch: a 10,000 delivery round ran at half its rate. With the id in the index the order
comes from the index whatever the statistics say, and the claim stops at its limit.
SQLite's index already ends in the rowid (the id); it gets the same index for one schema.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_deliveries_state_next_attempt_at_id",
        "deliveries",
        ["state", "next_attempt_at", "id"],
    )
    op.drop_index("ix_deliveries_state_next_attempt_at", table_name="deliveries")


def downgrade() -> None:
    op.create_index(
        "ix_deliveries_state_next_attempt_at", "deliveries", ["state", "next_attempt_at"]
    )
    op.drop_index("ix_deliveries_state_next_attempt_at_id", table_name="deliveries")
