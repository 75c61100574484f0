"""What a team installs: the built wheel, in a fresh virtual environment, outside the checkout.

The rest of the suite runs from the editable checkout, where files next to the packages are
always found; here the wheel is built from the sources the image copies, installed
non-editable, and every command runs from a directory that is not the repository, so a file
the code reads at run time but the wheel leaves out fails these tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
import sqlalchemy as sa
import yaml

from engines.asgi_thread import free_port
from gateway.db.migrate import head_revision
from tests.e2e.conftest import DEMO, Sims

ROOT = Path(__file__).resolve().parents[2]


def dockerfile_sources() -> list[str]:
    """What the Dockerfile's build stage copies from the checkout before it builds the wheel."""
    sources: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["FROM"] and sources:
            break
        if words[:1] == ["COPY"] and not words[1].startswith("--"):
            sources += words[1:-1]
    return sources


SOURCES = dockerfile_sources()


@dataclass(frozen=True)
class Installed:
    venv: Path
    cwd: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TIERGATE_", "PYTHON", "VIRTUAL_ENV"))
        }
        return {**env, "PATH": f"{self.venv / 'bin'}:{env.get('PATH', '')}", **extra}

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "tiergate"), *args],
            cwd=self.cwd,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = base / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
        cwd=base,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    (wheel,) = dist.glob("tiergate-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, cwd=base)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        cwd=base,
    )
    assert install.returncode == 0, install.stderr[-4000:]
    cwd = base / "elsewhere"
    cwd.mkdir()
    return Installed(venv, cwd)


def test_the_image_builds_from_the_same_sources() -> None:
    assert SOURCES == ["pyproject.toml", "README.md", "gateway", "policies", "engines"]


def test_the_package_is_the_installed_one(installed: Installed) -> None:
    out = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"],
        cwd=installed.cwd,
        env=installed.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    origin = Path(out.stdout.strip())
    assert origin.is_relative_to(installed.venv) and "site-packages" in origin.parts
    assert installed.run("--help").returncode == 0


def test_db_upgrade_on_sqlite(installed: Installed) -> None:
    url = f"sqlite:///{installed.cwd / 'var' / 'up.db'}"
    res = installed.run("db", "upgrade", "--database-url", url)
    assert res.returncode == 0, res.stderr
    assert f"revision {head_revision()} (head {head_revision()})" in res.stdout


def test_demo(installed: Installed) -> None:
    res = installed.run("demo", timeout=180)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "saved vs sending everything to hosted Pro" in res.stdout and "rows)" in res.stdout


@pytest.fixture
def fresh_pg(database_url: str) -> Iterator[str]:
    name = f"tiergate_wheel_{uuid.uuid4().hex[:8]}"
    admin = (
        database_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
        + "/postgres"
    )
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield database_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _catalog_for(sims: Sims, path: Path) -> Path:
    data = yaml.safe_load(DEMO.read_text())
    data["backends"]["flash-local"]["replicas"] = sims.flash
    data["backends"]["pro-local"]["replicas"] = sims.pro
    data["backends"]["hosted"]["base_url"] = sims.hosted
    path.write_text(yaml.safe_dump(data))
    return path


def _ledger_rows(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM ledger")).scalar_one())
    finally:
        engine.dispose()


def test_upgrade_then_serve_on_postgresql_and_redis(
    installed: Installed, sims: Sims, fresh_pg: str, redis_url: str
) -> None:
    # Before the migration the gateway refuses to start, saying what to run.
    port = free_port()
    env = {
        "TIERGATE_DATABASE_URL": fresh_pg,
        "TIERGATE_REDIS_URL": redis_url,
        "TIERGATE_REDIS_PREFIX": f"tgw:{uuid.uuid4().hex[:8]}:",
        "DEEPSEEK_API_KEY": "sim-key",
    }
    catalog = _catalog_for(sims, installed.cwd / f"catalog-{port}.yaml")
    serve = ("serve", "--config", str(catalog), "--port", str(port))
    early = installed.run(*serve, timeout=60, **env)
    assert early.returncode == 2 and "tiergate db upgrade" in early.stderr, early.stderr

    up = installed.run("db", "upgrade", **env)
    assert up.returncode == 0, up.stderr
    assert f"revision {head_revision()}" in up.stdout
    env["TIERGATE_REQUIRE_API_KEY"] = "true"
    assert installed.run("teams", "create", "wheel", **env).returncode == 0
    created = installed.run("keys", "create", "--team", "wheel", **env)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]

    proc = subprocess.Popen(
        [str(installed.venv / "bin" / "tiergate"), *serve],
        cwd=installed.cwd,
        env=installed.env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the installed gateway never became ready"
            time.sleep(0.3)
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="deepseek-chat",
            messages=[{"role": "user", "content": "hello from an installed wheel"}],
            max_tokens=16,
        )
        reply = raw.parse()
        assert reply.choices[0].message.content and reply.usage and reply.usage.total_tokens > 0
        assert raw.headers["x-tiergate-route"].startswith("flash/non-thinking/")
        # The request's ledger row reaches PostgreSQL through the Redis stream.
        deadline = time.monotonic() + 20
        while _ledger_rows(fresh_pg) < 1:
            assert time.monotonic() < deadline, "no ledger row reached PostgreSQL"
            time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
