"""follow-ups keep the rule's owner reference, so that only the people it named may claim them

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

A claim makes the claimer the task's owner, who may then record its outcome. Anybody could
claim any open task, bypassing the rights a waiver or an outcome recorded for someone else
need, and taking a task the rules gave to a named person or group. A claim is now allowed
to the people the rule's owner reference named (a group's members, the on-call person), so
the task keeps that reference. Older tasks have none: their owner, escalation targets, a
manager of the owner or an admin may claim them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("followups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_ref", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("followups", schema=None) as batch_op:
        batch_op.drop_column("owner_ref")
