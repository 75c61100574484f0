"""Budget reserve + settle throughput and latency against Redis on loopback.

    .venv/bin/python bench/money/bench_budget.py --ops 5000 --concurrency 64

Measures (1) the money path of one request, reserve then settle (two Lua calls, one of
which appends the ledger event to the stream), serially: p50/p99 latency; (2) pairs per
second with N concurrent tasks in one process. Budgets: one team and one key budget per
request, as a keyed request with both has.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from redis.asyncio import Redis

from gateway.budgets import RedisBudgetStore, Window
from policies.budget import BudgetSpec

ROOT = Path(__file__).resolve().parents[2]


async def zero(_: Window) -> int:
    return 0


async def main(args: argparse.Namespace) -> dict[str, object]:
    r = Redis.from_url(args.redis_url)
    prefix = f"tgbench:{uuid.uuid4().hex[:6]}:"
    store = RedisBudgetStore(r, zero, prefix=prefix)
    now = datetime.now(UTC)
    ws = [
        Window.of(BudgetSpec("team-b", "team", "t", "day", 10**15), now, "UTC"),
        Window.of(BudgetSpec("key-b", "key", "k", "month", 10**15), now, "UTC"),
    ]
    event = {"request_id": "x", "cost_nanos": 1234, "route_reason": "alias:deepseek-chat" * 3}

    async def pair(i: int) -> None:
        rid = f"r{i}"
        await store.reserve(rid, ws, 50_000)
        await store.settle(rid, ws, 1234, {**event, "request_id": rid})

    for i in range(200):
        await pair(-i - 1)
    lat = []
    for i in range(args.ops):
        t = time.perf_counter()
        await pair(i)
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    sem = asyncio.Semaphore(args.concurrency)

    async def limited(i: int) -> None:
        async with sem:
            await pair(i)

    t = time.perf_counter()
    await asyncio.gather(*(limited(args.ops + i) for i in range(args.ops)))
    rate = args.ops / (time.perf_counter() - t)
    states = await store.state(ws)
    keys = [k async for k in r.scan_iter(prefix + "*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()
    expected = (2 * args.ops + 200) * 1234
    assert all(s.spent_nanos == expected and s.reserved_nanos == 0 for s in states), states
    return {
        "serial_pair_ms": {"p50": statistics.median(lat), "p99": lat[int(0.99 * len(lat))]},
        "pairs_per_s_concurrent": rate,
        "ops": args.ops,
        "concurrency": args.concurrency,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--ops", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "var" / "bench" / "budget.json"))
    a = ap.parse_args()
    res = asyncio.run(main(a))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    s = res["serial_pair_ms"]
    print(f"reserve+settle, serial:   p50 {s['p50']:.3f} ms   p99 {s['p99']:.3f} ms")  # type: ignore[index]
    print(
        f"reserve+settle, {a.concurrency} concurrent: {res['pairs_per_s_concurrent']:.0f} pairs/s"
    )
    print(f"wrote {a.out}")
