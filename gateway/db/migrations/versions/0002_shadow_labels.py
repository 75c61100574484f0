"""shadow mode: ledger kind, router labels

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 12:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
# A defaulted column and a new table: code of revision 0001 still writes its ledger rows.
expand_only = True


def upgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="client", nullable=False)
        )

    op.create_table(
        "router_labels",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=True),
        sa.Column("weak", sa.String(length=200), nullable=False),
        sa.Column("strong", sa.String(length=200), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("better", sa.String(length=8), nullable=True),
        sa.Column("weak_ok", sa.Boolean(), nullable=True),
        sa.Column("strong_ok", sa.Boolean(), nullable=True),
        sa.Column("features", sa.JSON(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("shadow_cost_nanos", sa.BigInteger(), nullable=False),
        sa.Column("judge_cost_nanos", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )
    with op.batch_alter_table("router_labels", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_router_labels_ts"), ["ts"], unique=False)
        batch_op.create_index("ix_router_labels_team_ts", ["team_id", "ts"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("router_labels", schema=None) as batch_op:
        batch_op.drop_index("ix_router_labels_team_ts")
        batch_op.drop_index(batch_op.f("ix_router_labels_ts"))

    op.drop_table("router_labels")
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_column("kind")
