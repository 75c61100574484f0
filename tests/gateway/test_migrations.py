from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from gateway.db.migrate import current_revision, downgrade, head_revision, upgrade

TABLES = {"teams", "api_keys", "budgets", "rate_limits", "ledger", "router_labels"}


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url.replace("+aiosqlite", ""))
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_sqlite_up_and_down(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/t.db"
    upgrade(url)
    assert current_revision(url) == head_revision() and tables(url) == TABLES
    downgrade(url)
    assert current_revision(url) is None and tables(url) == set()
    upgrade(url)
    assert tables(url) == TABLES


@pytest.fixture
def scratch_pg(database_url: str):
    name = "tiergate_mig_test"
    admin = (
        database_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
        + "/postgres"
    )
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    yield database_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgresql_up_and_down(scratch_pg: str) -> None:
    upgrade(scratch_pg)
    assert current_revision(scratch_pg) == head_revision() and tables(scratch_pg) == TABLES
    downgrade(scratch_pg)
    assert tables(scratch_pg) == set()
    upgrade(scratch_pg)
    assert tables(scratch_pg) == TABLES
