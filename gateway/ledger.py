"""The ledger: one row per request, written idempotently (request id unique).

With Redis, settlement appends each event to a stream inside the same Lua step that moves
the budget; ``StreamDrainer`` (one per gateway process, one consumer group for all) writes
batches to SQL and acknowledges them only after the commit, and claims entries a dead
consumer left pending. A gateway killed after settling loses nothing; a database outage
only delays rows. An entry the database refuses (it cannot happen to an event the gateway
wrote, whose strings are fitted to their columns, but a stream may hold anything) is found
by splitting the batch, moved to the ``ledger_dead_letters`` table with a log line and a
metric, and acknowledged, so it never holds back the entries behind it. Without Redis,
``BatchedWriter`` queues events in process, writes them in batches and flushes on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import BigInteger, DateTime, Float, Integer, String, func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.accounting import Settlement
from gateway.budgets.base import ORPHAN, REPLACED
from gateway.db.models import LedgerDeadLetter, LedgerRow
from gateway.tasks import stop

log = structlog.get_logger("tiergate.ledger")

# What an unreachable database raises through SQLAlchemy and its driver (not a query error).
DATABASE_DOWN = (OperationalError, InterfaceError, OSError, TimeoutError)


_SETTLEMENT_FIELDS = tuple(f.name for f in fields(Settlement))


def event_of(s: Settlement) -> dict[str, Any]:
    data = {name: getattr(s, name) for name in _SETTLEMENT_FIELDS}  # flat: no deep copy
    data["ts"] = s.ts.isoformat()
    return data


def settlement_of(event: dict[str, Any]) -> Settlement:
    """The settlement an event was made of (``event_of``'s inverse)."""
    data = {name: event[name] for name in _SETTLEMENT_FIELDS if name in event}
    data["ts"] = datetime.fromisoformat(event["ts"])
    return Settlement(**data)


# Text columns and their lengths: every string is fitted to its column before a write.
_TEXT_LIMITS = {
    c.name: c.type.length
    for c in LedgerRow.__table__.columns
    if isinstance(c.type, String) and c.type.length
}


def fit_text(value: str, limit: int) -> str:
    """A string PostgreSQL and SQLite both store as is: no NUL, at most ``limit`` characters."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value if len(value) <= limit else value[:limit]


# An event that replaces its request's row: the request was settled from the in-flight
# journal (gateway/inflight.py) while its own process was stalled, then by that process.
SUPERSEDES = "supersedes"


def _row(event: dict[str, Any]) -> dict[str, Any]:
    row = dict(event)
    for flag in (SUPERSEDES, ORPHAN, REPLACED):
        row.pop(flag, None)
    row["ts"] = datetime.fromisoformat(row["ts"])
    row.setdefault("kind", "client")
    for name, limit in _TEXT_LIMITS.items():
        value = row.get(name)
        if isinstance(value, str):
            row[name] = fit_text(value, limit)
    return row


def _pg_array_type(column: Any) -> str:
    kind = column.type
    if isinstance(kind, DateTime):
        return "timestamptz"
    if isinstance(kind, Float):
        return "double precision"
    if isinstance(kind, BigInteger):
        return "bigint"
    if isinstance(kind, Integer):
        return "integer"
    return "text"


# PostgreSQL: one statement of fixed text whatever the batch size, each column sent as one
# array and unnested into rows. A multi-row VALUES statement differs with every batch size,
# so the driver parses it anew each time; that parsing was the drain's largest cost.
_PG_COLUMNS = tuple(c.name for c in LedgerRow.__table__.columns if c.name != "id")
_PG_INSERT = text(
    f"INSERT INTO {LedgerRow.__tablename__} ({', '.join(_PG_COLUMNS)}) "
    "SELECT * FROM unnest("
    + ", ".join(f"CAST(:{c} AS {_pg_array_type(LedgerRow.__table__.c[c])}[])" for c in _PG_COLUMNS)
    + ") ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
)


async def insert_events(
    sessions: async_sessionmaker[AsyncSession], events: Sequence[dict[str, Any]]
) -> int:
    """Insert events, skipping request ids already present, except that an event marked
    ``SUPERSEDES`` replaces its request's row. Returns rows inserted or replaced."""
    if not events:
        return 0
    replacing = [e for e in events if e.get(SUPERSEDES)]
    if replacing:
        done = await insert_events(sessions, [e for e in events if not e.get(SUPERSEDES)])
        return done + await _replace_rows(sessions, replacing)
    async with sessions() as session:
        rows = [_row(e) for e in events]
        if session.get_bind().dialect.name == "postgresql":
            columns = {c: [r.get(c) for r in rows] for c in _PG_COLUMNS}
            result = await session.execute(_PG_INSERT, columns)
        else:  # SQLite, the embedded default: one statement over many parameter sets
            stmt = (
                sqlite_insert(LedgerRow)
                .on_conflict_do_nothing(index_elements=["request_id"])
                .returning(LedgerRow.request_id)
            )
            result = await session.execute(stmt, rows)
        inserted = len(result.all())
        await session.commit()
        return inserted


async def _replace_rows(
    sessions: async_sessionmaker[AsyncSession], events: Sequence[dict[str, Any]]
) -> int:
    """Insert each event's row, or replace the row its request already has (rare: one per
    request settled twice, one statement each)."""
    async with sessions() as session:
        dialect = session.get_bind().dialect.name
        for event in events:
            row = _row(event)
            insert = pg_insert if dialect == "postgresql" else sqlite_insert
            stmt = insert(LedgerRow).values(**row)
            update = {c: stmt.excluded[c] for c in row if c not in ("id", "request_id")}
            await session.execute(
                stmt.on_conflict_do_update(index_elements=["request_id"], set_=update)
            )
        await session.commit()
    return len(events)


async def spent_since(
    sessions: async_sessionmaker[AsyncSession], scope: str, scope_id: str, since: datetime
) -> int:
    column = LedgerRow.key_id if scope == "key" else LedgerRow.team_id
    async with sessions() as session:
        total = await session.scalar(
            select(func.coalesce(func.sum(LedgerRow.cost_nanos), 0)).where(
                column == scope_id, LedgerRow.ts >= since, LedgerRow.kind != "shadow"
            )
        )
    return int(total or 0)


@dataclass(frozen=True, slots=True)
class _Dead:
    stream_id: bytes
    raw: bytes
    request_id: str | None
    error: str


class _Isolating:
    """Writing events so that one the database refuses never holds back the others."""

    sessions: async_sessionmaker[AsyncSession]
    written: int
    dead_letters: int
    on_dead_letter: Callable[[int], None] | None

    async def _insert_isolating(self, items: list[tuple[bytes, dict[str, Any]]]) -> list[_Dead]:
        """Insert ``items``; when the database refuses the batch (not when it is away),
        split it until the entries it refuses are alone, and return those."""
        if not items:
            return []
        try:
            self.written += await insert_events(self.sessions, [e for _, e in items])
            return []
        except DATABASE_DOWN:
            raise
        except Exception as exc:
            if len(items) == 1:
                eid, event = items[0]
                rid = event.get("request_id")
                return [
                    _Dead(
                        eid,
                        orjson.dumps(event),
                        rid if isinstance(rid, str) else None,
                        f"{type(exc).__name__}: {exc}",
                    )
                ]
        mid = len(items) // 2
        return await self._insert_isolating(items[:mid]) + await self._insert_isolating(items[mid:])

    async def _set_aside(self, dead: list[_Dead]) -> None:
        """Move entries that cannot be written to the dead-letter table, loudly."""
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = [
            {
                "stream_id": fit_text(d.stream_id.decode("ascii", "replace"), 64),
                "request_id": fit_text(d.request_id, 64) if d.request_id else None,
                "received_at": now,
                "error": fit_text(d.error, 4000),
                "event": fit_text(d.raw.decode("utf-8", "backslashreplace"), 1_000_000),
            }
            for d in dead
        ]
        for d in dead:
            log.error(
                "ledger entry set aside: it cannot be written to the ledger",
                request_id=d.request_id,
                stream_id=d.stream_id.decode("ascii", "replace"),
                error=d.error[:500],
                table="ledger_dead_letters",
            )
        try:
            async with self.sessions() as session:
                await session.execute(insert(LedgerDeadLetter), rows)
                await session.commit()
        except DATABASE_DOWN:
            raise  # retried with the batch once the database answers
        except Exception as exc:
            # Even the dead-letter table refuses it: the log keeps the entry; the stream
            # must not stop for it.
            for row in rows:
                log.error("ledger entry dropped", entry=str(row["event"])[:10_000], error=repr(exc))
        self.dead_letters += len(dead)
        if self.on_dead_letter is not None:
            self.on_dead_letter(len(dead))


class StreamDrainer(_Isolating):
    def __init__(
        self,
        redis: Redis,
        sessions: async_sessionmaker[AsyncSession],
        stream: str,
        *,
        group: str = "ledger-writers",
        batch: int = 500,
        claim_idle_ms: int = 30_000,
        interval_s: float = 0.2,
        on_dead_letter: Callable[[int], None] | None = None,
    ) -> None:
        self.redis = redis
        self.on_dead_letter = on_dead_letter  # told how many entries were set aside
        self.interval_s = interval_s
        self.sessions = sessions
        self.stream = stream
        self.group = group
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.written = 0
        self.failures = 0
        self.dead_letters = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-drainer")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait((self._task,), timeout=10)  # its last pass
            await stop(self._task)

    async def _write(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        good: list[tuple[bytes, dict[str, Any]]] = []
        dead: list[_Dead] = []
        for eid, data in entries:
            raw = data.get(b"event", b"")
            event: Any = None
            try:
                event = orjson.loads(raw)
                _row(event)  # a row can be made of it
                if data.get(SUPERSEDES.encode()):
                    event[SUPERSEDES] = True
                good.append((eid, event))
            except Exception as exc:
                rid = event.get("request_id") if isinstance(event, dict) else None
                dead.append(
                    _Dead(eid, raw, rid if isinstance(rid, str) else None, f"unreadable: {exc!r}")
                )
        dead += await self._insert_isolating(good)
        if dead:
            await self._set_aside(dead)
        ids = [eid for eid, _ in entries]
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.stream, self.group, *ids)
        pipe.xdel(self.stream, *ids)
        await pipe.execute()

    async def drain_once(self, block_ms: int = 1000) -> int:
        """Claim stale entries, then read new ones; write and acknowledge. Returns entries done."""
        done = 0
        claim: Any = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=self.batch
        )
        claimed = [e for e in claim[1] if e[1]]
        if claimed:
            await self._write(claimed)
            done += len(claimed)
        # Our own pending entries first (after a failed write), then new ones.
        for start in ("0", ">"):
            resp: Any = await self.redis.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: start},
                count=self.batch,
                block=None if start == "0" else block_ms,
            )
            entries: list[Any] = [e for _, batch in resp or [] for e in batch if e[1]]
            if entries:
                await self._write(entries)
                done += len(entries)
        return done

    async def _run(self) -> None:
        backoff = 0.1
        need_group = True
        while not self._stop.is_set():
            try:
                if need_group:
                    await self.ensure_group()
                    need_group = False
                done = await self.drain_once(block_ms=500)
                backoff = 0.1
                if 0 < done < self.batch:
                    # Batch the writes: a busy gateway must not pay one commit per request.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), timeout=self.interval_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database or Redis is away: keep the entries, retry
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    # Redis restarted without our consumer group (and what it held).
                    log.error("ledger consumer group missing in Redis; creating it again")
                    need_group = True
                self.failures += 1
                log.warning("ledger write failed; will retry", error=str(exc), backoff_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        with contextlib.suppress(Exception):
            await self.drain_once(block_ms=1)

    async def lag(self) -> tuple[int, float]:
        """(entries not yet written, age in seconds of the oldest one)."""
        length = int(await self.redis.xlen(self.stream))
        if not length:
            return 0, 0.0
        first: Any = await self.redis.xrange(self.stream, count=1)
        ms = int(bytes(first[0][0]).split(b"-")[0]) if first else 0
        return length, max(0.0, time.time() - ms / 1000)


class BatchedWriter(_Isolating):
    """In-process ledger path: events queue in memory and are written in batches."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        interval_s: float = 0.2,
        on_dead_letter: Callable[[int], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.interval_s = interval_s
        self.pending: list[dict[str, Any]] = []
        self.written = 0
        self.failures = 0
        self.dead_letters = 0
        self.on_dead_letter = on_dead_letter
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    async def put(self, event: dict[str, Any]) -> None:
        self.pending.append(event)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def flush(self) -> None:
        async with self._lock:
            while self.pending:
                batch = self.pending[:1000]
                dead = await self._insert_isolating([(b"memory", e) for e in batch])
                if dead:
                    await self._set_aside(dead)
                del self.pending[: len(batch)]

    async def _run(self) -> None:
        backoff = self.interval_s
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=backoff)
            try:
                await self.flush()
                backoff = self.interval_s
            except Exception as exc:  # keep the events in memory and retry
                self.failures += 1
                log.warning(
                    "ledger write failed; will retry", error=str(exc), pending=len(self.pending)
                )
                backoff = min(backoff * 2, 5.0)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.flush()

    async def lag(self) -> tuple[int, float]:
        return len(self.pending), 0.0
