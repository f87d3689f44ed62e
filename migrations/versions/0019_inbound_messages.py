"""inbound_messages: the inbound SMS keywords already applied, by provider id

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07

A Twilio inbound request is signed but carries no time: a START captured on its way could
be sent again after the customer's STOP and subscribe them again. The daemon records the
MessageSid of each STOP or START it applies and ignores one it has seen. Only the id, the
keyword and when it came are kept (no number, no text).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbound_messages",
        sa.Column("provider_message_id", sa.String(64), nullable=False),
        sa.Column("keyword", sa.String(16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("provider_message_id", name="pk_inbound_messages"),
    )


def downgrade() -> None:
    op.drop_table("inbound_messages")
