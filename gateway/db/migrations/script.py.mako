"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None
# Expand/contract (docs/deployment.md): True only when this migration adds and nothing else
# (tables, nullable or defaulted columns, indexes), so that code of the revision before it
# still serves on the database; a drop, rename, type change or new constraint is False.
expand_only = False


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
