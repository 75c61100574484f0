"""Property: whatever mix of requests and admin changes, budgets hold and the ledger is exact.

Random interleavings of concurrent requests (with a small or a large worst case; settled
in full, settled in part as a stream the client cut, or released as a failed upstream
call) and admin changes of the limit while they run, through ``MoneyAccounting`` on real
Redis (budget leases on or off) and a real PostgreSQL ledger. Afterwards: spend never
passed the highest limit in force, nothing stays reserved or leased, Redis's spend equals
the ledger's, and the ledger holds exactly the settled requests.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import redis as sync_redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from sqlalchemy import func, select, update

from gateway import admin_ops
from gateway.accounting import Caller, Hold, Settlement
from gateway.db.engine import make_engine, make_sessions
from gateway.db.models import Budget, LedgerRow
from gateway.ledger import StreamDrainer
from gateway.metrics import Metrics
from gateway.money import MoneyAccounting
from policies.errors import BudgetExceededError

LIMIT = 10_000  # nano-dollars


@dataclass(frozen=True)
class Req:
    worst: int
    spent_share: float  # of the worst case actually spent
    outcome: str  # "settle" | "cut" | "release"
    delay: int  # event-loop turns before it finishes


requests = st.builds(
    Req,
    worst=st.sampled_from([300, 1_000, 2_500, 6_000]),
    spent_share=st.sampled_from([0.0, 0.3, 1.0]),
    outcome=st.sampled_from(["settle", "settle", "cut", "release"]),
    delay=st.integers(0, 5),
)
ops = st.lists(
    st.one_of(requests, st.tuples(st.just("limit"), st.sampled_from([4_000, 10_000, 20_000]))),
    min_size=1,
    max_size=40,
)


def settlement(caller: Caller, rid: str, cost: int, status: int) -> Settlement:
    return Settlement(
        request_id=rid,
        ts=datetime.now(UTC),
        key_id=caller.key_id,
        team_id=caller.team_id,
        protocol="openai",
        requested_model="deepseek-chat",
        tier="flash",
        mode="non-thinking",
        backend="hosted",
        replica=None,
        route_reason="property",
        cache_hit_tokens=0,
        cache_miss_tokens=10,
        output_tokens=10,
        reasoning_tokens=0,
        price_version="p",
        cost_nanos=cost,
        hosted_equiv_nanos=cost,
        latency_ms=1.0,
        status=status,
    )


async def scenario(pg_url: str, redis_url: str, plan: list[object], lease_share: float) -> None:
    engine = make_engine(pg_url)
    sessions = make_sessions(engine)
    prefix = f"tgp:{uuid.uuid4().hex[:8]}:"
    team = f"prop-{uuid.uuid4().hex[:8]}"
    async with sessions() as s:
        await admin_ops.create_team(s, team)
        key = await admin_ops.create_key(s, team)
        budget = await admin_ops.set_budget(s, "team", team, "day", LIMIT / 1e9)
    money = MoneyAccounting(
        engine,
        sessions,
        Redis.from_url(redis_url),
        Metrics(),
        require_key=True,
        prefix=prefix,
        lease_share=lease_share,
        key_cache_ttl_s=60,
    )
    await money.start()
    settled: set[str] = set()
    limits = [LIMIT]

    async def run(req: Req) -> None:
        caller = await money.authenticate(key.key)
        rid = uuid.uuid4().hex
        try:
            hold: Hold = await money.reserve(caller, rid, req.worst, datetime.now(UTC))
        except BudgetExceededError:
            return
        for _ in range(req.delay):
            await asyncio.sleep(0)
        if req.outcome == "release":
            await money.release(caller, hold)
            return
        cost = int(req.worst * req.spent_share)
        await money.settle(
            caller, settlement(caller, rid, cost, 200 if req.outcome == "settle" else 499), hold
        )
        settled.add(rid)

    async def change(limit: int) -> None:
        async with sessions() as s:
            await s.execute(
                update(Budget).where(Budget.id == budget["id"]).values(limit_nanos=limit)
            )
            await s.commit()
        limits.append(limit)
        money.invalidate_all()

    try:
        await asyncio.gather(
            *(run(op) if isinstance(op, Req) else change(op[1]) for op in plan)  # type: ignore[index]
        )
        assert isinstance(money.writer, StreamDrainer)
        await money.writer.stop()
        drain = StreamDrainer(money.redis, sessions, prefix + "ledger")  # type: ignore[arg-type]
        while await drain.drain_once(block_ms=1):
            pass
        async with sessions() as s:
            rows = set(
                (
                    await s.scalars(
                        select(LedgerRow.request_id).where(LedgerRow.team_id == key.team_id)
                    )
                ).all()
            )
            total = int(
                await s.scalar(
                    select(func.coalesce(func.sum(LedgerRow.cost_nanos), 0)).where(
                        LedgerRow.team_id == key.team_id
                    )
                )
                or 0
            )
        assert rows == settled  # exactly the settled requests
        assert total <= max(limits)
    finally:
        await money.close()
    r = sync_redis.Redis.from_url(redis_url)
    try:
        counters = [
            {k.decode(): int(v) for k, v in r.hgetall(k).items()}
            for k in r.scan_iter(prefix + "b:*")
            if not k.endswith((b":z", b":h"))
        ]
        assert len(counters) <= 1, counters  # none when no request reserved
        c = counters[0] if counters else {}
        assert c.get("spent", 0) == total  # Redis agrees with the ledger
        assert c.get("reserved", 0) == 0 and c.get("leased", 0) == 0, c  # nothing left held
        keys = list(r.scan_iter(prefix + "*"))
        if keys:
            r.delete(*keys)
    finally:
        r.close()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=ops, lease_share=st.sampled_from([0.0, 0.05]))
def test_budgets_hold_and_the_ledger_is_exact_under_random_mixes(
    pg_url: str, redis_url: str, plan: list[object], lease_share: float
) -> None:
    asyncio.run(scenario(pg_url, redis_url, plan, lease_share))
