"""Where the in-flight journal keeps its entries (gateway/inflight.py): Redis when the
processes share one, else the database.

Both keep, per running request, its entry (JSON) and a heartbeat, and both claim the
entries of dead processes atomically: a claim pushes the heartbeat ahead by a lease, so one
claimer settles each entry and a failed settlement is tried again after the lease.

- ``RedisEntries``: a hash of entries and a sorted set of heartbeats; budget holds live in
  Redis too, so a dead process's request that had no answer yet is journaled as well, for
  a survivor to release its hold.
- ``RedisOrDatabase``: Redis, and the database while Redis cannot be reached, so that a
  process killed during a Redis outage leaves entries as fresh as its last write.
- ``SqlEntries``: the ``inflight_requests`` table (PostgreSQL, or the embedded SQLite). The
  budgets are each process's own, so a dead process's holds died with it: only entries with
  something to bill are kept. The ledger is written in batches after a settlement, so a
  settled request's entry is not removed but replaced by its settlement, and a settled
  orphan's is kept: a claim drops an entry once its request has a ledger row, and until
  then a process killed in between leaves the entry for the next claim to bill. Never
  twice: the ledger row decides.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Protocol

from redis.asyncio import Redis
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db.models import InflightRequest as _Row
from gateway.db.models import LedgerRow
from gateway.ledger import DATABASE_DOWN
from gateway.outage import REDIS_DOWN


class Entries(Protocol):
    # Whether budget holds outlive the process (then entries without a bill are kept too).
    keeps_holds: bool
    # Whether a settled request's entry stays until a claim finds its ledger row (the
    # settlement reaches the ledger later than the entry's removal would) or goes at once.
    ledger_retires: bool

    async def write(self, changed: dict[str, bytes], seen: dict[str, float]) -> None:
        """Store ``changed`` entries; set the heartbeat of every request in ``seen``."""

    async def remove(self, ids: Sequence[str]) -> None: ...

    async def claim(self, cutoff: float, lease: float, limit: int) -> list[tuple[str, bytes]]:
        """Entries whose heartbeat is older than ``cutoff``, their heartbeat set to ``lease``."""

    async def orphan_cost(self, request_id: str) -> int | None:
        """What another process billed this request from its entry, where only the ledger
        can tell (None: not so billed, or the budget store tells: Redis)."""

    async def unbilled(self) -> list[tuple[str, bytes]]:
        """Every entry whose request has no ledger row yet (without Redis: what a process
        starting counts as held in its budgets; Redis keeps the holds themselves)."""


# Claim the entries whose heartbeat is older than the cutoff: each is pushed ahead by the
# claim's lease (so one sweeper settles it) and returned with its payload.
_CLAIM = """
local out = {}
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])) do
  redis.call('ZADD', KEYS[2], ARGV[2], rid)
  local payload = redis.call('HGET', KEYS[1], rid)
  if payload then
    out[#out + 1] = rid
    out[#out + 1] = payload
  else
    redis.call('ZREM', KEYS[2], rid)
  end
end
return out
"""


class RedisEntries:
    keeps_holds = True
    ledger_retires = False  # settle.lua writes the ledger stream in the settlement itself

    def __init__(self, redis: Redis, prefix: str = "tg:") -> None:
        self.redis = redis
        self.hash = prefix + "inflight"
        self.zset = prefix + "inflight:seen"
        self._claim = redis.register_script(_CLAIM)

    async def write(self, changed: dict[str, bytes], seen: dict[str, float]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for rid, payload in changed.items():
            pipe.hset(self.hash, rid, payload)
        pipe.zadd(self.zset, seen)
        await pipe.execute()

    async def remove(self, ids: Sequence[str]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.hash, *ids)
        pipe.zrem(self.zset, *ids)
        await pipe.execute()

    async def orphan_cost(self, request_id: str) -> int | None:
        return None  # settle.lua finds and replaces an orphan settlement itself

    async def unbilled(self) -> list[tuple[str, bytes]]:
        return []  # the holds live in Redis with the entries

    async def claim(self, cutoff: float, lease: float, limit: int) -> list[tuple[str, bytes]]:
        found = await self._claim(keys=[self.hash, self.zset], args=[cutoff, lease, limit])
        return [
            (found[i].decode() if isinstance(found[i], bytes) else str(found[i]), found[i + 1])
            for i in range(0, len(found), 2)
        ]


class SqlEntries:
    keeps_holds = False
    ledger_retires = True  # the ledger is written in batches, after the settlement

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def write(self, changed: dict[str, bytes], seen: dict[str, float]) -> None:
        async with self.sessions() as s:
            if changed:
                now = max(seen.values())
                rows = [
                    {"request_id": r, "seen": seen.get(r, now), "payload": p.decode()}
                    for r, p in changed.items()
                ]
                insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
                stmt = insert(_Row)
                set_ = {"seen": stmt.excluded.seen, "payload": stmt.excluded.payload}
                await s.execute(
                    stmt.on_conflict_do_update(index_elements=["request_id"], set_=set_), rows
                )
            beats = [r for r in seen if r not in changed]
            if beats:  # one flush gives every request the same heartbeat
                await s.execute(
                    update(_Row).where(_Row.request_id.in_(beats)).values(seen=seen[beats[0]])
                )
            await s.commit()

    async def remove(self, ids: Sequence[str]) -> None:
        async with self.sessions() as s:
            await s.execute(delete(_Row).where(_Row.request_id.in_(list(ids))))
            await s.commit()

    async def orphan_cost(self, request_id: str) -> int | None:
        async with self.sessions() as s:
            row = (
                await s.execute(
                    select(LedgerRow.cost_nanos, LedgerRow.route_reason).where(
                        LedgerRow.request_id == request_id
                    )
                )
            ).first()
        return int(row[0]) if row is not None and row[1].endswith("orphaned") else None

    async def unbilled(self) -> list[tuple[str, bytes]]:
        billed = select(LedgerRow.request_id).where(LedgerRow.request_id == _Row.request_id)
        async with self.sessions() as s:
            rows = await s.execute(select(_Row.request_id, _Row.payload).where(~billed.exists()))
            return [(r, p.encode()) for r, p in rows.all()]

    async def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` have an entry here."""
        async with self.sessions() as s:
            found = await s.execute(select(_Row.request_id).where(_Row.request_id.in_(list(ids))))
            return set(found.scalars())

    async def claim(self, cutoff: float, lease: float, limit: int) -> list[tuple[str, bytes]]:
        due = select(_Row.request_id).where(_Row.seen < cutoff).order_by(_Row.seen).limit(limit)
        async with self.sessions() as s:
            # The heartbeat is tested again on the row itself: of two concurrent claimers,
            # the second finds it pushed ahead and leaves it.
            claimed = (
                await s.execute(
                    update(_Row)
                    .where(_Row.request_id.in_(due), _Row.seen < cutoff)
                    .values(seen=lease)
                    .returning(_Row.request_id, _Row.payload)
                )
            ).all()
            billed: set[str] = set()
            if claimed:
                ids = [r for r, _ in claimed]
                found = await s.execute(
                    select(LedgerRow.request_id).where(LedgerRow.request_id.in_(ids))
                )
                billed = set(found.scalars())
            if billed:
                await s.execute(delete(_Row).where(_Row.request_id.in_(list(billed))))
            await s.commit()
        return [(r, p.encode()) for r, p in claimed if r not in billed]


# A request that ended while Redis was away, whose Redis entry could not be removed: never
# billed from that stale entry.
ENDED = b'{"ended":true}'


class RedisOrDatabase:
    """Redis entries, written to the database instead while Redis cannot be reached.

    During an outage every write goes to the database whole (each running request's last
    payload, with its heartbeat), and a request that ends leaves a marker there in place of
    the Redis entry it could not remove; once Redis answers again the next write puts the
    entries back in Redis whole and clears them from the database. Where both stores hold
    a request (its process was killed during the outage, and Redis kept an older entry), the
    database decides: its entry is the newer, or says the request ended, and a settlement is
    idempotent, so the stale Redis entry must never be the one billed."""

    keeps_holds = True
    ledger_retires = False

    def __init__(self, primary: RedisEntries, fallback: SqlEntries) -> None:
        self.primary = primary
        self.fallback = fallback
        self._last: dict[str, bytes] = {}  # every payload this process's entries hold
        self._away: set[str] = set()  # this process's entries (or end markers) in the database
        self._stale: set[str] = set()  # ended while Redis was away: still to remove there
        self._claimed: set[str] = set()  # other processes' entries claimed from the database

    async def write(self, changed: dict[str, bytes], seen: dict[str, float]) -> None:
        self._last.update(changed)
        whole = {rid: self._last[rid] for rid in seen if rid in self._last}
        try:
            await self.primary.write(whole if self._away else changed, seen)
        except REDIS_DOWN:
            await self.fallback.write(whole, seen)
            self._away.update(whole)
            return
        if self._stale:
            await self.primary.remove(list(self._stale))
            self._stale.clear()
        if self._away:
            back = list(self._away)
            await self.fallback.remove(back)
            self._away.difference_update(back)

    async def remove(self, ids: Sequence[str]) -> None:
        for rid in ids:
            self._last.pop(rid, None)
        try:
            await self.primary.remove(ids)
        except REDIS_DOWN:
            now = time.time()
            await self.fallback.write({r: ENDED for r in ids}, {r: now for r in ids})
            self._away.update(ids)
            self._stale.update(ids)
            return
        ours = [r for r in ids if r in self._away or r in self._claimed]
        if ours:
            await self.fallback.remove(ours)
            self._away.difference_update(ours)
            self._claimed.difference_update(ours)

    async def orphan_cost(self, request_id: str) -> int | None:
        return None  # settle.lua replaces an orphan settlement itself

    async def unbilled(self) -> list[tuple[str, bytes]]:
        return []

    async def claim(self, cutoff: float, lease: float, limit: int) -> list[tuple[str, bytes]]:
        found: list[tuple[str, bytes]] = []
        with contextlib.suppress(*REDIS_DOWN):  # the database's entries can still be settled
            found = await self.primary.claim(cutoff, lease, limit)
        decided: set[str] = set()
        fallen: list[tuple[str, bytes]] = []
        # The database away as well: Redis's entries are settled as before this store.
        with contextlib.suppress(*DATABASE_DOWN):
            if found:
                decided = await self.fallback.present([r for r, _ in found])
            fallen = await self.fallback.claim(cutoff, lease, limit)
        if decided:  # stale in Redis: the database's entry is billed when it is due
            await self.primary.remove(list(decided))
            found = [(r, p) for r, p in found if r not in decided]
        ended: list[str] = []
        for rid, payload in fallen:
            if payload == ENDED:
                ended.append(rid)
            else:
                self._claimed.add(rid)
                found.append((rid, payload))
        if ended:
            with contextlib.suppress(*REDIS_DOWN, *DATABASE_DOWN):
                await self.primary.remove(ended)
                await self.fallback.remove(ended)
        return found
