"""A hold is released where it was reserved, even when the period turned in between."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from gateway import admin_ops
from gateway.db.engine import make_engine, make_sessions
from gateway.metrics import Metrics
from gateway.money import MoneyAccounting


async def test_a_release_after_a_period_boundary_frees_the_window_reserved_in(
    pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    engine = make_engine(pg_url)
    sessions = make_sessions(engine)
    team = f"boundary-{uuid.uuid4().hex[:8]}"
    async with sessions() as s:
        await admin_ops.create_team(s, team)
        key = await admin_ops.create_key(s, team)
        budget = await admin_ops.set_budget(s, "team", team, "day", 1.0)
    r = Redis.from_url(redis_url)
    money = MoneyAccounting(
        engine,
        sessions,
        Redis.from_url(redis_url),
        Metrics(),
        require_key=True,
        prefix=redis_prefix,
    )
    await money.start()
    try:
        caller = await money.authenticate(key.key)
        yesterday = datetime.now(UTC) - timedelta(days=1)
        hold = await money.reserve(caller, "req-1", 5_000, yesterday)
        (window,) = hold.windows
        counter = f"{redis_prefix}b:{budget['id']}:{int(window.start.timestamp())}"
        assert int(await r.hget(counter, "reserved") or 0) == 5_000
        await money.release(caller, hold)  # today, in another day window
        assert int(await r.hget(counter, "reserved") or 0) == 0
    finally:
        await money.close()
        await r.aclose()
