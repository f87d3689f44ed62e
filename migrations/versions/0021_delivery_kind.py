"""deliveries.kind: what a held message says when it stands in for earlier ones

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07

A message held for the customer's quiet hours cancels their earlier held messages of the
incident, so that the night's rounds do not arrive as a flood at its end. The one left must
then say what the cancelled ones would have: the first notice to a customer never told of
the incident, an update where an operator's news was held. ``deliveries.kind`` keeps that
(NULL: the round's kind). Added in place, nullable and without a default: the table is not
rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("kind", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("kind")
