"""ledger dead letters: stream entries the drainer could not write

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 17:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None
# Only adds a table that older code never reads.
expand_only = True


def upgrade() -> None:
    op.create_table(
        "ledger_dead_letters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("stream_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_ledger_dead_letters_request_id", "ledger_dead_letters", ["request_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_dead_letters_request_id", table_name="ledger_dead_letters")
    op.drop_table("ledger_dead_letters")
