"""delivery tracking and failover

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "delivery_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "delivery_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("provider_message_id", sa.String(length=300), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_delivery_events_delivery_id_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_events")),
    )
    with op.batch_alter_table("delivery_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_delivery_events_delivery_id"), ["delivery_id"], unique=False
        )

    with op.batch_alter_table("contact_points", schema=None) as batch_op:
        batch_op.alter_column(
            "address",
            existing_type=sa.VARCHAR(length=512),
            type_=sa.String(length=2048),
            existing_nullable=False,
        )

    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("channel_order", sa.Text(), nullable=True))

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "failover_from_id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                nullable=True,
            )
        )
        batch_op.add_column(sa.Column("failover_to", sa.String(length=32), nullable=True))
        batch_op.alter_column(
            "address",
            existing_type=sa.VARCHAR(length=512),
            type_=sa.String(length=2048),
            existing_nullable=False,
        )
        batch_op.create_index(
            "ix_deliveries_provider_message_id", ["provider_message_id"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_deliveries_failover_from_id_deliveries"),
            "deliveries",
            ["failover_from_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_deliveries_failover_from_id_deliveries"), type_="foreignkey"
        )
        batch_op.drop_index("ix_deliveries_provider_message_id")
        batch_op.alter_column(
            "address",
            existing_type=sa.String(length=2048),
            type_=sa.VARCHAR(length=512),
            existing_nullable=False,
        )
        batch_op.drop_column("failover_to")
        batch_op.drop_column("failover_from_id")

    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_column("channel_order")

    with op.batch_alter_table("contact_points", schema=None) as batch_op:
        batch_op.alter_column(
            "address",
            existing_type=sa.String(length=2048),
            type_=sa.VARCHAR(length=512),
            existing_nullable=False,
        )

    with op.batch_alter_table("delivery_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_delivery_events_delivery_id"))

    op.drop_table("delivery_events")
