"""Ledger durability: settled spend waits in Redis while PostgreSQL is away; a Redis killed
and restarted meanwhile keeps it only if it persists (append-only file).

A private `redis-server` (killed with SIGKILL and restarted on the same data directory)
and one gateway process that reaches PostgreSQL through a proxy the test cuts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from .conftest import Sims
from .redisproc import RedisProcess
from .test_money_e2e import Gateways, money_env, sims_catalog, sql
from .test_outages import MESSAGES, _proxy_for, _via, metric, openai_client, team_with_budget


@pytest.fixture(scope="module")
def catalog_file(sims: Sims, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sims_catalog(sims, tmp_path_factory.mktemp("durability"))


def rows(pg_url: str, team_id: str) -> set[str]:
    return {r[0] for r in sql(pg_url, "select request_id from ledger where team_id = %s", team_id)}


@contextmanager
def outage(
    catalog_file: Path, pg_url: str, tmp: Path, *, appendonly: bool
) -> Iterator[tuple[Gateways, set[str], str, int]]:
    redis = RedisProcess(tmp / "redis", appendonly=appendonly).start()
    proxy = _proxy_for(pg_url, 5432)
    env = money_env(_via(pg_url, proxy), redis.url, f"tgl:{uuid.uuid4().hex[:6]}:")
    gw = Gateways(env, catalog_file)
    try:
        gw.start(1)
        team_id, _, key = team_with_budget(gw, f"durable-{uuid.uuid4().hex[:6]}")
        client = openai_client(gw, key)
        first = client.chat.completions.with_raw_response.create(
            model="deepseek-chat", messages=MESSAGES, max_tokens=16
        )
        answered = {first.headers["x-request-id"]}  # the key is cached from here on
        deadline = time.monotonic() + 20
        while rows(pg_url, team_id) != answered and time.monotonic() < deadline:
            time.sleep(0.1)
        proxy.cut()  # PostgreSQL away: settled events wait in the Redis stream
        for _ in range(10):
            raw = client.chat.completions.with_raw_response.create(
                model="deepseek-chat", messages=MESSAGES, max_tokens=16
            )
            answered.add(raw.headers["x-request-id"])
        persistence = int(metric(gw, "tiergate_redis_persistence"))
        redis.restart()  # killed with what it held, started again on its data directory
        proxy.restore()
        # The gateway notices, reconnects and serves again (closed mode: 503 meanwhile).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = httpx.post(
                gw.urls[0] + "/v1/chat/completions",
                json={"model": "deepseek-chat", "messages": MESSAGES, "max_tokens": 4},
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
            if r.status_code == 200:
                answered.add(r.headers["x-request-id"])
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        yield gw, answered, team_id, persistence
    finally:
        gw.stop()
        proxy.stop()
        redis.kill()


def test_with_an_append_only_file_no_answered_request_is_lost(
    catalog_file: Path, pg_url: str, tmp_path: Path
) -> None:
    with outage(catalog_file, pg_url, tmp_path, appendonly=True) as (_, answered, team, kept):
        assert kept == 1
        deadline = time.monotonic() + 30
        while rows(pg_url, team) != answered and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rows(pg_url, team) == answered and len(answered) == 12


def test_without_persistence_the_gateway_says_so_and_the_loss_is_what_redis_held(
    catalog_file: Path, pg_url: str, tmp_path: Path
) -> None:
    with outage(catalog_file, pg_url, tmp_path, appendonly=False) as (gw, answered, team, kept):
        assert kept == 0
        log = "".join(p.read_text() for p in gw.logs.glob("gateway-*.log"))
        assert "Redis has no append-only file" in log
        deadline = time.monotonic() + 30
        while len(rows(pg_url, team)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        # The request before the outage and the one after the restart reach the ledger;
        # the ten that waited in Redis for PostgreSQL are gone: the loss the warning names.
        assert len(rows(pg_url, team)) == 2 and rows(pg_url, team) < answered
