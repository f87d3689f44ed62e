"""incident_updates: the rules' compensation as data, told in each customer's language

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08

The compensation the rules grant at a resolution was written into ``compensation`` as
English text ("a credit of 10.00 EUR"), and reached Dutch customers' messages as it was.
``compensation_offers`` keeps it as data instead: a JSON list of ``{"kind", "amount",
"currency", "rule"}``, the amount the decimal as the rules wrote it; the templates say it
in each customer's language, the amount written by Babel (``€ 10,00``). ``compensation``
keeps only the operator's own words. Resolutions from before keep their text as it is (it
cannot be told apart from an operator's). Added in place, nullable and without a default:
a change to the catalogue on PostgreSQL and SQLite alike, the table is not rewritten.

The downgrade writes the offers back as the text the version before wrote ("a credit of
10.00 EUR"; several joined by "; ") where ``compensation`` is empty, so that a resolution
not yet sent still tells its compensation, then drops the column (SQLite copies the table).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("incident_updates", sa.Column("compensation_offers", sa.JSON(), nullable=True))


# The text the version before wrote ("a credit of 10.00 EUR"), offers joined by "; ", in SQL
# (so that ``--sql`` writes it too); an entry that is not an offer adds nothing.
BACK_TO_TEXT = {
    "postgresql": """
        UPDATE incident_updates SET compensation = (
            SELECT string_agg(
                'a ' || (o ->> 'kind') || ' of ' || (o ->> 'amount') || ' ' || (o ->> 'currency'),
                '; ' ORDER BY n
            )
            FROM json_array_elements(compensation_offers) WITH ORDINALITY AS t(o, n)
        )
        WHERE compensation IS NULL AND json_typeof(compensation_offers) = 'array'
    """,
    "sqlite": """
        UPDATE incident_updates SET compensation = (
            SELECT group_concat(
                'a ' || json_extract(value, '$.kind') || ' of ' || json_extract(value, '$.amount')
                || ' ' || json_extract(value, '$.currency'),
                '; '
            )
            FROM (
                SELECT value FROM json_each(incident_updates.compensation_offers) ORDER BY key
            )
        )
        WHERE compensation IS NULL AND json_type(compensation_offers) = 'array'
    """,
}


def downgrade() -> None:
    op.execute(BACK_TO_TEXT[op.get_context().dialect.name])
    with op.batch_alter_table("incident_updates", schema=None) as batch_op:
        batch_op.drop_column("compensation_offers")
