"""The in-flight journal (gateway/inflight.py) against each of its stores, a real Redis,
PostgreSQL and SQLite (gateway/inflight_entries.py): what is written, when an entry is a dead
process's, and that every entry is settled once and released requests never."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import exceptions as redis_exceptions
from redis.asyncio import Redis
from sqlalchemy import delete, func, select

from gateway.accounting import Hold
from gateway.budgets.base import Window
from gateway.db.engine import make_engine, make_sessions
from gateway.db.migrate import upgrade
from gateway.db.models import InflightRequest, LedgerRow
from gateway.inflight import InflightJournal, hold_json, hold_of
from gateway.inflight_entries import (
    ENDED,
    Entries,
    RedisEntries,
    RedisOrDatabase,
    SqlEntries,
)
from gateway.ledger import insert_events
from policies.budget import BudgetSpec


class Settled:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, rid: str, entry: dict[str, Any]) -> None:
        self.calls.append((rid, entry))


@dataclass
class Store:
    """One journal store and how a test reads it back."""

    make: Callable[[], Entries]
    count: Callable[[], Awaitable[int]]  # entries held
    read: Callable[[str], Awaitable[tuple[bytes | None, float | None]]]  # entry, heartbeat
    sessions: Any = None  # the database's, for the SQL stores


async def _redis_store(redis_url: str, prefix: str) -> AsyncIterator[Store]:
    r = Redis.from_url(redis_url)

    async def count() -> int:
        held, beats = await r.hlen(prefix + "inflight"), await r.zcard(prefix + "inflight:seen")
        assert held == beats  # never an entry without its heartbeat, or the reverse
        return int(held)

    async def read(rid: str) -> tuple[bytes | None, float | None]:
        return await r.hget(prefix + "inflight", rid), await r.zscore(prefix + "inflight:seen", rid)

    yield Store(lambda: RedisEntries(r, prefix), count, read)
    await r.aclose()


async def _sql_store(url: str) -> AsyncIterator[Store]:
    engine = make_engine(url)
    sessions = make_sessions(engine)
    async with sessions() as s:
        await s.execute(delete(InflightRequest))
        await s.execute(delete(LedgerRow))
        await s.commit()

    async def count() -> int:
        async with sessions() as s:
            return int(await s.scalar(select(func.count()).select_from(InflightRequest)) or 0)

    async def read(rid: str) -> tuple[bytes | None, float | None]:
        async with sessions() as s:
            row = await s.get(InflightRequest, rid)
            return (row.payload.encode(), row.seen) if row else (None, None)

    yield Store(lambda: SqlEntries(sessions), count, read, sessions)
    await engine.dispose()


async def _open(kind: str, request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[Store]:
    if kind == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        gen = _redis_store(url, prefix)
    elif kind == "postgresql":
        gen = _sql_store(request.getfixturevalue("pg_url"))
    else:
        upgrade(f"sqlite:///{tmp}/tg.db")
        gen = _sql_store(f"sqlite:///{tmp}/tg.db")
    async for s in gen:
        yield s


@pytest.fixture(params=["redis", "postgresql", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async for s in _open(request.param, request, tmp_path):
        yield s


@pytest.fixture(params=["postgresql", "sqlite"])
async def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async for s in _open(request.param, request, tmp_path):
        yield s


def ledger_event(rid: str) -> dict[str, Any]:
    """A settled request's ledger event (what the journal's ledger check reads)."""
    return {
        "request_id": rid,
        "ts": datetime.now(UTC).isoformat(),
        "key_id": None,
        "team_id": "t",
        "protocol": "openai",
        "requested_model": "m",
        "tier": "flash",
        "mode": "non-thinking",
        "backend": "hosted",
        "replica": None,
        "route_reason": "test",
        "cache_hit_tokens": 0,
        "cache_miss_tokens": 1,
        "output_tokens": 1,
        "reasoning_tokens": 0,
        "price_version": "x@1",
        "cost_nanos": 5,
        "hosted_equiv_nanos": 5,
        "latency_ms": 1.0,
        "status": 200,
    }


def journal(store: Store, settled: Settled, orphan_s: float = 0.5) -> InflightJournal:
    return InflightJournal(store.make(), settled, interval_s=0.05, orphan_after_s=orphan_s)


def billable(**fields: Any) -> dict[str, Any]:
    """An entry with something to bill (the only kind a store without shared holds keeps)."""
    return {"event": fields}


async def test_a_request_done_before_a_flush_is_never_written(store: Store) -> None:
    j = journal(store, Settled())
    j.track("r1", lambda: billable(n=1))
    await j.done("r1")
    await j.flush()
    assert await store.count() == 0


async def test_a_flush_writes_the_draft_and_done_removes_it(store: Store) -> None:
    j = journal(store, Settled())
    progress = {"chars": 10}
    j.track("r1", lambda: billable(**progress))
    j.track("r2", lambda: None)  # nothing to bill yet: not written
    await j.flush()
    entry, first = await store.read("r1")
    assert entry == b'{"event":{"chars":10}}'
    assert await store.count() == 1
    progress["chars"] = 99
    await asyncio.sleep(0.01)
    await j.flush()
    entry, second = await store.read("r1")
    assert entry == b'{"event":{"chars":99}}'
    assert (second or 0) > (first or 0)
    j.track("r3", lambda: billable(chars=1))
    await j.flush()  # r1 unchanged: only its heartbeat moves
    assert ((await store.read("r1"))[1] or 0) > (second or 0)
    await j.done("r1")
    await j.done("r2")
    await j.done("r3")
    assert await store.count() == 0


async def test_a_release_racing_a_flush_leaves_nothing_to_bill(store: Store) -> None:
    j = journal(store, Settled())
    for i in range(50):
        j.track(f"r{i}", lambda: billable(x=1))
    # done() called while the flush is writing these very requests.
    await asyncio.gather(j.flush(), *(j.done(f"r{i}") for i in range(50)))
    await j.flush()
    assert await store.count() == 0


async def test_a_dead_process_entries_are_settled_once_by_the_survivors(store: Store) -> None:
    dead_settled, a_settled, b_settled = Settled(), Settled(), Settled()
    dead = journal(store, dead_settled)
    for i in range(30):
        dead.track(f"d{i}", lambda i=i: billable(i=i))
    await dead.flush()  # then the process is gone: no more heartbeats, no done()
    a = journal(store, a_settled)
    b = journal(store, b_settled)
    a.track("alive", lambda: billable(alive=True))
    await a.flush()
    assert await a.sweep() == 0  # not old enough yet
    await asyncio.sleep(0.6)
    await a.flush()  # a's own request stays alive by its heartbeat
    counts = await asyncio.gather(a.sweep(limit=7), b.sweep(limit=7), a.sweep(), b.sweep())
    assert sum(counts) == 30
    got = sorted(rid for rid, _ in a_settled.calls + b_settled.calls)
    assert got == sorted(f"d{i}" for i in range(30))  # each once, the living one not
    assert dict(a_settled.calls + b_settled.calls)["d7"] == billable(i=7)
    if store.sessions is None:
        assert await store.count() == 1
        return
    # Without Redis the settled entries stay until their ledger rows are written (the
    # ledger is written in batches, after the settlement): claims drop them then.
    assert await store.count() == 31
    assert await a.sweep() == 0 and await store.count() == 31  # within the claims' lease
    assert await insert_events(store.sessions, [ledger_event(f"d{i}") for i in range(30)]) == 30
    await asyncio.sleep(1.1)  # a claim's lease: claimable again twice the orphan age later
    await a.flush()
    assert await a.sweep() + await b.sweep() == 0  # nothing settled again
    assert await store.count() == 1
    assert len(a_settled.calls + b_settled.calls) == 30


async def test_an_entry_that_fails_to_settle_is_tried_again_later(store: Store) -> None:
    dead = journal(store, Settled())
    dead.track("d", lambda: billable(v=1))
    await dead.flush()
    tries: list[str] = []

    async def failing(rid: str, entry: dict[str, Any]) -> None:
        tries.append(rid)
        if len(tries) == 1:
            raise ConnectionError("database away")

    s = InflightJournal(store.make(), failing, interval_s=0.05, orphan_after_s=0.2)
    await asyncio.sleep(0.3)
    assert await s.sweep() == 0  # claimed, failed: kept for a later sweep
    assert await s.sweep() == 0  # claimed by the first: not yet due again
    await asyncio.sleep(0.5)
    assert await s.sweep() == 1
    assert tries == ["d", "d"]
    assert await store.count() == (0 if store.sessions is None else 1)  # see the ledger test


async def test_the_running_journal_heartbeats_and_sweeps(store: Store) -> None:
    dead = journal(store, Settled())
    dead.track("d", lambda: billable(v=1))
    await dead.flush()
    settled = Settled()
    live = journal(store, settled, orphan_s=0.3)
    live.track("mine", lambda: billable(v=2))
    live.start()
    try:
        deadline = time.monotonic() + 5
        while not settled.calls and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await live.close()
    assert settled.calls == [("d", billable(v=1))]
    assert (await store.read("mine"))[0] is not None


async def test_only_a_store_that_keeps_holds_journals_a_request_with_nothing_to_bill(
    store: Store,
) -> None:
    """A request whose answer has not begun leaves only its hold, for a survivor to release
    in Redis; without Redis the hold died with its process, so nothing is written."""
    j = journal(store, Settled())
    j.track("waiting", lambda: {"hold": {"amount": 1, "windows": []}})
    await j.flush()
    assert await store.count() == (1 if store.sessions is None else 0)
    await j.done("waiting")
    assert await store.count() == 0


async def test_a_claim_drops_an_entry_whose_request_the_ledger_already_has(
    sql_store: Store,
) -> None:
    """A process that died between settling a request and removing its entry: the ledger row
    is the settlement, so the entry is dropped, never billed twice (in Redis the budget
    store's settled marker makes the second settlement a no-op: test_budgets.py)."""
    store = sql_store
    dead = journal(store, Settled())
    dead.track("billed", lambda: billable(v=1))
    dead.track("unbilled", lambda: billable(v=2))
    await dead.flush()
    assert await insert_events(store.sessions, [ledger_event("billed")]) == 1
    settled = Settled()
    survivor = journal(store, settled, orphan_s=0.1)
    await asyncio.sleep(0.2)
    assert await survivor.sweep() == 1
    assert [rid for rid, _ in settled.calls] == ["unbilled"]
    assert await store.count() == 1  # "unbilled" stays until its ledger row is written


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
    store: Store,
) -> None:
    """``done`` for a request the running write does not hold returns without waiting for
    the store: the request path pays nothing for the journal's writes."""
    j = journal(store, Settled())
    j.track("long", lambda: billable(x=1))
    async with j._lock:  # a write in progress, as far as done() can tell
        j._flushing = {"long"}
        j.track("short", lambda: billable(x=2))
        await asyncio.wait_for(j.done("short"), timeout=0.5)  # would wait on the lock
        j._flushing = set()
    assert await store.count() == 0


async def test_without_redis_a_settled_request_leaves_its_settlement_until_the_ledger_has_it(
    sql_store: Store,
) -> None:
    """The ledger is written up to a batch interval after the settlement: a process killed
    in between must not take the bill with it. So a journaled request's entry becomes its
    settlement, which another process (or this one restarted) bills if the ledger never
    got it, and drops if it did."""
    store = sql_store
    dying = journal(store, Settled())
    dying.track("lost", lambda: billable(status=502))
    dying.track("written", lambda: billable(status=502))
    dying.track("released", lambda: billable(status=502))
    await dying.flush()
    await dying.done("lost", lambda: billable(status=200))
    await dying.done("written", lambda: billable(status=200))
    await dying.done("released")  # released (no bill): its entry goes at once
    assert (await store.read("lost"))[0] == orjson.dumps(billable(status=200))
    assert await store.count() == 2
    assert await insert_events(store.sessions, [ledger_event("written")]) == 1
    # then the process dies before "lost" reaches the ledger
    settled = Settled()
    survivor = journal(store, settled, orphan_s=0.2)
    await asyncio.sleep(0.3)
    assert await survivor.sweep() == 1
    assert settled.calls == [("lost", billable(status=200))]
    assert await store.count() == 1  # "lost" stays until its own ledger row is written


async def test_an_orphan_settled_by_a_process_that_dies_before_its_ledger_row_is_settled_again(
    sql_store: Store,
) -> None:
    store = sql_store
    dead = journal(store, Settled())
    dead.track("r", lambda: billable(v=1))
    await dead.flush()
    first, second = Settled(), Settled()
    a = journal(store, first, orphan_s=0.2)
    await asyncio.sleep(0.3)
    assert await a.sweep() == 1  # a settles it, then dies before its ledger batch
    b = journal(store, second, orphan_s=0.2)
    assert await b.sweep() == 0  # within a's claim
    await asyncio.sleep(0.5)
    assert await b.sweep() == 1
    assert first.calls == second.calls == [("r", billable(v=1))]
    await b.flush()
    assert await a.sweep() == 0  # a (were it alive) never settles it twice


async def test_with_redis_a_settled_request_entry_goes_at_once(
    redis_url: str, redis_prefix: str
) -> None:
    """settle.lua writes the ledger stream in the settlement itself: nothing to keep."""
    async for store in _redis_store(redis_url, redis_prefix):
        j = journal(store, Settled())
        j.track("r", lambda: billable(v=1))
        await j.flush()
        await j.done("r", lambda: billable(v=2))
        assert await store.count() == 0


class CountingEntries:
    """A store that counts its writes, optionally slow or failing (wraps a real one)."""

    def __init__(self, inner: Entries, delay_s: float = 0.0, fail: bool = False) -> None:
        self.inner, self.delay_s, self.fail = inner, delay_s, fail
        self.keeps_holds, self.ledger_retires = inner.keeps_holds, inner.ledger_retires
        self.writes: list[set[str]] = []

    async def write(self, changed: dict[str, bytes], seen: dict[str, float]) -> None:
        self.writes.append(set(seen))
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("store away")
        await self.inner.write(changed, seen)

    async def remove(self, ids: Any) -> None:
        await self.inner.remove(ids)

    async def claim(self, cutoff: float, lease: float, limit: int) -> list[tuple[str, bytes]]:
        return await self.inner.claim(cutoff, lease, limit)

    async def orphan_cost(self, request_id: str) -> int | None:
        return await self.inner.orphan_cost(request_id)


async def test_an_opened_stream_is_journaled_before_its_first_byte(store: Store) -> None:
    """Without this, a stream opened less than one flush interval before a kill had no
    entry, and was never billed."""
    entries = CountingEntries(store.make())
    j = InflightJournal(entries, Settled(), interval_s=3600, orphan_after_s=0.2)
    j.track("s", lambda: billable(chars=0))
    j.opened("s")
    await j.written()  # no flush has run
    assert (await store.read("s"))[0] == orjson.dumps(billable(chars=0))
    # the process dies here: a survivor bills it
    settled = Settled()
    survivor = journal(store, settled, orphan_s=0.2)
    await asyncio.sleep(0.3)
    assert await survivor.sweep() == 1
    assert settled.calls == [("s", billable(chars=0))]


async def test_streams_opening_together_share_one_write(store: Store) -> None:
    entries = CountingEntries(store.make(), delay_s=0.05)
    j = InflightJournal(entries, Settled(), interval_s=3600)
    for i in range(40):
        j.track(f"s{i}", lambda i=i: billable(i=i))
    j.opened("s0")  # a first write on its own
    await asyncio.sleep(0.01)  # under way
    for i in range(1, 40):
        j.opened(f"s{i}")
    await j.written()
    assert entries.writes == [{"s0"}, {f"s{i}" for i in range(1, 40)}]
    assert await store.count() == 40
    j.track("late", lambda: billable(i=99))
    j.track("gone", lambda: billable(i=98))
    j.opened("gone")
    j.opened("late")
    await j.done("gone")  # ended before the write ran: nothing written for it
    await j.written()
    assert entries.writes[2:] == [{"late"}]
    await asyncio.gather(*(j.done(f"s{i}") for i in range(40)), j.done("late"))
    assert await store.count() == 0


async def test_a_stream_never_waits_for_the_store_and_a_failed_write_is_retried(
    store: Store,
) -> None:
    slow = CountingEntries(store.make(), delay_s=1.0)
    j = InflightJournal(slow, Settled(), interval_s=3600)
    j.track("s", lambda: billable(v=1))
    j.opened("s")  # returns at once; the write runs in the background
    assert (await store.read("s"))[0] is None
    await asyncio.wait_for(j.written(), 3)
    assert (await store.read("s"))[0] == orjson.dumps(billable(v=1))
    failing = CountingEntries(store.make(), fail=True)
    k = InflightJournal(failing, Settled(), interval_s=3600)
    k.track("f", lambda: billable(v=2))
    k.opened("f")
    await k.written()  # logged, not raised
    assert failing.writes == [{"f"}] and (await store.read("f"))[0] is None
    failing.fail = False
    await k.flush()  # the next flush writes it
    assert (await store.read("f"))[0] == orjson.dumps(billable(v=2))


async def test_without_redis_the_unbilled_entries_are_what_a_restart_holds(store: Store) -> None:
    dead = journal(store, Settled())
    for rid in ("billed", "running", "settled-not-written"):
        dead.track(rid, lambda rid=rid: billable(rid=rid))
    await dead.flush()
    await dead.done("settled-not-written", lambda: billable(rid="settled", status=200))
    held: list[tuple[str, dict[str, Any]]] = []

    async def hold(rid: str, entry: dict[str, Any]) -> None:
        held.append((rid, entry))

    if store.sessions is None:  # Redis keeps the holds with the entries: nothing to adopt
        assert await journal(store, Settled()).adopt(hold) == 0
        return
    assert await insert_events(store.sessions, [ledger_event("billed")]) == 1
    assert await journal(store, Settled()).adopt(hold) == 2
    assert sorted(held) == [
        ("running", billable(rid="running")),
        ("settled-not-written", billable(rid="settled", status=200)),
    ]


class FlakyRedis(RedisEntries):
    """Real Redis entries that raise as an unreachable Redis does while ``down``."""

    down = False

    async def write(self, changed: dict[str, bytes], seen: dict[str, float]) -> None:
        if self.down:
            raise redis_exceptions.ConnectionError("Connection refused")
        await super().write(changed, seen)

    async def remove(self, ids: Any) -> None:
        if self.down:
            raise redis_exceptions.ConnectionError("Connection refused")
        await super().remove(ids)

    async def claim(self, cutoff: float, lease: float, limit: int) -> list[tuple[str, bytes]]:
        if self.down:
            raise redis_exceptions.ConnectionError("Connection refused")
        return await super().claim(cutoff, lease, limit)


@pytest.fixture
async def both(
    redis_url: str, redis_prefix: str, pg_url: str
) -> AsyncIterator[tuple[Store, Store, FlakyRedis]]:
    async for r in _redis_store(redis_url, redis_prefix):
        async for db in _sql_store(pg_url):
            yield r, db, FlakyRedis(Redis.from_url(redis_url), redis_prefix)


async def test_during_a_redis_outage_the_journal_is_written_to_the_database(
    both: tuple[Store, Store, FlakyRedis],
) -> None:
    """A process killed while Redis is away leaves entries as fresh as its last write (in
    the database), and the survivor bills those, never the stale ones Redis kept."""
    r, db, flaky = both
    progress = {"chars": 10}
    dying = InflightJournal(RedisOrDatabase(flaky, SqlEntries(db.sessions)), Settled())
    dying.track("s", lambda: billable(**progress))
    dying.track("done-in-outage", lambda: billable(chars=5))
    await dying.flush()  # Redis up: both in Redis
    assert (await r.read("s"))[0] == orjson.dumps(billable(chars=10))
    flaky.down = True
    progress["chars"] = 900
    await dying.flush()  # Redis away: the database has them whole
    assert (await db.read("s"))[0] == orjson.dumps(billable(chars=900))
    assert (await db.read("done-in-outage"))[0] == orjson.dumps(billable(chars=5))
    await dying.done("done-in-outage")  # ended: Redis's stale entry must never be billed
    assert (await db.read("done-in-outage"))[0] == ENDED
    # the process dies; Redis comes back; a survivor sweeps
    settled = Settled()
    prefix = flaky.hash[: -len("inflight")]
    survivor = InflightJournal(
        RedisOrDatabase(RedisEntries(flaky.redis, prefix), SqlEntries(db.sessions)),
        settled,
        orphan_after_s=0.2,
    )
    flaky.down = False
    await asyncio.sleep(0.3)
    await survivor.sweep()
    await survivor.sweep()
    # the newer payload, never Redis's stale 10; the ended request not at all
    assert settled.calls == [("s", billable(chars=900))]
    assert await db.count() == 0 and await r.count() == 0


async def test_when_redis_answers_again_the_entries_go_back_to_it(
    both: tuple[Store, Store, FlakyRedis],
) -> None:
    r, db, flaky = both
    j = InflightJournal(RedisOrDatabase(flaky, SqlEntries(db.sessions)), Settled())
    j.track("s", lambda: billable(chars=1))
    flaky.down = True
    await j.flush()
    assert await db.count() == 1 and await r.count() == 0
    flaky.down = False
    await j.flush()  # unchanged since, but written whole to Redis
    assert await db.count() == 0
    assert (await r.read("s"))[0] == orjson.dumps(billable(chars=1))
    await j.done("s")
    assert await r.count() == 0


class DownDatabase(SqlEntries):
    """A database that cannot be reached."""

    async def present(self, ids: Any) -> set[str]:
        raise OSError("connection refused")

    async def claim(self, cutoff: float, lease: float, limit: int) -> list[tuple[str, bytes]]:
        raise OSError("connection refused")


async def test_with_the_database_away_redis_entries_settle_as_before(
    both: tuple[Store, Store, FlakyRedis],
) -> None:
    r, db, flaky = both
    dead = InflightJournal(RedisOrDatabase(flaky, SqlEntries(db.sessions)), Settled())
    dead.track("d", lambda: billable(v=1))
    await dead.flush()
    settled = Settled()
    survivor = InflightJournal(
        RedisOrDatabase(flaky, DownDatabase(db.sessions)), settled, orphan_after_s=0.2
    )
    await asyncio.sleep(0.3)
    assert await survivor.sweep() == 1
    assert settled.calls == [("d", billable(v=1))] and await r.count() == 0
