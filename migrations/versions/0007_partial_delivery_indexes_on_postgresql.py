"""on PostgreSQL the claim index holds only claimable deliveries, and the provider message
id index only deliveries that have one

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Every change of a delivery's state is an update that PostgreSQL cannot keep on the same
index entries (the state is indexed), so each one adds an entry to every index of the
table: a delivery written once and updated twice (claimed, sent) made fifteen index
entries. The claim index is only read for deliveries that are ``pending`` or ``sending``,
and the provider message id only looked up when there is one; as partial indexes, a sent
delivery no longer enters the first, and a delivery without an id yet not the second
(three entries fewer per message), and the claim index stays the size of the work still
to do instead of growing with every message ever sent. The claim queries name one state,
which PostgreSQL proves implies the predicate.

SQLite keeps both indexes whole: its planner uses a partial index only when the query
repeats the index's condition word for word.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIMABLE = sa.text("state IN ('pending', 'sending')")
HAS_ID = sa.text("provider_message_id IS NOT NULL")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _replace(claim_where=CLAIMABLE, pmid_where=HAS_ID)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _replace(claim_where=None, pmid_where=None)


def _replace(claim_where: sa.TextClause | None, pmid_where: sa.TextClause | None) -> None:
    op.drop_index("ix_deliveries_state_next_attempt_at_id", table_name="deliveries")
    op.create_index(
        "ix_deliveries_state_next_attempt_at_id",
        "deliveries",
        ["state", "next_attempt_at", "id"],
        postgresql_where=claim_where,
    )
    op.drop_index("ix_deliveries_provider_message_id", table_name="deliveries")
    op.create_index(
        "ix_deliveries_provider_message_id",
        "deliveries",
        ["provider_message_id"],
        postgresql_where=pmid_where,
    )
