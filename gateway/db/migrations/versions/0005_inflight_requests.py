"""inflight requests: the in-flight journal of processes without Redis

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 02:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None
# Only adds a table that older code never reads.
expand_only = True


def upgrade() -> None:
    op.create_table(
        "inflight_requests",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("seen", sa.Float(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )
    op.create_index("ix_inflight_requests_seen", "inflight_requests", ["seen"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_inflight_requests_seen", table_name="inflight_requests")
    op.drop_table("inflight_requests")
