"""RedisGuard: what budgets do while Redis is down, and settling exactly once afterwards."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy import func, select

from gateway.budgets import BudgetExceeded, RedisBudgetStore, Window
from gateway.db.engine import make_engine, make_sessions
from gateway.db.models import LedgerRow
from gateway.metrics import Metrics
from gateway.outage import RedisGuard
from gateway.ratelimit import RateLimiter
from policies.budget import BudgetSpec
from policies.errors import ServiceUnavailable

from .test_ledger import event

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
TEAM = BudgetSpec("b-team", "team", "t1", "day", 1_000)
WINDOWS = [Window.of(TEAM, NOW, "UTC")]


async def spent_100(_: Window) -> int:
    return 100


def guard_for(r: Redis, prefix: str, mode: str, sessions: object = None) -> RedisGuard:
    store = RedisBudgetStore(r, spent_100, prefix=prefix)
    return RedisGuard(
        r,
        store,
        RateLimiter(r, prefix=prefix),
        Metrics(),
        sessions,  # type: ignore[arg-type]
        spent_100,
        mode=mode,  # type: ignore[arg-type]
    )


def gauge(g: RedisGuard, name: str) -> float:
    value = g.metrics.registry.get_sample_value(name, {"component": "redis"})
    return float(value or 0)


async def test_replayed_settlements_count_once_even_when_redis_already_had_one(
    redis_url: str, redis_prefix: str
) -> None:
    r = Redis.from_url(redis_url)
    g = guard_for(r, redis_prefix, "open")
    await g.reserve("r1", WINDOWS, 300)  # held in Redis
    g.mark_down(ConnectionError("cut"))
    assert gauge(g, "tiergate_degraded") == 1
    await g.settle("r1", WINDOWS, 40, event("r1", 40))
    # r2 settled in Redis but its reply was lost: the guard spooled it as well.
    await g.store.settle("r2", WINDOWS, 7, event("r2", 7))
    await g.settle("r2", WINDOWS, 7, event("r2", 7))
    assert [s.request_id for s in g.spool] == ["r1", "r2"]

    await g._mark_up()
    assert await g.replay() == 2 and g.spool == []
    assert gauge(g, "tiergate_degraded") == 0
    state = (await g.store.state(WINDOWS))[0]
    assert state.spent_nanos == 100 + 40 + 7 and state.reserved_nanos == 0
    stream = [orjson.loads(f[b"event"])["request_id"] for _, f in await r.xrange(g.store.stream)]
    assert sorted(stream) == ["r1", "r2"]
    await r.aclose()


async def test_closed_refuses_with_503_and_open_enforces_local_budgets(
    redis_url: str, redis_prefix: str
) -> None:
    r = Redis.from_url(redis_url)
    closed = guard_for(r, redis_prefix, "closed")
    closed.mark_down(ConnectionError("cut"))
    with pytest.raises(ServiceUnavailable, match="budget store unavailable"):
        await closed.reserve("c1", [], 10)
    with pytest.raises(ServiceUnavailable):
        await closed.allow("k1", 5, None, 10)

    opened = guard_for(r, redis_prefix, "open")
    opened.mark_down(ConnectionError("cut"))
    await opened.reserve("o1", WINDOWS, 800)  # 100 spent per the ledger + 800 <= 1000
    with pytest.raises(BudgetExceeded):
        await opened.reserve("o2", WINDOWS, 200)
    await opened.release("o1", WINDOWS)
    await opened.reserve("o2", WINDOWS, 200)
    assert [await opened.allow("k1", 2, None, 1) for _ in range(3)][-1] > 0
    assert gauge(opened, "tiergate_degraded_requests_total") == 2
    await r.aclose()


async def test_spool_left_at_shutdown_is_written_to_the_ledger(tmp_path: Path) -> None:
    from gateway.db.migrate import upgrade

    url = f"sqlite+aiosqlite:///{tmp_path}/l.db"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_sessions(engine)
    # Nothing listens on port 1: every Redis call is refused.
    r = Redis.from_url("redis://127.0.0.1:1/0", retry=Retry(NoBackoff(), 0))
    g = guard_for(r, "tgx:", "open", sessions)
    await g.reserve("s1", WINDOWS, 50)
    assert g.down
    await g.settle("s1", WINDOWS, 30, event("s1", 30))
    await g.close()
    async with sessions() as s:
        ids = (await s.scalars(select(LedgerRow.request_id))).all()
        assert ids == ["s1"]
        assert await s.scalar(select(func.sum(LedgerRow.cost_nanos))) == 30
    assert g.spool == []
    await r.aclose()
    await engine.dispose()
