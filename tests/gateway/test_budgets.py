"""Budget stores: atomic reservations, exact settlement, expiry, rebuild; Redis across processes."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from gateway.budgets import BudgetExceeded, MemoryBudgetStore, RedisBudgetStore, Window
from policies.budget import BudgetSpec

# Noon today: windows of a fixed past day would already have expired in Redis (EXPIREAT).
NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
TEAM = BudgetSpec("b-team", "team", "t1", "day", 1_000)
KEY = BudgetSpec("b-key", "key", "k1", "total", 600)


def windows(*specs: BudgetSpec, now: datetime = NOW) -> list[Window]:
    return [Window.of(s, now, "UTC") for s in specs]


class Sink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)


async def zero(_: Window) -> int:
    return 0


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        sink = Sink()
        s: Any = MemoryBudgetStore(zero, sink)
        s.events = sink.events
        yield s
        return
    redis_url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    r = Redis.from_url(redis_url)
    s = RedisBudgetStore(r, zero, prefix=prefix)

    async def events() -> list[dict[str, Any]]:
        return [orjson.loads(f[b"event"]) for _, f in await r.xrange(s.stream)]

    s.read_events = events
    yield s
    await r.aclose()


async def stream_events(store: Any) -> list[dict[str, Any]]:
    if hasattr(store, "read_events"):
        return await store.read_events()
    return store.events


async def test_reserve_is_all_or_nothing_across_budgets(store: Any) -> None:
    ws = windows(TEAM, KEY)
    await store.reserve("r1", ws, 500)
    with pytest.raises(BudgetExceeded) as exc:
        await store.reserve("r2", ws, 200)  # fits the team (1000) but not the key (600)
    assert exc.value.window.spec.id == "b-key" and exc.value.remaining_nanos == 100
    states = {s.window.spec.id: s for s in await store.state(ws)}
    assert states["b-team"].reserved_nanos == 500  # r2 charged nothing anywhere
    await store.reserve("r3", ws, 100)


async def test_settle_replaces_reservation_and_is_idempotent(store: Any) -> None:
    ws = windows(TEAM)
    await store.reserve("r1", ws, 800)
    assert await store.settle("r1", ws, 123, {"request_id": "r1"}) == [123]
    assert await store.settle("r1", ws, 123, {"request_id": "r1"}) is None
    (state,) = await store.state(ws)
    assert (state.spent_nanos, state.reserved_nanos, state.remaining_nanos) == (123, 0, 877)
    assert [e["request_id"] for e in await stream_events(store)] == ["r1"]


async def test_release_frees_the_reservation(store: Any) -> None:
    ws = windows(TEAM)
    await store.reserve("r1", ws, 900)
    with pytest.raises(BudgetExceeded):
        await store.reserve("r2", ws, 200)
    await store.release("r1", ws)
    await store.reserve("r2", ws, 200)


async def test_settle_without_budgets_still_records_the_event(store: Any) -> None:
    await store.settle("anon", [], 42, {"request_id": "anon"})
    assert [e["request_id"] for e in await stream_events(store)] == ["anon"]


async def test_concurrent_reservations_never_overshoot(store: Any) -> None:
    ws = windows(TEAM)

    async def one(i: int) -> bool:
        try:
            await store.reserve(f"c{i}", ws, 30)
        except BudgetExceeded:
            return False
        await asyncio.sleep(0)
        await store.settle(f"c{i}", ws, 25, {"request_id": f"c{i}"})
        return True

    ok = sum(await asyncio.gather(*(one(i) for i in range(100))))
    (state,) = await store.state(ws)
    assert state.spent_nanos == ok * 25 <= TEAM.limit_nanos
    assert state.reserved_nanos == 0
    assert len(await stream_events(store)) == ok


async def test_expired_reservations_stop_holding_budget(redis_url: str, redis_prefix: str) -> None:
    r = Redis.from_url(redis_url)
    store = RedisBudgetStore(r, zero, prefix=redis_prefix, reservation_ttl_s=1)
    ws = windows(TEAM)
    await store.reserve("lost", ws, 900)  # a gateway that dies before settling
    with pytest.raises(BudgetExceeded):
        await store.reserve("next", ws, 200)
    await asyncio.sleep(2.1)
    await store.reserve("next", ws, 200)
    await r.aclose()


async def test_counters_rebuild_from_the_ledger_when_redis_is_empty(
    redis_url: str, redis_prefix: str
) -> None:
    loads: list[str] = []

    async def from_ledger(w: Window) -> int:
        loads.append(w.spec.id)
        return 950

    r = Redis.from_url(redis_url)
    store = RedisBudgetStore(r, from_ledger, prefix=redis_prefix)
    ws = windows(TEAM)
    with pytest.raises(BudgetExceeded) as exc:
        await store.reserve("r1", ws, 100)
    assert exc.value.remaining_nanos == 50 and loads == ["b-team"]
    await store.reserve("r2", ws, 50)
    assert loads == ["b-team"]  # rebuilt once, then kept in Redis
    await r.aclose()


def _worker(redis_url: str, prefix: str, n: int, idx: int, q: Any, now: datetime) -> None:
    # `now` comes from the parent: a spawned worker re-imports this module, and one started
    # after midnight would otherwise count in another day's window than the parent checks.
    async def run() -> int:
        r = Redis.from_url(redis_url)
        store = RedisBudgetStore(r, zero, prefix=prefix)
        ws = windows(TEAM, now=now)
        ok = 0

        async def one(i: int) -> None:
            nonlocal ok
            try:
                await store.reserve(f"p{idx}-{i}", ws, 40)
            except BudgetExceeded:
                return
            await store.settle(f"p{idx}-{i}", ws, 33, {"request_id": f"p{idx}-{i}"})
            ok += 1

        await asyncio.gather(*(one(i) for i in range(n)))
        await r.aclose()
        return ok

    q.put(asyncio.run(run()))


def test_three_processes_share_one_budget_exactly(redis_url: str, redis_prefix: str) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(redis_url, redis_prefix, 60, i, q, NOW)) for i in range(3)
    ]
    for p in procs:
        p.start()
    ok = sum(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)

    async def check() -> None:
        r = Redis.from_url(redis_url)
        store = RedisBudgetStore(r, zero, prefix=redis_prefix)
        (state,) = await store.state(windows(TEAM))
        assert state.spent_nanos == ok * 33
        assert state.spent_nanos <= TEAM.limit_nanos + 40  # within one reservation
        assert state.reserved_nanos == 0
        assert await r.xlen(store.stream) == ok
        await r.aclose()

    assert ok >= 24  # 1000 / 40: at least every fully reservable request got through
    asyncio.run(check())


@pytest.mark.parametrize("lease", [False, True])
async def test_a_stalled_process_settlement_replaces_the_orphan_one(
    redis_url: str, redis_prefix: str, lease: bool
) -> None:
    """A survivor settles a request from the in-flight journal (ORPHAN); the request's own
    process, which was only stalled, settles it later: the windows end charged its cost,
    once, and the ledger stream gets a replacing event; anything after changes nothing."""
    from gateway.budgets.base import ORPHAN, REPLACED
    from gateway.budgets.leases import LeasePolicy

    from .test_budget_leases import leased_after_first

    r = Redis.from_url(redis_url)
    policy = LeasePolicy(share=0.05, slots=8) if lease else None
    owner = RedisBudgetStore(r, zero, prefix=redis_prefix, lease=policy)
    survivor = RedisBudgetStore(r, zero, prefix=redis_prefix)
    ws = windows(BudgetSpec("b-stall", "team", "t9", "day", 1_000_000))
    if lease:
        await leased_after_first(owner, ws, 1_000)
    await owner.reserve("rid", ws, 1_000)
    assert (owner.leases is not None and "rid" in owner.leases.funded) == lease
    orphan = {"request_id": "rid", "cost_nanos": 40, ORPHAN: True}
    assert await survivor.settle("rid", ws, 40, orphan) == [40]
    assert await survivor.settle("rid", ws, 40, dict(orphan)) is None  # swept twice: once
    own: dict[str, Any] = {"request_id": "rid", "cost_nanos": 250}
    assert await owner.settle("rid", ws, 250, own) == [250]
    assert own[REPLACED] == 40
    assert await owner.settle("rid", ws, 250, {"request_id": "rid"}) is None  # a retry
    assert await survivor.settle("rid", ws, 40, dict(orphan)) is None  # a late sweep
    (state,) = await owner.state(ws)
    assert state.spent_nanos == 250 and state.reserved_nanos == 0
    if lease:  # the lease paid for the request: it shrank by its cost, as any settlement
        assert owner.leases is not None
        (le,) = owner.leases.leases.values()
        assert state.leased_nanos == le.amount == 8_000 - 250 and le.used == 0
    entries = [f for _, f in await r.xrange(owner.stream) if b'"rid"' in f[b"event"]]
    assert [f.get(b"supersedes") for f in entries] == [None, b"1"]
    assert all(b"orphan" not in f[b"event"] and b"replaced" not in f[b"event"] for f in entries)
    if owner.leases is not None:
        await owner.leases.close()
    await r.aclose()
