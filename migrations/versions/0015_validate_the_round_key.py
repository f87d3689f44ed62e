"""on PostgreSQL: validate the deliveries' key to their round and incident

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06

Migration 0014 adds the key NOT VALID, which holds for every write from then on without
reading the table. Validating it reads the whole table (every delivery's round and incident
are checked once) without blocking writes, outside the migration's transaction; it is a
migration of its own so that one stopped halfway runs again: validating a key already valid
does nothing. SQLite checked its rebuilt table in 0014.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE deliveries VALIDATE CONSTRAINT fk_deliveries_round_id_rounds")


def downgrade() -> None:
    """Nothing to undo: 0014's downgrade drops the key."""
