"""Budget leases against a real Redis: requests reserve in process, and money stays exact."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.budgets import BudgetExceeded, RedisBudgetStore, Window
from gateway.budgets.leases import LeasePolicy
from gateway.metrics import Metrics
from gateway.outage import RedisGuard
from gateway.ratelimit import RateLimiter
from policies.budget import BudgetSpec

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
TEAM = BudgetSpec("b-team", "team", "t1", "day", 1_000_000)
KEY = BudgetSpec("b-key", "key", "k1", "total", 500_000)
SMALL = BudgetSpec("b-small", "team", "t2", "day", 100_000)


def windows(*specs: BudgetSpec, now: datetime = NOW) -> list[Window]:
    return [Window.of(s, now, "UTC") for s in specs]


async def zero(_: Window) -> int:
    return 0


def ev(rid: str) -> dict[str, Any]:
    return {"request_id": rid}


def new_store(r: Redis, prefix: str, **policy: Any) -> RedisBudgetStore:
    return RedisBudgetStore(r, zero, prefix=prefix, lease=LeasePolicy(**policy))


async def counters(r: Redis, store: RedisBudgetStore, w: Window) -> dict[str, int]:
    raw = await r.hgetall(store._keys(w)[0])
    return {k.decode(): int(v) for k, v in raw.items()}


async def leased_after_first(store: RedisBudgetStore, ws: list[Window], amount: int) -> None:
    """The first request reserves in Redis and makes the counters; then leases are sized."""
    assert store.leases is not None
    rid = "first-" + store.leases.holder
    await store.reserve(rid, ws, amount)
    await store.settle(rid, ws, 0, ev(rid))
    for _ in range(200):
        if all((le := store.leases.leases.get(w.key)) and le.verified for w in ws):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("leases were not sized")


async def quiet(store: RedisBudgetStore) -> None:
    """Wait until no lease call is in flight (requests do not use a lease being resized)."""
    assert store.leases is not None
    for _ in range(400):
        await asyncio.sleep(0.005)
        if not any(le.busy for le in store.leases.leases.values()):
            return
    raise AssertionError("a lease call did not finish")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_url)
    yield r
    await r.aclose()


async def test_after_the_first_request_reservations_come_from_the_lease(
    redis: Redis, redis_prefix: str
) -> None:
    store = new_store(redis, redis_prefix, share=0.05, slots=8)
    ws = windows(TEAM, KEY)
    await leased_after_first(store, ws, 1_000)
    before = {w.spec.id: await counters(redis, store, w) for w in ws}
    # 8 x the largest worst case seen (1,000), within 5% of the headroom of each budget
    assert [before[w.spec.id]["leased"] for w in ws] == [8_000, 8_000]

    await store.reserve("r1", ws, 1_000)
    assert not await redis.exists(redis_prefix + "r:r1")  # no per-request record in Redis
    assert {w.spec.id: await counters(redis, store, w) for w in ws} == before

    assert await store.settle("r1", ws, 300, ev("r1")) == [300, 300]
    for w in ws:
        c = await counters(redis, store, w)
        # the cost moved from the lease to the spend: nothing else moved
        assert (c["spent"], c["reserved"], c["leased"]) == (300, 0, 7_700)
        assert store.leases is not None and store.leases.leases[w.key].amount == 7_700
        assert store.leases.leases[w.key].used == 0
    assert await store.settle("r1", ws, 300, ev("r1")) is None  # idempotent
    assert (await counters(redis, store, ws[0]))["spent"] == 300
    assert await redis.xlen(store.stream) == 2
    await store.close()
    for w in ws:  # closing gives every lease back
        assert (await counters(redis, store, w))["leased"] == 0


async def test_release_frees_the_slice_in_process(redis: Redis, redis_prefix: str) -> None:
    store = new_store(redis, redis_prefix, slots=2)
    ws = windows(TEAM)
    await leased_after_first(store, ws, 1_000)
    assert store.leases is not None
    lease = store.leases.leases[ws[0].key]
    await store.reserve("a", ws, 1_000)
    await store.reserve("b", ws, 1_000)
    assert lease.free == 0
    await store.release("a", ws)
    await quiet(store)
    c = await counters(redis, store, ws[0])
    assert lease.free >= 1_000 and c["leased"] == lease.amount and c["reserved"] == 0
    await store.reserve("c", ws, 1_000)  # the freed slice funds the next request
    assert set(store.leases.funded) == {"b", "c"}
    await store.close()


async def test_a_lease_takes_at_most_its_share_of_the_headroom(
    redis: Redis, redis_prefix: str
) -> None:
    store = new_store(redis, redis_prefix, share=0.1, slots=64)
    ws = windows(SMALL)
    await leased_after_first(store, ws, 2_000)
    c = await counters(redis, store, ws[0])
    assert c["leased"] == 10_000  # 64 x 2,000 wanted; 10% of the 100,000 headroom granted
    other = new_store(redis, redis_prefix, share=0.1, slots=64)
    await leased_after_first(other, ws, 2_000)
    # the second process's share is of what the first one's lease leaves
    assert (await counters(redis, store, ws[0]))["leased"] == 10_000 + 9_000
    await store.close()
    await other.close()


async def test_a_refused_request_gets_the_processs_own_free_lease_back_first(
    redis: Redis, redis_prefix: str
) -> None:
    store = new_store(redis, redis_prefix, share=0.5, slots=64)
    ws = windows(SMALL)
    await leased_after_first(store, ws, 1_000)
    assert (await counters(redis, store, ws[0]))["leased"] == 50_000
    # 90,000 fits the budget only if the lease's free 50,000 goes back: it does.
    await store.reserve("big", ws, 90_000)
    c = await counters(redis, store, ws[0])
    assert (c["reserved"], c["leased"]) == (90_000, 0)
    with pytest.raises(BudgetExceeded) as exc:
        await store.reserve("more", ws, 20_000)
    assert exc.value.remaining_nanos == 10_000
    await store.settle("big", ws, 85_000, ev("big"))
    await store.close()


async def test_a_dead_processs_lease_expires(redis: Redis, redis_prefix: str) -> None:
    dead = new_store(redis, redis_prefix, share=0.5, slots=64, ttl_s=1)
    ws = windows(SMALL)
    await leased_after_first(dead, ws, 1_000)
    assert dead.leases is not None
    dead.leases._closed = True  # the process dies: nothing renews its lease
    other = new_store(redis, redis_prefix, share=0.5)
    with pytest.raises(BudgetExceeded):
        await other.reserve("x", ws, 90_000)
    await asyncio.sleep(2.1)
    await other.reserve("x", ws, 90_000)
    assert (await counters(redis, other, ws[0]))["leased"] == 0
    await other.close()


async def test_a_lease_lost_in_redis_is_noticed_and_nothing_goes_negative(
    redis: Redis, redis_prefix: str
) -> None:
    store = new_store(redis, redis_prefix, slots=8)
    ws = windows(TEAM)
    await leased_after_first(store, ws, 1_000)
    assert store.leases is not None
    await store.reserve("inflight", ws, 1_000)
    bkey, zkey, hkey = store._keys(ws[0])
    # Redis loses the lease (expired while the process stalled, or Redis restarted).
    await redis.hdel(hkey, store.leases.holder)
    await redis.zrem(zkey, store.leases.holder)
    await redis.hset(bkey, "leased", 0)
    store.leases.invalidate()
    await store.settle("inflight", ws, 400, ev("inflight"))  # takes nothing from the lease
    lease = store.leases.leases[ws[0].key]
    for _ in range(200):
        if lease.verified and lease.amount > 0:  # noticed the loss, then leased anew
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)
    c = await counters(redis, store, ws[0])
    assert c["spent"] == 400 and c["leased"] == lease.amount == 8_000
    assert lease.used == 0
    await store.close()
    assert (await counters(redis, store, ws[0]))["leased"] == 0


async def test_a_replayed_settlement_of_a_leased_request_mirrors_what_redis_took(
    redis: Redis, redis_prefix: str
) -> None:
    store = new_store(redis, redis_prefix, slots=8)
    ws = windows(TEAM)
    await leased_after_first(store, ws, 1_000)
    assert store.leases is not None
    await store.reserve("r", ws, 1_000)
    lease = store.leases.leases[ws[0].key]
    # The settlement ran in Redis but its reply was lost (the gateway saw a timeout).
    keys = [redis_prefix + "s:r", redis_prefix + "r:r", store.stream, *store._keys(ws[0])]
    await store._settle(keys=keys, args=["r", 250, 1, 60, b"{}", store.leases.holder])
    assert await store.settle("r", ws, 250, ev("r")) is None  # the replay: already settled
    c = await counters(redis, store, ws[0])
    assert lease.amount == c["leased"] and lease.used == 0 and c["spent"] == 250
    await store.close()


async def test_guard_releases_a_leased_request_while_redis_is_down(
    redis: Redis, redis_prefix: str
) -> None:
    store = new_store(redis, redis_prefix, slots=8)
    guard = RedisGuard(
        redis,
        store,
        RateLimiter(redis, prefix=redis_prefix),
        Metrics(),
        None,
        zero,  # type: ignore[arg-type]
    )
    ws = windows(TEAM)
    await leased_after_first(store, ws, 1_000)
    await guard.reserve("r", ws, 1_000)
    assert store.leases is not None and "r" in store.leases.funded
    guard.mark_down(ConnectionError("cut"))
    await guard.release("r", ws)
    assert store.leases.funded == {} and store.leases.leases[ws[0].key].used == 0
    await guard._mark_up()  # Redis is back: leases are re-checked before they fund again
    assert not store.leases.leases[ws[0].key].verified
    await store.close()


def _worker(redis_url: str, prefix: str, n: int, idx: int, q: Any, now: datetime) -> None:
    # `now` comes from the parent: a spawned worker re-imports this module, and one started
    # after midnight would otherwise count in another day's window than the parent checks.
    async def run() -> tuple[int, int]:
        r = Redis.from_url(redis_url)
        store = RedisBudgetStore(
            r, zero, prefix=prefix, lease=LeasePolicy(share=0.2, slots=4, renew_s=0.05)
        )
        ws = windows(BudgetSpec("b-shared", "team", "t3", "day", 100_000), now=now)
        ok = 0
        leased = 0
        rng = random.Random(idx)

        async def one(i: int) -> None:
            nonlocal ok, leased
            rid = f"p{idx}-{i}"
            try:
                await store.reserve(rid, ws, 1_000)
            except BudgetExceeded:
                return
            assert store.leases is not None
            leased += rid in store.leases.funded
            await asyncio.sleep(rng.random() / 500)
            if rng.random() < 0.1:
                await store.release(rid, ws)
            else:
                await store.settle(rid, ws, 700, {"request_id": rid})
                ok += 1

        for start in range(0, n, 4):  # four requests at a time
            await asyncio.gather(*(one(i) for i in range(start, start + 4)))
        await store.close()
        await r.aclose()
        return ok, leased

    q.put(asyncio.run(run()))


def test_three_processes_with_leases_never_overspend(redis_url: str, redis_prefix: str) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(redis_url, redis_prefix, 80, i, q, NOW)) for i in range(3)
    ]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    ok = sum(o for o, _ in results)
    leased = sum(x for _, x in results)

    async def check() -> None:
        r = Redis.from_url(redis_url)
        store = RedisBudgetStore(r, zero, prefix=redis_prefix)
        spec = BudgetSpec("b-shared", "team", "t3", "day", 100_000)
        (state,) = await store.state(windows(spec))
        assert state.spent_nanos == ok * 700 <= spec.limit_nanos
        assert state.reserved_nanos == 0 and state.leased_nanos == 0  # all given back
        assert await r.xlen(store.stream) == ok
        await r.aclose()

    asyncio.run(check())
    # 240 requests of 1,000 worst case / 700 actual against 100,000: the budget ran out,
    # and most reservations were made in process.
    assert ok >= 100_000 // 1_000 - 3 * 4
    assert leased > 100


async def test_a_burst_that_misses_the_lease_sizes_it_in_one_call(
    redis: Redis, redis_prefix: str
) -> None:
    store = new_store(redis, redis_prefix, share=0.5, slots=2)
    ws = windows(TEAM)
    await leased_after_first(store, ws, 1_000)
    assert store.leases is not None
    lease = store.leases.leases[ws[0].key]
    assert lease.amount == 2_000
    # 20 requests at once: 2 fit the lease, the others reserve in Redis and tell the lease
    await asyncio.gather(*(store.reserve(f"b{i}", ws, 1_000) for i in range(20)))
    assert len(store.leases.funded) <= 2
    for _ in range(400):
        if lease.amount >= 2 * 20_000 and not lease.busy:
            break
        await asyncio.sleep(0.005)
    assert lease.amount >= 40_000  # twice the 20 worst cases held and missed
    await asyncio.gather(*(store.reserve(f"c{i}", ws, 1_000) for i in range(20)))
    assert len([r for r in store.leases.funded if r.startswith("c")]) == 20
    for i in range(20):
        await store.settle(f"b{i}", ws, 100, ev(f"b{i}"))
        await store.settle(f"c{i}", ws, 100, ev(f"c{i}"))
    c = await counters(redis, store, ws[0])
    assert c["spent"] == 4_000 and c["reserved"] == 0 and c["leased"] == lease.amount
    await store.close()


async def test_a_leased_reservation_never_settled_expires_like_one_in_redis(
    redis: Redis, redis_prefix: str
) -> None:
    store = RedisBudgetStore(
        redis, zero, prefix=redis_prefix, reservation_ttl_s=1, lease=LeasePolicy(renew_s=0.2)
    )
    ws = windows(TEAM)
    await leased_after_first(store, ws, 1_000)
    assert store.leases is not None
    await store.reserve("lost", ws, 1_000)  # its gateway code never settles nor releases it
    lease = store.leases.leases[ws[0].key]
    assert "lost" in store.leases.funded and lease.used == 1_000
    for _ in range(100):
        await asyncio.sleep(0.05)
        if "lost" not in store.leases.funded:
            break
    assert "lost" not in store.leases.funded and lease.used == 0
    await store.close()
    assert (await counters(redis, store, ws[0]))["leased"] == 0


async def test_a_leased_reservation_renewed_while_its_request_runs_does_not_expire(
    redis: Redis, redis_prefix: str
) -> None:
    store = RedisBudgetStore(
        redis, zero, prefix=redis_prefix, reservation_ttl_s=1, lease=LeasePolicy(renew_s=0.2)
    )
    ws = windows(TEAM)
    await leased_after_first(store, ws, 1_000)
    assert store.leases is not None
    await store.reserve("running", ws, 1_000)
    assert "running" in store.leases.funded
    loop = asyncio.get_running_loop()
    until = loop.time() + 2.5  # well past the 1 s TTL
    while loop.time() < until:
        await store.renew([("running", ws)])  # what the process does while it runs
        await asyncio.sleep(0.2)
        assert "running" in store.leases.funded, "a running request lost its slice"
    await store.settle("running", ws, 400, ev("running"))
    assert "running" not in store.leases.funded
    await store.close()
