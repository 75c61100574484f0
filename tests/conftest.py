"""Shared fixtures: real services (Redis, PostgreSQL) and the simulated backends.

A missing service skips the tests that need it, with the reason shown, except when
``TIERGATE_TEST_REQUIRE_SERVICES=1`` (set by scripts/test.sh in CI): then it fails.
"""

from __future__ import annotations

import os
import socket
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
