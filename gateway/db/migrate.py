"""Run the Alembic migrations shipped in ``gateway/db/migrations`` (CLI and Helm hook).

The gateway never migrates on start; it checks that it can serve on the database's schema
(:func:`require_compatible`). Migrations follow an expand/contract rule: one that only adds
(tables, nullable or defaulted columns, indexes) says ``expand_only = True``, and code of an
earlier revision keeps serving on its database. After every run ``tiergate db upgrade``
records the schema floor: the newest migration up to the database's revision that is not
expand-only, i.e. the oldest code revision that still serves on it. So an older pod in a
rolling update, or the pods of a ``helm rollback``, start on a database that a newer release
migrated, as long as everything since their own revision only added.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, delete, insert, inspect, pool, select
from sqlalchemy.engine import make_url

from gateway.db.engine import ensure_sqlite_dir, sync_url
from gateway.db.models import SchemaFloor
from policies.errors import ConfigError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
log = structlog.get_logger("tiergate.db")


def _config(url: str, scripts: Path = MIGRATIONS) -> Config:
    cfg = Config(str(scripts / "alembic.ini"))
    cfg.set_main_option("script_location", str(scripts))
    cfg.set_main_option("version_locations", str(scripts / "versions"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _scripts(scripts: Path = MIGRATIONS) -> ScriptDirectory:
    return ScriptDirectory.from_config(_config("sqlite://", scripts))


def upgrade(url: str, revision: str = "head", *, scripts: Path = MIGRATIONS) -> None:
    """Migrate to ``revision``; on a database newer than this code, check it and change nothing."""
    current = current_revision(url)
    if revision == "head" and current is not None and not _known(_scripts(scripts), current):
        require_compatible(url, scripts=scripts)
        return
    command.upgrade(_config(url, scripts), revision)


def downgrade(url: str, revision: str = "base", *, scripts: Path = MIGRATIONS) -> None:
    command.downgrade(_config(url, scripts), revision)


def head_revision(scripts: Path = MIGRATIONS) -> str | None:
    return _scripts(scripts).get_current_head()


def schema_floor(script: ScriptDirectory, revision: str | None) -> str | None:
    """The newest migration up to ``revision`` that is not expand-only."""
    if revision is None:
        return None
    for s in script.walk_revisions("base", revision):
        if not getattr(s.module, "expand_only", False):
            return s.revision
    return None


def record_floor(conn: Connection, script: ScriptDirectory) -> None:
    """Store the schema floor of the connection's revision (migrations/env.py, every run)."""
    if not inspect(conn).has_table(SchemaFloor.__tablename__):
        return
    floor = schema_floor(script, MigrationContext.configure(conn).get_current_revision())
    conn.execute(delete(SchemaFloor))
    if floor is not None:
        conn.execute(insert(SchemaFloor).values(id=1, revision=floor))


def current_revision(url: str) -> str | None:
    return _read(url)[0]


def require_compatible(url: str, *, scripts: Path = MIGRATIONS) -> str:
    """Refuse to serve on a schema this code cannot serve on; return the database's revision.

    Accepted: the database at this code's head; or at a revision this code does not know
    (newer) whose recorded floor is this code's head or one of its ancestors, that is every
    migration since this code's head is expand-only (logged as a warning).
    Refused: no schema; an older revision (run `tiergate db upgrade`); a newer revision
    without a recorded floor, or whose floor this code has not reached.
    """
    script = _scripts(scripts)
    head = script.get_current_head()
    current, floor = _read(url)
    where = make_url(sync_url(url)).render_as_string(hide_password=True)
    if current == head:
        return current or ""
    upgrade_first = "run `tiergate db upgrade` first (the gateway never migrates on start)"
    if current is None:
        raise ConfigError(
            f"database {where} has no tiergate schema (this code needs {head}): {upgrade_first}"
        )
    if _known(script, current):
        raise ConfigError(
            f"database {where} is at revision {current}, older than this code's {head}: "
            + upgrade_first
        )
    go_back = (
        f"run the release that migrated it, or move the database back to {head} with that "
        f"release's `tiergate db downgrade {head}` first"
    )
    if floor is None:
        raise ConfigError(
            f"database {where} is at revision {current}, newer than this code's {head}, and "
            f"records no schema floor: {go_back}"
        )
    if not _known(script, floor) or floor not in _lineage(script, head):
        raise ConfigError(
            f"database {where} is at revision {current}, which needs code at revision {floor} "
            f"or later (a migration after {head} does more than add); this code is at {head}: "
            + go_back
        )
    log.warning(
        "database_newer_than_code",
        database_revision=current,
        code_revision=head,
        schema_floor=floor,
        detail="every migration after this code's revision only adds: serving on it",
    )
    return current


def _known(script: ScriptDirectory, revision: str) -> bool:
    return revision in {s.revision for s in script.walk_revisions()}


def _lineage(script: ScriptDirectory, head: str | None) -> set[str]:
    return {s.revision for s in script.walk_revisions("base", head)} if head else set()


def _read(url: str) -> tuple[str | None, str | None]:
    """The database's revision and recorded schema floor (None where there is none)."""
    url = sync_url(url)
    ensure_sqlite_dir(url)
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            floor = None
            if inspect(conn).has_table(SchemaFloor.__tablename__):
                floor = conn.execute(select(SchemaFloor.revision)).scalar()
            return current, floor
    finally:
        engine.dispose()
