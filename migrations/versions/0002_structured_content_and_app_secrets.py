"""structured content and app secrets

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


COLUMNS = (
    ("actions", sa.Text()),
    ("workaround", sa.Text()),
    ("expected_resolution_at", sa.DateTime(timezone=True)),
    ("responsibility", sa.Text()),
    ("regret", sa.Text()),
    ("remedy", sa.Text()),
    ("prevention", sa.Text()),
    ("compensation", sa.Text()),
)

# Adding and dropping plain nullable columns needs no table copy on SQLite (3.35+ drops
# columns natively), so no batch block: that also keeps offline (--sql) mode working.


def upgrade() -> None:
    op.create_table(
        "app_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_app_secrets")),
    )
    for name, type_ in COLUMNS:
        op.add_column("incident_updates", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    for name, _ in reversed(COLUMNS):
        op.drop_column("incident_updates", name)
    op.drop_table("app_secrets")
