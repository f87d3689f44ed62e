"""rounds keep their capacity warning, so that every daemon reports it and a restart keeps it

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

The leader works out after each round whether the channels' rates can carry it within its
cadence. The warning lived in that daemon's memory only: the other daemons' health checks
never showed it, a restart lost it, and a former leader kept reporting it for good.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("capacity_warning", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.drop_column("capacity_warning")
