"""Shared fixtures: real services (Redis, PostgreSQL) and the simulated backends.

A missing service skips the tests that need it, with the reason shown, except when
``TIERGATE_TEST_REQUIRE_SERVICES=1`` (set by scripts/test.sh in CI): then it fails.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

REQUIRE = os.environ.get("TIERGATE_TEST_REQUIRE_SERVICES") == "1"
REDIS_URL = os.environ.get("TIERGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get(
    "TIERGATE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def need_service(url: str, default_port: int, what: str) -> str:
    if not _reachable(url, default_port):
        msg = f"{what} is not reachable at {url} (run scripts/services.sh)"
        if REQUIRE:
            pytest.fail(msg)
        pytest.skip(msg)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    return need_service(REDIS_URL, 6379, "Redis")


@pytest.fixture(scope="session")
def database_url() -> str:
    return need_service(DATABASE_URL, 5432, "PostgreSQL")


@pytest.fixture(scope="session")
def pg_url(database_url: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped afterwards."""
    import psycopg

    from gateway.db.migrate import upgrade

    name = f"tiergate_t_{uuid.uuid4().hex[:10]}"
    admin = (
        database_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
        + "/postgres"
    )
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to one test; its keys are deleted afterwards."""
    import redis

    prefix = f"tgt:{uuid.uuid4().hex[:8]}:"
    yield prefix
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(prefix + "*"))
    if keys:
        r.delete(*keys)
    r.close()
