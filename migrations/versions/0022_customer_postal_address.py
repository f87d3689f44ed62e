"""customers.postal_address: where a visit goes

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07

The rules can force a visit on a member of staff, whose notice named the customer, their
phone and email, but not where to go. ``customers.postal_address`` keeps the customer's
postal address as its lines joined by a newline (NULL: none on file), from the import's
``postal_address`` column and the API. Added in place, nullable and without a default:
the table is not rewritten. The downgrade drops it (SQLite copies the table).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("customers", sa.Column("postal_address", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_column("postal_address")
