import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from structlog.testing import capture_logs

from engines.asgi_thread import free_port
from gateway.cli import main as cli_main
from gateway.db.migrate import (
    MIGRATIONS,
    current_revision,
    downgrade,
    head_revision,
    require_compatible,
    schema_floor,
    upgrade,
)
from policies.errors import ConfigError

TABLES = {
    "teams",
    "api_keys",
    "budgets",
    "rate_limits",
    "ledger",
    "ledger_dead_letters",
    "inflight_requests",
    "router_labels",
    "schema_floor",
}


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


# Expand/contract: what code at this revision does on a database that a newer release migrated.
# A copy of the shipped migrations plus later ones plays the newer release.
EXPAND = """
import sqlalchemy as sa
from alembic import op

revision = "0901"
down_revision = "{head}"
branch_labels = None
depends_on = None
expand_only = True


def upgrade() -> None:
    op.add_column("ledger", sa.Column("region", sa.String(32), nullable=True))
    op.create_table("audit_notes", sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    op.drop_table("audit_notes")
    op.drop_column("ledger", "region")
"""
CONTRACT = """
import sqlalchemy as sa
from alembic import op

revision = "0902"
down_revision = "0901"
branch_labels = None
depends_on = None
expand_only = False


def upgrade() -> None:
    op.drop_column("ledger", "route_reason")


def downgrade() -> None:
    op.add_column("ledger", sa.Column("route_reason", sa.String(500), nullable=False, server_default=""))
"""


@pytest.fixture
def newer_release(tmp_path: Path) -> Path:
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "0901_expand.py").write_text(EXPAND.format(head=head_revision()))
    (scripts / "versions" / "0902_contract.py").write_text(CONTRACT)
    return scripts


def _floor(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT revision FROM schema_floor")).scalar()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("revision", "floor"),
    [
        ("0001", "0001"),
        ("0002", "0001"),
        ("0003", "0001"),
        ("0004", "0001"),
        ("0005", "0001"),
        (None, None),
    ],
)
def test_schema_floor_of_the_shipped_migrations(revision: str | None, floor: str | None) -> None:
    assert schema_floor(ScriptDirectory(str(MIGRATIONS)), revision) == floor


def test_refuses_a_database_without_schema_or_behind(scratch_pg: str) -> None:
    with pytest.raises(ConfigError, match="has no tiergate schema .*tiergate db upgrade"):
        require_compatible(scratch_pg)
    upgrade(scratch_pg, "0002")
    with pytest.raises(
        ConfigError,
        match=f"at revision 0002, older than this code's {head_revision()}: run `tiergate db upgrade`",
    ):
        require_compatible(scratch_pg)
    upgrade(scratch_pg)
    assert require_compatible(scratch_pg) == head_revision() and _floor(scratch_pg) == "0001"


def test_older_code_serves_on_a_database_that_only_grew(
    scratch_pg: str, newer_release: Path
) -> None:
    upgrade(scratch_pg, "0901", scripts=newer_release)
    assert current_revision(scratch_pg) == "0901" and _floor(scratch_pg) == "0001"
    with capture_logs() as logs:
        assert require_compatible(scratch_pg) == "0901"
    assert (
        logs[0]["event"] == "database_newer_than_code"
        and logs[0]["code_revision"] == head_revision()
    )
    # The older release's migration Job (helm rollback, then upgrade) changes nothing.
    upgrade(scratch_pg)
    assert current_revision(scratch_pg) == "0901"
    # Its admin commands write, and its gateway starts (the check runs before it answers).
    assert cli_main(["teams", "create", "older-code", "--database-url", scratch_pg]) == 0
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
        env={**env, "TIERGATE_DATABASE_URL": scratch_pg},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway never became ready"
            time.sleep(0.3)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "database_newer_than_code" in out


def test_older_code_refuses_a_database_that_contracted(
    scratch_pg: str, newer_release: Path
) -> None:
    upgrade(scratch_pg, scripts=newer_release)
    assert current_revision(scratch_pg) == "0902" and _floor(scratch_pg) == "0902"
    message = f"at revision 0902, which needs code at revision 0902 or later .* this code is at {head_revision()}"
    with pytest.raises(ConfigError, match=message):
        require_compatible(scratch_pg)
    with pytest.raises(ConfigError, match=message):
        upgrade(scratch_pg)
    # Back with the newer release's downgrade, the older code serves again.
    downgrade(scratch_pg, head_revision() or "", scripts=newer_release)
    assert require_compatible(scratch_pg) == head_revision() and _floor(scratch_pg) == "0001"


def test_refuses_a_newer_database_that_records_no_floor(
    scratch_pg: str, newer_release: Path
) -> None:
    upgrade(scratch_pg, "0901", scripts=newer_release)
    engine = sa.create_engine(scratch_pg)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM schema_floor"))
    engine.dispose()
    with pytest.raises(ConfigError, match="newer than this code's .* records no schema floor"):
        require_compatible(scratch_pg)


def test_concurrent_upgrades_take_turns(scratch_pg: str) -> None:
    # Every gateway pod's init container runs `tiergate db upgrade` at once on a fresh database.
    cmd = [sys.executable, "-m", "gateway.cli", "db", "upgrade", "--database-url", scratch_pg]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert current_revision(scratch_pg) == head_revision() and tables(scratch_pg) == TABLES


def test_upgrade_without_a_database_is_a_no_op(capsys: pytest.CaptureFixture[str]) -> None:
    # The chart's init container runs `db upgrade` even where no database is configured.
    assert cli_main(["db", "upgrade", "--database-url", "none"]) == 0
    assert "nothing to migrate" in capsys.readouterr().out
