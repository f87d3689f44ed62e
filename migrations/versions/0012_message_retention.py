"""message retention: incidents keep their delivery counts and when their messages were
purged

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

``retention.messages`` purges the deliveries, delivery history and staff notices of
incidents closed long enough ago (``broadcaster.incidents.retention``). The incident keeps
its delivery counts by round, channel and state (``incidents.delivery_counts``), written
before the first delivery goes, which its report shows from then on, and the time the purge
was done (``incidents.messages_purged_at``), after which a purge does not look at it again.
The index a purge needs is migration 0013's.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery_counts", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("messages_purged_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_column("messages_purged_at")
        batch_op.drop_column("delivery_counts")
