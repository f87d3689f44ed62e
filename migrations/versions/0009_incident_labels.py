"""incidents keep their source's labels, for the rules' incident.labels conditions

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

Feeds and webhooks read labels (an Alertmanager alert's, ``gtfs.cause``, ``cap.event``)
and the rules can match them (``match: {incident: {labels: {test: "true"}}}``), but the
labels were never stored, so such a rule never matched.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("labels", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_column("labels")
