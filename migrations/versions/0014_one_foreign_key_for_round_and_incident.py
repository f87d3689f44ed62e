"""deliveries: the round and its incident in one foreign key

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06

A round's insert checked four foreign keys for every delivery (its round, its incident,
its customer, its contact point), over half of PostgreSQL's time in that insert
(docs/performance.md, fifteenth round). The incident's key followed from the round's: a
round belongs to one incident. Now one key, (round_id, incident_id) referring to the
round's (id, incident_id), checks both with one lookup, and also holds what the two did
not: that a delivery's incident is its round's. Deleting a round (or its incident, whose
rounds go with it) still deletes its deliveries.

On PostgreSQL the new key is added NOT VALID, which takes effect for every write at once
without reading the table; migration 0015 validates it. On SQLite the table is rebuilt (its
foreign keys cannot be altered in place); the partial index of migration 0013 is dropped and
made again around it, so that its condition is not lost on the way.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROUND_KEY = "uq_rounds_id_incident_id"
ROUND_FK = "fk_deliveries_round_id_rounds"
INCIDENT_FK = "fk_deliveries_incident_id_incidents"
FAILOVER = "ix_deliveries_failover_from_id"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_unique_constraint(ROUND_KEY, "rounds", ["id", "incident_id"])
        op.drop_constraint(INCIDENT_FK, "deliveries", type_="foreignkey")
        op.drop_constraint(ROUND_FK, "deliveries", type_="foreignkey")
        op.create_foreign_key(
            ROUND_FK,
            "deliveries",
            "rounds",
            ["round_id", "incident_id"],
            ["id", "incident_id"],
            ondelete="CASCADE",
            postgresql_not_valid=True,
        )
        return
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.create_unique_constraint(ROUND_KEY, ["id", "incident_id"])
    op.drop_index(FAILOVER, table_name="deliveries")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_constraint(INCIDENT_FK, type_="foreignkey")
        batch_op.drop_constraint(ROUND_FK, type_="foreignkey")
        batch_op.create_foreign_key(
            ROUND_FK,
            "rounds",
            ["round_id", "incident_id"],
            ["id", "incident_id"],
            ondelete="CASCADE",
        )
    _failover_index()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(ROUND_FK, "deliveries", type_="foreignkey")
        op.create_foreign_key(
            ROUND_FK, "deliveries", "rounds", ["round_id"], ["id"], ondelete="CASCADE"
        )
        op.create_foreign_key(
            INCIDENT_FK, "deliveries", "incidents", ["incident_id"], ["id"], ondelete="CASCADE"
        )
        op.drop_constraint(ROUND_KEY, "rounds", type_="unique")
        return
    op.drop_index(FAILOVER, table_name="deliveries")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_constraint(ROUND_FK, type_="foreignkey")
        batch_op.create_foreign_key(ROUND_FK, "rounds", ["round_id"], ["id"], ondelete="CASCADE")
        batch_op.create_foreign_key(
            INCIDENT_FK, "incidents", ["incident_id"], ["id"], ondelete="CASCADE"
        )
    _failover_index()
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.drop_constraint(ROUND_KEY, type_="unique")


def _failover_index() -> None:
    op.create_index(
        FAILOVER,
        "deliveries",
        ["failover_from_id"],
        sqlite_where=sa.text("failover_from_id IS NOT NULL"),
    )
