"""The durable ledger path: Redis stream -> SQL, exactly once, through crashes and outages."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import delete, func, select

from gateway.db.engine import make_engine, make_sessions
from gateway.db.models import LedgerRow
from gateway.ledger import (
    SUPERSEDES,
    BatchedWriter,
    StreamDrainer,
    insert_events,
    spent_since,
)


def event(rid: str, cost: int = 100, team: str = "t1") -> dict:
    return {
        "request_id": rid,
        "ts": datetime(2026, 11, 23, 12, tzinfo=UTC).isoformat(),
        "key_id": "k1",
        "team_id": team,
        "protocol": "openai",
        "requested_model": "deepseek-chat",
        "tier": "flash",
        "mode": "non-thinking",
        "backend": "hosted",
        "replica": None,
        "route_reason": "alias:deepseek-chat",
        "cache_hit_tokens": 1,
        "cache_miss_tokens": 2,
        "output_tokens": 3,
        "reasoning_tokens": 0,
        "price_version": "x@1",
        "cost_nanos": cost,
        "hosted_equiv_nanos": cost * 2,
        "latency_ms": 1.5,
        "status": 200,
    }


@pytest.fixture
async def sessions(pg_url: str):
    engine = make_engine(pg_url)
    s = make_sessions(engine)
    async with s() as session:
        await session.execute(delete(LedgerRow))
        await session.commit()
    yield s
    await engine.dispose()


async def count(sessions) -> int:
    async with sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(LedgerRow)) or 0)


async def test_insert_is_idempotent_on_request_id(sessions) -> None:
    assert await insert_events(sessions, [event("a"), event("b")]) == 2
    assert await insert_events(sessions, [event("a"), event("c")]) == 1
    assert await count(sessions) == 3
    since = datetime(2026, 11, 23, tzinfo=UTC)
    assert await spent_since(sessions, "team", "t1", since) == 300
    assert await spent_since(sessions, "key", "k1", datetime(2026, 11, 24, tzinfo=UTC)) == 0


async def test_drainer_writes_every_event_exactly_once_after_a_crash(
    sessions, redis_url: str, redis_prefix: str
) -> None:
    r = Redis.from_url(redis_url)
    stream = redis_prefix + "ledger"
    crashed = StreamDrainer(r, sessions, stream, claim_idle_ms=200)
    await crashed.ensure_group()
    for i in range(50):
        await r.xadd(stream, {"event": orjson.dumps(event(f"e{i}"))})
    # A consumer reads a batch and dies before writing or acknowledging it.
    await r.xreadgroup(crashed.group, "dead-consumer", {stream: ">"}, count=20)
    survivor = StreamDrainer(r, sessions, stream, claim_idle_ms=200)
    survivor.consumer = "survivor"
    await survivor.drain_once(block_ms=10)
    assert await count(sessions) == 30  # the dead consumer's 20 are still pending
    await asyncio.sleep(0.3)
    await survivor.drain_once(block_ms=10)
    assert await count(sessions) == 50
    # Replaying the same events (a retried write after a lost ack) changes nothing.
    for i in range(10):
        await r.xadd(stream, {"event": orjson.dumps(event(f"e{i}"))})
    await survivor.drain_once(block_ms=10)
    assert await count(sessions) == 50 and await r.xlen(stream) == 0
    await r.aclose()


async def test_database_outage_delays_rows_and_loses_none(
    pg_url: str, sessions, redis_url: str, redis_prefix: str
) -> None:
    r = Redis.from_url(redis_url)
    stream = redis_prefix + "ledger"
    down_engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    drainer = StreamDrainer(r, make_sessions(down_engine), stream)
    await drainer.ensure_group()
    drainer.start()
    for i in range(25):
        await r.xadd(stream, {"event": orjson.dumps(event(f"o{i}"))})
    await asyncio.sleep(1.0)
    assert drainer.failures >= 1 and await count(sessions) == 0
    assert (await drainer.lag())[0] == 25
    drainer.sessions = sessions  # the database is back
    for _ in range(100):
        if await count(sessions) == 25:
            break
        await asyncio.sleep(0.1)
    await drainer.stop()
    assert await count(sessions) == 25 and (await drainer.lag())[0] == 0
    await down_engine.dispose()
    await r.aclose()


async def test_batched_writer_flushes_on_stop(tmp_path) -> None:
    from gateway.db.migrate import upgrade

    url = f"sqlite+aiosqlite:///{tmp_path}/l.db"
    upgrade(url)
    engine = make_engine(url)
    s = make_sessions(engine)
    w = BatchedWriter(s, interval_s=60)
    w.start()
    for _ in range(7):
        await w.put(event(f"{uuid.uuid4().hex}"))
    await w.stop()
    assert await count(s) == 7 and w.pending == []
    await engine.dispose()


async def _check_every_column_survives_the_batch_insert(s) -> None:
    big = 3 * 2**40  # past 32 bits
    rows = [
        event("x1", cost=big),
        {**event("x2", team="t2"), "replica": "http://10.0.0.7:8000", "latency_ms": 0.125},
        {**event("x3"), "key_id": None, "team_id": None, "kind": "shadow", "status": 499},
        event("x1", cost=1),  # the same id again in one batch: the first one stays
    ]
    assert await insert_events(s, rows) == 3
    async with s() as session:
        stored = {r.request_id: r for r in (await session.scalars(select(LedgerRow))).all()}
    assert sorted(stored) == ["x1", "x2", "x3"]
    for want in rows[:3]:
        got = stored[want["request_id"]]
        for name, value in want.items():
            have = getattr(got, name)
            if name == "ts":
                have = have.replace(tzinfo=have.tzinfo or UTC).isoformat()
            assert have == value, (want["request_id"], name)
    assert stored["x1"].kind == "client" and stored["x3"].kind == "shadow"


@pytest.fixture(params=["postgresql", "sqlite"])
async def either(request: pytest.FixtureRequest, pg_url: str, tmp_path):
    """Sessions on an emptied PostgreSQL ledger or on a migrated SQLite file."""
    from gateway.db.migrate import upgrade

    url = pg_url
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/l.db"
        upgrade(url)
    engine = make_engine(url)
    s = make_sessions(engine)
    async with s() as session:
        await session.execute(delete(LedgerRow))
        await session.commit()
    yield s
    await engine.dispose()


async def test_every_column_survives_the_batch_insert(either) -> None:
    await _check_every_column_survives_the_batch_insert(either)


async def test_a_poison_entry_is_set_aside_and_never_stops_the_drain(
    sessions, redis_url: str, redis_prefix: str
) -> None:
    from gateway.db.models import LedgerDeadLetter

    async with sessions() as session:
        await session.execute(delete(LedgerDeadLetter))
        await session.commit()
    r = Redis.from_url(redis_url)
    stream = redis_prefix + "ledger"
    told: list[int] = []
    drainer = StreamDrainer(r, sessions, stream, on_dead_letter=told.append)
    await drainer.ensure_group()
    hostile = [
        # what a client once could put in a model name: fitted to the column, written
        {**event("nul"), "requested_model": "claude-x\x00y"},
        {**event("long"), "requested_model": "claude-" + "z" * 500, "route_reason": "r" * 900},
    ]
    poison = [
        b"{not json",
        orjson.dumps({**event("bad-ts"), "ts": "yesterday"}),
        orjson.dumps({**event("bad-cost"), "cost_nanos": "lots"}),  # the database refuses it
        orjson.dumps(event("huge-cost")).replace(
            b'"cost_nanos":100', b'"cost_nanos":1180591620717411303424'
        ),
    ]
    for i in range(3):
        await r.xadd(stream, {"event": orjson.dumps(event(f"before{i}"))})
    for e in hostile:
        await r.xadd(stream, {"event": orjson.dumps(e)})
    for raw in poison:
        await r.xadd(stream, {"event": raw})
    for i in range(3):
        await r.xadd(stream, {"event": orjson.dumps(event(f"after{i}"))})
    await drainer.drain_once(block_ms=10)
    async with sessions() as session:
        rows = {x.request_id: x for x in (await session.scalars(select(LedgerRow))).all()}
        dead = (await session.scalars(select(LedgerDeadLetter))).all()
    assert set(rows) == {
        "before0",
        "before1",
        "before2",
        "nul",
        "long",
        *(f"after{i}" for i in range(3)),
    }
    assert rows["nul"].requested_model == "claude-xy"
    assert rows["long"].requested_model == ("claude-" + "z" * 500)[:200]
    assert len(rows["long"].route_reason) == 500
    assert sorted(d.request_id or "" for d in dead) == ["", "bad-cost", "bad-ts", "huge-cost"]
    assert sum(told) == 4 and drainer.dead_letters == 4
    assert await r.xlen(stream) == 0  # acknowledged: nothing left to retry
    # New entries keep flowing after the poison.
    await r.xadd(stream, {"event": orjson.dumps(event("later"))})
    await drainer.drain_once(block_ms=10)
    assert await count(sessions) == 9
    await r.aclose()


async def test_the_in_process_writer_sets_a_poison_event_aside_too(tmp_path) -> None:
    from gateway.db.migrate import upgrade
    from gateway.db.models import LedgerDeadLetter

    url = f"sqlite+aiosqlite:///{tmp_path}/l.db"
    upgrade(url)
    engine = make_engine(url)
    s = make_sessions(engine)
    told: list[int] = []
    w = BatchedWriter(s, interval_s=60, on_dead_letter=told.append)
    await w.put(event("good-1"))
    await w.put({**event("bad"), "ts": "not a time"})
    await w.put({**event("nul"), "requested_model": "a\x00b"})
    await w.put(event("good-2"))
    await w.flush()
    async with s() as session:
        dead = (await session.scalars(select(LedgerDeadLetter))).all()
        models = dict(
            (await session.execute(select(LedgerRow.request_id, LedgerRow.requested_model))).all()
        )
    assert models == {"good-1": "deepseek-chat", "nul": "ab", "good-2": "deepseek-chat"}
    assert [d.request_id for d in dead] == ["bad"] and told == [1] and w.pending == []
    await engine.dispose()


async def _check_a_superseding_event_replaces_the_row(s) -> None:
    orphan = {**event("o1", cost=50), "status": 502, "route_reason": "x;usage=estimated;orphaned"}
    assert await insert_events(s, [orphan, event("o2")]) == 2
    real = {**event("o1", cost=400), "output_tokens": 120, SUPERSEDES: True}
    # the replacement and a plain event in one batch; a plain duplicate never replaces
    assert await insert_events(s, [real, event("o3"), {**event("o2", cost=9)}]) == 2
    async with s() as session:
        stored = {r.request_id: r for r in (await session.scalars(select(LedgerRow))).all()}
    assert sorted(stored) == ["o1", "o2", "o3"]
    assert (stored["o1"].cost_nanos, stored["o1"].status) == (400, 200)
    assert (stored["o1"].output_tokens, stored["o1"].route_reason) == (120, "alias:deepseek-chat")
    assert stored["o2"].cost_nanos == 100
    # one batch holding the orphan row and its replacement, in stream order
    later = {**event("o4", cost=7), "status": 502}
    assert await insert_events(s, [later, {**event("o4", cost=70), SUPERSEDES: True}]) == 2
    async with s() as session:
        row = (await session.scalars(select(LedgerRow).where(LedgerRow.request_id == "o4"))).one()
    assert (row.cost_nanos, row.status) == (70, 200)


async def test_a_superseding_event_replaces_the_row(either) -> None:
    await _check_a_superseding_event_replaces_the_row(either)


async def test_the_drainer_reads_the_supersedes_flag(
    sessions, redis_url: str, redis_prefix: str
) -> None:
    r = Redis.from_url(redis_url)
    stream = redis_prefix + "ledger"
    d = StreamDrainer(r, sessions, stream)
    await d.ensure_group()
    await r.xadd(stream, {"event": orjson.dumps({**event("s1", cost=5), "status": 502})})
    await r.xadd(stream, {"event": orjson.dumps(event("s1", cost=500)), "supersedes": "1"})
    await r.xadd(stream, {"event": orjson.dumps(event("s1", cost=999))})  # a replay: ignored
    await d.drain_once(block_ms=10)
    async with sessions() as session:
        row = (await session.scalars(select(LedgerRow).where(LedgerRow.request_id == "s1"))).one()
    assert (row.cost_nanos, row.status) == (500, 200)
    await r.aclose()
