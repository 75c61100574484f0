"""Run the Alembic migrations shipped in ``gateway/db/migrations`` (CLI and Helm hook)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from gateway.db.engine import ensure_sqlite_dir, sync_url
from policies.errors import ConfigError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _config(url: str) -> Config:
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config("sqlite://")).get_current_head()


def require_head(url: str) -> None:
    """Refuse to serve on a database whose schema is not the one this code expects."""
    current, head = current_revision(url), head_revision()
    if current != head:
        raise ConfigError(
            f"database {url} is at revision {current or 'none'}, expected {head}: "
            "run `tiergate db upgrade` first (the gateway never migrates on start)"
        )


def current_revision(url: str) -> str | None:
    url = sync_url(url)
    ensure_sqlite_dir(url)
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
