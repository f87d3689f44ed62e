"""deliveries: the promise a message makes when it is not the round's

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

A round's messages say when the next update comes: the next round's due time. For a
customer whose quiet hours will hold that round, the honest promise is the end of the
window ("next update by 07:00", not "by 22:10"). The rules decide that per customer when
the round is written, and ``deliveries.promised_at`` keeps it (NULL: the round's). Added
in place, nullable and without a default: a change to the catalogue on PostgreSQL and
SQLite alike, the table is not rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("promised_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("promised_at")
