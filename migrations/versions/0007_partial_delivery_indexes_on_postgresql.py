"""on PostgreSQL: the claim index holds only pending deliveries, a lease index the ones
being sent, and the provider message id index only deliveries that have one

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

PostgreSQL keeps every version of an updated row until VACUUM, and a change of a
delivery's state cannot reuse the old version's index entries (the state is indexed): each
one adds an entry to every index of the table, and leaves the old entries behind, dead.

- The claim index (state, next_attempt_at, id) held the ``sending`` deliveries too, for the
  search for expired leases. That search cannot be bounded in it (the lease time is not in
  it), so it visited every dead ``sending`` entry that every sent delivery had left: in a
  round of 1,000,000, over half of PostgreSQL's work by the end. It now holds only
  ``pending`` deliveries, and a partial index on (lease_expires_at, id) for ``sending``
  ones serves the lease search in lease order (see ``broadcaster.dispatch.worker._claim``).
- The provider message id index is only looked up for a known id; partial, a delivery
  without one (every delivery until it is sent) is not in it.

On PostgreSQL a message now adds four index entries when it is written, four when it is
claimed and four when it is sent (for a channel that gives a provider id), where it was
five each time. SQLite updates rows in place and leaves nothing dead: it keeps its indexes
whole, and gets the lease index whole too (one schema; the lease search walks it in lease
order there as well).

The claim queries name their state as a constant, not a parameter, so that even a generic
plan of the prepared statement can prove it implies an index's condition.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIM = "ix_deliveries_state_next_attempt_at_id"
LEASE = "ix_deliveries_lease_expires_at_id"
PMID = "ix_deliveries_provider_message_id"


def upgrade() -> None:
    op.create_index(
        LEASE,
        "deliveries",
        ["lease_expires_at", "id"],
        postgresql_where=sa.text("state = 'sending'"),
    )
    if op.get_bind().dialect.name == "postgresql":
        _claim_and_pmid("state = 'pending'", "provider_message_id IS NOT NULL")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _claim_and_pmid(None, None)
    op.drop_index(LEASE, table_name="deliveries")


def _claim_and_pmid(claim_where: str | None, pmid_where: str | None) -> None:
    op.drop_index(CLAIM, table_name="deliveries")
    op.create_index(
        CLAIM,
        "deliveries",
        ["state", "next_attempt_at", "id"],
        postgresql_where=sa.text(claim_where) if claim_where else None,
    )
    op.drop_index(PMID, table_name="deliveries")
    op.create_index(
        PMID,
        "deliveries",
        ["provider_message_id"],
        postgresql_where=sa.text(pmid_where) if pmid_where else None,
    )
