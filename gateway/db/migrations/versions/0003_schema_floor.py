"""schema floor: the oldest code revision that serves on this database

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 16:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
# Only adds a table that older code never reads.
expand_only = True


def upgrade() -> None:
    op.create_table(
        "schema_floor",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("schema_floor")
