"""The in-flight journal (gateway/inflight.py) against a real Redis: what is written, when
an entry is a dead process's, and that every entry is settled once and released requests
never."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.accounting import Hold
from gateway.budgets.base import Window
from gateway.inflight import InflightJournal, hold_json, hold_of
from policies.budget import BudgetSpec


class Settled:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, rid: str, entry: dict[str, Any]) -> None:
        self.calls.append((rid, entry))


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_url)
    yield r
    await r.aclose()


def journal(redis: Redis, prefix: str, settled: Settled, orphan_s: float = 0.5) -> InflightJournal:
    return InflightJournal(redis, settled, prefix=prefix, interval_s=0.05, orphan_after_s=orphan_s)


async def entries(redis: Redis, prefix: str) -> tuple[int, int]:
    return await redis.hlen(prefix + "inflight"), await redis.zcard(prefix + "inflight:seen")


async def test_a_request_done_before_a_flush_never_reaches_redis(
    redis: Redis, redis_prefix: str
) -> None:
    j = journal(redis, redis_prefix, Settled())
    j.track("r1", lambda: {"n": 1})
    await j.done("r1")
    await j.flush()
    assert await entries(redis, redis_prefix) == (0, 0)


async def test_a_flush_writes_the_draft_and_done_removes_it(
    redis: Redis, redis_prefix: str
) -> None:
    j = journal(redis, redis_prefix, Settled())
    progress = {"chars": 10}
    j.track("r1", lambda: dict(progress))
    j.track("r2", lambda: None)  # nothing to bill yet: not written
    await j.flush()
    assert await redis.hget(redis_prefix + "inflight", "r1") == b'{"chars":10}'
    assert await entries(redis, redis_prefix) == (1, 1)
    first = await redis.zscore(redis_prefix + "inflight:seen", "r1")
    progress["chars"] = 99
    await asyncio.sleep(0.01)
    await j.flush()
    assert await redis.hget(redis_prefix + "inflight", "r1") == b'{"chars":99}'
    assert (await redis.zscore(redis_prefix + "inflight:seen", "r1") or 0) > (first or 0)
    await j.done("r1")
    await j.done("r2")
    assert await entries(redis, redis_prefix) == (0, 0)


async def test_a_release_racing_a_flush_leaves_nothing_to_bill(
    redis: Redis, redis_prefix: str
) -> None:
    j = journal(redis, redis_prefix, Settled())
    for i in range(50):
        j.track(f"r{i}", lambda: {"x": 1})
    # done() called while the flush is writing these very requests.
    await asyncio.gather(j.flush(), *(j.done(f"r{i}") for i in range(50)))
    await j.flush()
    assert await entries(redis, redis_prefix) == (0, 0)


async def test_a_dead_process_entries_are_settled_once_by_the_survivors(
    redis: Redis, redis_prefix: str
) -> None:
    dead_settled, a_settled, b_settled = Settled(), Settled(), Settled()
    dead = journal(redis, redis_prefix, dead_settled)
    for i in range(30):
        dead.track(f"d{i}", lambda i=i: {"i": i})
    await dead.flush()  # then the process is gone: no more heartbeats, no done()
    a = journal(redis, redis_prefix, a_settled)
    b = journal(redis, redis_prefix, b_settled)
    a.track("alive", lambda: {"alive": True})
    await a.flush()
    assert await a.sweep() == 0  # not old enough yet
    await asyncio.sleep(0.6)
    await a.flush()  # a's own request stays alive by its heartbeat
    counts = await asyncio.gather(a.sweep(limit=7), b.sweep(limit=7), a.sweep(), b.sweep())
    assert sum(counts) == 30
    got = sorted(rid for rid, _ in a_settled.calls + b_settled.calls)
    assert got == sorted(f"d{i}" for i in range(30))  # each once, the living one not
    assert dict(a_settled.calls + b_settled.calls)["d7"] == {"i": 7}
    assert await entries(redis, redis_prefix) == (1, 1)


async def test_an_entry_that_fails_to_settle_is_tried_again_later(
    redis: Redis, redis_prefix: str
) -> None:
    dead = journal(redis, redis_prefix, Settled())
    dead.track("d", lambda: {"v": 1})
    await dead.flush()
    tries: list[str] = []

    async def failing(rid: str, entry: dict[str, Any]) -> None:
        tries.append(rid)
        if len(tries) == 1:
            raise ConnectionError("database away")

    s = InflightJournal(redis, failing, prefix=redis_prefix, interval_s=0.05, orphan_after_s=0.2)
    await asyncio.sleep(0.3)
    assert await s.sweep() == 0  # claimed, failed: kept for a later sweep
    assert await s.sweep() == 0  # claimed by the first: not yet due again
    await asyncio.sleep(0.5)
    assert await s.sweep() == 1
    assert tries == ["d", "d"]
    assert await entries(redis, redis_prefix) == (0, 0)


async def test_the_running_journal_heartbeats_and_sweeps(redis: Redis, redis_prefix: str) -> None:
    dead = journal(redis, redis_prefix, Settled())
    dead.track("d", lambda: {"v": 1})
    await dead.flush()
    settled = Settled()
    live = journal(redis, redis_prefix, settled, orphan_s=0.3)
    live.track("mine", lambda: {"v": 2})
    live.start()
    try:
        deadline = time.monotonic() + 5
        while not settled.calls and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await live.close()
    assert settled.calls == [("d", {"v": 1})]
    assert await redis.hexists(redis_prefix + "inflight", "mine")


def test_a_hold_survives_the_journal() -> None:
    now = datetime(2026, 12, 5, 13, 30, tzinfo=UTC)
    spec = BudgetSpec("b1", "team", "t", "day", 5_000_000_000, (0.5, 0.9), downgrade_at=0.8)
    hold = Hold("r", 1234, (Window.of(spec, now, "Europe/Paris"),))
    back = hold_of("r", hold_json(hold))
    assert back.amount_nanos == 1234 and back.request_id == "r"
    (w,) = back.windows
    assert w.key == hold.windows[0].key
    assert (w.start, w.reset_at) == (hold.windows[0].start, hold.windows[0].reset_at)
    assert w.spec.limit_nanos == spec.limit_nanos
    assert w.spec.soft_thresholds == spec.soft_thresholds


async def test_a_short_request_never_waits_for_a_write_in_progress(
    redis: Redis, redis_prefix: str
) -> None:
    """``done`` for a request the running write does not hold returns without waiting for
    Redis: the request path pays nothing for the journal's writes."""
    j = journal(redis, redis_prefix, Settled())
    j.track("long", lambda: {"x": 1})
    async with j._lock:  # a write in progress, as far as done() can tell
        j._flushing = {"long"}
        j.track("short", lambda: {"x": 2})
        await asyncio.wait_for(j.done("short"), timeout=0.5)  # would wait on the lock
        j._flushing = set()
    assert await entries(redis, redis_prefix) == (0, 0)
