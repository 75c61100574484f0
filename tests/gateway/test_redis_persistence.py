"""The gateway says whether Redis persists what it holds, and notices when it restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from redis.asyncio import Redis

from gateway.db.engine import make_engine, make_sessions
from gateway.db.migrate import upgrade
from gateway.metrics import Metrics
from gateway.money import MoneyAccounting
from tests.e2e.redisproc import RedisProcess


async def started(tmp_path: Path, redis_url: str) -> MoneyAccounting:
    url = f"sqlite+aiosqlite:///{tmp_path}/l.db"
    upgrade(url)
    engine = make_engine(url)
    money = MoneyAccounting(
        engine,
        make_sessions(engine),
        Redis.from_url(redis_url),
        Metrics(),
        require_key=False,
        prefix="tgr:",
        watch_interval_s=0.1,
    )
    await money.start()
    return money


def sample(money: MoneyAccounting, name: str) -> float:
    return float(money.metrics.registry.get_sample_value(name) or 0)


async def test_a_redis_without_an_append_only_file_is_reported_and_its_restart_noticed(
    tmp_path: Path,
) -> None:
    redis = RedisProcess(tmp_path / "redis", appendonly=False).start()
    try:
        with structlog.testing.capture_logs() as logs:
            money = await started(tmp_path, redis.url)
            try:
                assert money.redis_persists is False
                assert sample(money, "tiergate_redis_persistence") == 0
                redis.restart()
                for _ in range(200):
                    if sample(money, "tiergate_redis_restarts_total") == 1:
                        break
                    await asyncio.sleep(0.05)
                assert sample(money, "tiergate_redis_restarts_total") == 1
            finally:
                await money.close()
        events = [e["event"] for e in logs if e["log_level"] == "error"]
        assert any(e.startswith("Redis has no append-only file") for e in events)
        assert any(e.startswith("Redis restarted without an append-only file") for e in events)
    finally:
        redis.kill()


async def test_a_redis_with_an_append_only_file_is_reported_as_persistent(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path / "redis", appendonly=True).start()
    try:
        money = await started(tmp_path, redis.url)
        try:
            assert money.redis_persists is True
            assert sample(money, "tiergate_redis_persistence") == 1
        finally:
            await money.close()
    finally:
        redis.kill()
