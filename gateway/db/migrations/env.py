"""Alembic environment: runs migrations synchronously against the configured URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool, text

from gateway.db.engine import ensure_sqlite_dir, sync_url
from gateway.db.migrate import record_floor
from gateway.db.models import Base

config = context.config
# pg_advisory_xact_lock key of `tiergate db upgrade` (any constant unique to this project).
LOCK_KEY = 0x7469657267617465
url = config.get_main_option("sqlalchemy.url") or os.environ.get("TIERGATE_DATABASE_URL", "")
if not url:
    raise SystemExit("no database URL: pass --database-url or set TIERGATE_DATABASE_URL")
url = sync_url(url)
ensure_sqlite_dir(url)


def run() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=url.startswith("sqlite"),
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Pods that start together (the chart's init containers) migrate one at a
                # time: the others wait here, then find the schema done. Held to commit.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            context.run_migrations()
            # In the migrations' transaction where DDL is transactional (PostgreSQL)...
            record_floor(connection, context.script)
        # ...and committed on its own where it is not (SQLite: each step commits).
        if connection.in_transaction():
            connection.commit()
    engine.dispose()


run()
