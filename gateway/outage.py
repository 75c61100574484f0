"""Budgets and rate limits through a Redis outage: fail closed or fail open, then recover.

``RedisGuard`` sits between ``MoneyAccounting`` and Redis. While Redis answers it calls
the shared ``RedisBudgetStore`` and ``RateLimiter``. A connection error or timeout marks
Redis down (gauge ``tiergate_degraded{component="redis"}`` = 1, a warning log); from then
on requests do not wait on Redis:

- ``closed`` (default): requests are refused with 503 ``service_unavailable``;
- ``open``: requests are served with per-process limits, an in-process
  ``MemoryBudgetStore`` (started from the ledger's spend at the outage) and a local
  ``RateLimiter``, counted by ``tiergate_degraded_requests``.

A request that was served and cannot settle in Redis (it settled during the outage, or
Redis went away between its reservation and its settlement) is spooled in process. A
probe pings Redis; once it answers the gauge returns to 0 and every spooled settlement is
replayed through the normal settle script, which moves the shared budget counters and
appends the ledger event in one step, idempotent on the request id: a settlement whose
reply was lost is not counted twice, and the ledger's unique request id keeps one row per
request. A spool that could not be replayed by shutdown is written straight to the
ledger table.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import redis.exceptions
import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.budgets import BudgetState, MemoryBudgetStore, RedisBudgetStore, Window
from gateway.budgets.base import SpentLoader
from gateway.ledger import DATABASE_DOWN, insert_events
from gateway.metrics import Metrics
from gateway.ratelimit import RateLimiter
from gateway.spool import Spooled, SpoolFile
from gateway.tasks import stop
from policies.errors import ServiceUnavailable

log = structlog.get_logger("tiergate.outage")

FailureMode = Literal["closed", "open"]

# What an unreachable Redis raises (refused, reset, timed out); never a script or data error.
REDIS_DOWN = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    TimeoutError,
)

T = TypeVar("T")


async def _discard(_: dict[str, Any]) -> None:
    """Local stores hand no event on: the guard spools it for Redis instead."""


class RedisGuard:
    def __init__(
        self,
        redis: Redis,
        store: RedisBudgetStore,
        rates: RateLimiter,
        metrics: Metrics,
        sessions: async_sessionmaker[AsyncSession],
        load_spent: SpentLoader,
        *,
        mode: FailureMode = "closed",
        on_recover: Callable[[], Awaitable[None]] | None = None,
        probe_interval_s: float = 0.5,
        heartbeat_s: float = 1.0,
        remind_s: float = 30.0,
        spool_dir: Path | None = None,
        reservation_ttl_s: float = 900,
    ) -> None:
        self.redis = redis
        self._reservation_ttl_s = reservation_ttl_s
        self.store = store
        self.rates = rates
        self.metrics = metrics
        self.sessions = sessions
        self.mode: FailureMode = mode
        self._load_spent = load_spent
        self._on_recover = on_recover
        self._probe_s = probe_interval_s
        self._heartbeat_s = heartbeat_s
        self._remind_s = remind_s
        self.down = False
        self.down_since = 0.0
        self.served_degraded = 0
        self.local_rates = RateLimiter(None)
        self.local = self._new_local()
        self._held: dict[str, MemoryBudgetStore] = {}  # request id -> local store it reserved in
        self.spool: list[Spooled] = []
        self._file = SpoolFile(spool_dir) if spool_dir is not None else None
        self._replaying = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        metrics.degraded.labels("redis").set(0)
        metrics.degraded_requests.labels("redis")  # shown as 0 before the first outage
        metrics.ledger_spool_events.set(0)

    # ---- state -------------------------------------------------------------------------

    def _new_local(self) -> MemoryBudgetStore:
        return MemoryBudgetStore(
            self._local_spent, _discard, reservation_ttl_s=self._reservation_ttl_s
        )

    async def _local_spent(self, w: Window) -> int:
        try:
            return await self._load_spent(w)
        except DATABASE_DOWN as exc:
            # Redis and the database both away: local limits start from zero in this window.
            log.warning(
                "budget spend unknown: database unreachable", budget=w.spec.id, error=str(exc)
            )
            return 0

    def mark_down(self, exc: BaseException) -> None:
        if self.down:
            return
        self.down = True
        self.down_since = time.monotonic()
        self.served_degraded = 0
        # A fresh local store per outage: it starts from the ledger's spend as of now.
        self.local = self._new_local()
        self.metrics.degraded.labels("redis").set(1)
        log.warning(
            "Redis unreachable: "
            + (
                "refusing requests with 503 until it answers (TIERGATE_REDIS_FAILURE_MODE=closed)"
                if self.mode == "closed"
                else "serving with per-process budgets and rate limits "
                "(TIERGATE_REDIS_FAILURE_MODE=open)"
            ),
            mode=self.mode,
            error=f"{type(exc).__name__}: {exc}",
        )

    async def _mark_up(self) -> None:
        self.down = False
        if self.store.leases is not None:  # Redis may have restarted empty: re-check them
            self.store.leases.invalidate()
        self.metrics.degraded.labels("redis").set(0)
        log.warning(
            "Redis answers again: shared budgets and rate limits are back",
            outage_s=round(time.monotonic() - self.down_since, 1),
            served_degraded=self.served_degraded,
            spooled=len(self.spool),
        )
        if self._on_recover is not None:
            try:
                await self._on_recover()
            except Exception as exc:
                log.warning("recovery step failed", error=str(exc))

    def unavailable(self) -> ServiceUnavailable:
        return ServiceUnavailable(
            "budget store unavailable: Redis, which holds the shared budgets and rate limits, "
            "cannot be reached, and this gateway refuses requests until it answers again "
            "(TIERGATE_REDIS_FAILURE_MODE=closed). Retry in a few seconds; operators can "
            "restore Redis, or set TIERGATE_REDIS_FAILURE_MODE=open to serve with "
            "per-process limits meanwhile.",
            retry_after=5,
        )

    async def run(self, shared: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]) -> T:
        """``shared`` while Redis answers; when it does not, 503 (closed) or ``local`` (open)."""
        if not self.down:
            try:
                return await shared()
            except REDIS_DOWN as exc:
                self.mark_down(exc)
        if self.mode == "closed":
            raise self.unavailable()
        return await local()

    # ---- the budget store, guarded -----------------------------------------------------

    async def allow(
        self,
        key_id: str,
        rpm: int | None,
        tpm: int | None,
        tokens: int,
        at: tuple[int, float] | None = None,
    ) -> float:
        return await self.run(
            lambda: self.rates.allow(key_id, rpm, tpm, tokens, at),
            lambda: self.local_rates.allow(key_id, rpm, tpm, tokens, at),
        )

    async def add(self, key_id: str, minute: int, tokens: int) -> None:
        await self.run(
            lambda: self.rates.add(key_id, minute, tokens),
            lambda: self.local_rates.add(key_id, minute, tokens),
        )

    async def state(self, windows: Sequence[Window]) -> list[BudgetState]:
        local = self.local
        return await self.run(lambda: self.store.state(windows), lambda: local.state(windows))

    async def reserve(self, request_id: str, windows: Sequence[Window], amount_nanos: int) -> None:
        """Every request passes here once, budgets or not (its settlement needs Redis too)."""
        if not self.down:
            if not windows:
                return
            try:
                await self.store.reserve(request_id, windows, amount_nanos)
                return
            except REDIS_DOWN as exc:
                self.mark_down(exc)
        if self.mode == "closed":
            raise self.unavailable()
        local = self.local
        if windows:
            await local.reserve(request_id, windows, amount_nanos)
            self._held[request_id] = local
        self.served_degraded += 1
        self.metrics.degraded_requests.labels("redis").inc()

    async def settle(
        self, request_id: str, windows: Sequence[Window], actual_nanos: int, event: dict[str, Any]
    ) -> list[int] | None:
        local = self._held.pop(request_id, None)
        if local is None and not self.down:
            try:
                return await self.store.settle(request_id, windows, actual_nanos, event)
            except REDIS_DOWN as exc:
                self.mark_down(exc)
        # Served, but Redis cannot take the settlement now: count it locally, keep it for later.
        after = await (local or self.local).settle(request_id, windows, actual_nanos, event)
        if after is not None:
            item = Spooled(request_id, tuple(windows), actual_nanos, event)
            self.spool.append(item)
            if self._file is not None:
                self._file.append([item])
            self.metrics.ledger_spool_events.set(len(self.spool))
        return after

    async def release(self, request_id: str, windows: Sequence[Window]) -> None:
        local = self._held.pop(request_id, None)
        if local is not None:
            await local.release(request_id, windows)
            return
        if self.store.release_leased(request_id):
            return  # reserved from this process's lease: freed in process, Redis or not
        if self.down:
            return  # its Redis reservation, if any, expires after the reservation TTL
        try:
            await self.store.release(request_id, windows)
        except REDIS_DOWN as exc:
            self.mark_down(exc)

    async def renew(self, holds: Sequence[tuple[str, Sequence[Window]]]) -> None:
        """Keep live requests' reservations, wherever they were made, from expiring."""
        shared = []
        for request_id, windows in holds:
            local = self._held.get(request_id)
            if local is not None:
                await local.renew([(request_id, windows)])
            else:
                shared.append((request_id, windows))
        if shared and not self.down:
            try:
                await self.store.renew(shared)
            except REDIS_DOWN as exc:
                self.mark_down(exc)

    # ---- probing and recovery ----------------------------------------------------------

    def start(self) -> None:
        if self._file is not None:  # what processes killed during an outage left behind
            self.spool += self._file.adopt_orphans()
            self.metrics.ledger_spool_events.set(len(self.spool))
        self._task = asyncio.create_task(self._watch(), name="redis-guard")

    async def _watch(self) -> None:
        reminded = time.monotonic()
        while True:
            await asyncio.sleep(self._probe_s if self.down else self._heartbeat_s)
            try:
                await asyncio.wait_for(self.redis.ping(), timeout=2.0)
            except Exception as exc:  # refused, reset, timed out, or answering with an error
                self.mark_down(exc)
                if time.monotonic() - reminded >= self._remind_s:
                    reminded = time.monotonic()
                    log.warning(
                        "Redis still unreachable",
                        mode=self.mode,
                        down_s=round(time.monotonic() - self.down_since, 1),
                        served_degraded=self.served_degraded,
                        spooled=len(self.spool),
                    )
                continue
            if self.down:
                await self._mark_up()
            if self.spool:
                try:
                    await self.replay()
                except Exception as exc:  # Redis or the database away again: retry next round
                    log.warning("spooled settlements not replayed yet", error=str(exc))

    async def replay(self) -> int:
        """Settle every spooled request in Redis, oldest first. Returns how many were replayed."""
        done = 0
        async with self._replaying:
            while self.spool:
                item = self.spool[0]
                # Counters missing (expired, Redis restarted) are rebuilt from the ledger
                # first, which does not hold this request yet: the settle below adds it once.
                await self.store.state(item.windows)
                await self.store.settle(item.request_id, item.windows, item.cost_nanos, item.event)
                self.spool.pop(0)
                self.metrics.ledger_spool_events.set(len(self.spool))
                done += 1
            if self._file is not None:
                self._file.clear()
        if done:
            log.info("spooled settlements replayed to Redis", count=done)
        return done

    async def close(self) -> None:
        """Stop probing; replay the spool, or write what is left straight to the ledger."""
        await stop(self._task)
        try:
            await self._flush_spool()
        finally:
            if self._file is not None:
                self._file.close()

    async def _flush_spool(self) -> None:
        if not self.spool:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.replay(), timeout=5)
        if not self.spool:
            return
        events = [item.event for item in self.spool]
        try:
            await insert_events(self.sessions, events)
        except Exception as exc:
            log.error(
                "spooled settlements not written: neither Redis nor the database answered at "
                + (
                    f"shutdown; they stay in {self._file.path} for the next gateway process"
                    if self._file is not None
                    else "shutdown, and no spool directory is set: they are lost"
                ),
                count=len(events),
                request_ids=[item.request_id for item in self.spool][:100],
                error=str(exc),
            )
            return
        log.warning(
            "spooled settlements written to the ledger directly at shutdown; Redis budget "
            "counters of the current windows do not include them",
            count=len(events),
        )
        self.spool.clear()
        if self._file is not None:
            self._file.clear()
        self.metrics.ledger_spool_events.set(0)
