"""``MoneyAccounting``: keys, rate limits, budgets and the ledger behind the pipeline's hooks.

Embedded default: SQLite ledger and key store, in-process budgets and batched ledger
writes. Production: PostgreSQL plus Redis, where budgets, rate limits, key revocations
and the ledger stream are shared by every gateway replica. While Redis is unreachable,
``RedisGuard`` (gateway/outage.py) refuses requests or serves them with per-process limits,
as ``TIERGATE_REDIS_FAILURE_MODE`` says; while the database is, cached keys keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.accounting import ANONYMOUS, BudgetView, Caller, Hold, RateCharge, Settlement
from gateway.budgets import (
    BudgetExceeded,
    BudgetStore,
    MemoryBudgetStore,
    RedisBudgetStore,
    Window,
)
from gateway.budgets.base import ORPHAN, REPLACED
from gateway.budgets.leases import LeasePolicy
from gateway.db.models import ApiKey, Budget, RateLimit
from gateway.keys import hash_key
from gateway.ledger import (
    DATABASE_DOWN,
    SUPERSEDES,
    BatchedWriter,
    StreamDrainer,
    event_of,
    spent_since,
)
from gateway.metrics import Metrics
from gateway.outage import REDIS_DOWN, FailureMode, RedisGuard
from gateway.ratelimit import RateLimiter, window
from gateway.tasks import stop
from policies.budget import (
    PERIODS,
    BudgetSpec,
    Period,
    PeriodClock,
    crossed,
    should_downgrade,
)
from policies.errors import (
    AuthenticationFailed,
    BudgetExceededError,
    RateLimited,
    ServiceUnavailable,
)
from policies.pricing import usd_text

log = structlog.get_logger("tiergate.money")


def _period(value: str) -> Period:
    for p in PERIODS:
        if p == value:
            return p
    raise ValueError(f"unknown budget period {value!r} in the database")


REVOKED_CHANNEL = "keys:revoked"
# Published on REVOKED_CHANNEL instead of a key's hash: budgets or limits changed, so every
# process reloads every key (with its budgets) on its next request.
ALL_KEYS = "*"


def rate_limits(rpm: int | None, tpm: int | None) -> str:
    """The per-minute limits that are set, in words ("5 requests and 1000 tokens")."""
    parts = [f"{rpm} requests" if rpm else "", f"{tpm} tokens" if tpm else ""]
    return " and ".join(p for p in parts if p)


@dataclass(frozen=True, slots=True)
class _Entry:
    caller: Caller
    budgets: tuple[BudgetSpec, ...]
    rpm: int | None
    tpm: int | None
    expires: float


class MoneyAccounting:
    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        redis: Redis | None,
        metrics: Metrics,
        *,
        require_key: bool,
        timezone: str = "UTC",
        key_cache_ttl_s: float = 5.0,
        prefix: str = "tg:",
        claim_idle_ms: int = 30_000,
        redis_failure_mode: FailureMode = "closed",
        drain_inline: bool = True,
        spool_dir: Path | None = None,
        lease_share: float = 0.0,
        reservation_ttl_s: int = 900,
        watch_interval_s: float = 5.0,
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.redis = redis
        self.metrics = metrics
        self.require_key = require_key
        self.tz = timezone
        self._clock = PeriodClock(timezone)
        self.prefix = prefix
        self._ttl = key_cache_ttl_s
        self._cache: dict[str, _Entry] = {}
        self.rates = RateLimiter(redis, prefix=prefix)
        self.writer: StreamDrainer | BatchedWriter
        self.store: BudgetStore
        self.guard: RedisGuard | None = None
        # What the request path calls: with Redis, the guard, which wraps the shared store
        # and rate limiter through outages; without Redis, the in-process ones.
        self.budgets: BudgetStore | RedisGuard
        self.limiter: RateLimiter | RedisGuard = self.rates
        self._drain_inline = drain_inline
        self.redis_persists: bool | None = None  # Redis has an append-only file
        self._redis_run_id = ""
        self._watch_s = watch_interval_s  # ledger lag and Redis restarts are looked at
        self.reservation_ttl_s = reservation_ttl_s
        # Requests holding a reservation right now: renewed until settled or released.
        self._live: dict[str, Hold] = {}
        if redis is not None:
            by_lease = metrics.budget_reservations.labels("lease")
            in_redis = metrics.budget_reservations.labels("redis")
            store = RedisBudgetStore(
                redis,
                self._load_spent,
                prefix=prefix,
                reservation_ttl_s=reservation_ttl_s,
                lease=LeasePolicy(share=lease_share) if lease_share > 0 else None,
                on_reserve=lambda leased: (by_lease if leased else in_redis).inc(),
            )
            self.store = store
            self.writer = StreamDrainer(
                redis,
                sessions,
                prefix + "ledger",
                claim_idle_ms=claim_idle_ms,
                on_dead_letter=metrics.ledger_dead_letters.inc,
            )
            self.guard = RedisGuard(
                redis,
                store,
                self.rates,
                metrics,
                sessions,
                self._load_spent,
                mode=redis_failure_mode,
                on_recover=self._redis_recovered,
                spool_dir=spool_dir,
                reservation_ttl_s=reservation_ttl_s,
            )
            self.budgets = self.limiter = self.guard
        else:
            writer = BatchedWriter(sessions, on_dead_letter=metrics.ledger_dead_letters.inc)
            self.writer = writer
            self.store = MemoryBudgetStore(
                self._load_spent, writer.put, reservation_ttl_s=reservation_ttl_s
            )
            self.budgets = self.store
        self._listener: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.redis is not None:
            self.redis_persists = await self._check_persistence(self.redis)
            with contextlib.suppress(Exception):
                await self._check_restart(self.redis)
        if isinstance(self.writer, StreamDrainer):
            await self.writer.ensure_group()
        if self._drain_inline or not isinstance(self.writer, StreamDrainer):
            self.writer.start()  # else `tiergate ledger drain` processes write the stream
        if self.redis is not None:
            self._listener = asyncio.create_task(self._listen_revocations(), name="key-revocations")
        if self.guard is not None:
            self.guard.start()
        self._lag_task = asyncio.create_task(self._watch_lag(), name="ledger-lag")
        self._renew_task = asyncio.create_task(self._renew_live(), name="reservation-renewal")

    async def _renew_live(self) -> None:
        """Every third of the reservation TTL, push back the expiry of every reservation
        whose request is still running: only a dead process's reservations expire."""
        every = max(self.reservation_ttl_s / 3, 0.1)
        while True:
            await asyncio.sleep(every)
            holds = [(h.request_id, h.windows) for h in self._live.values()]
            if not holds:
                continue
            try:
                await self.budgets.renew(holds)
            except Exception as exc:
                log.warning("reservations not renewed", count=len(holds), error=repr(exc))

    async def _check_persistence(self, redis: Redis) -> bool | None:
        """Settled spend lives in Redis until it is drained to the database: without an
        append-only file a Redis restart loses it (and the budgets rebuilt from the ledger
        would not count it). Says so loudly; None when Redis does not tell."""
        try:
            info: Any = await redis.info("persistence")
        except Exception as exc:
            log.warning("Redis persistence unknown: INFO persistence failed", error=repr(exc))
            return None
        aof = str(info.get("aof_enabled", "0")) == "1"
        self.metrics.redis_persistence.set(1 if aof else 0)
        if not aof:
            log.error(
                "Redis has no append-only file (appendonly no): settled spend not yet written "
                "to the database is lost if Redis restarts, and budgets rebuilt from the "
                "ledger would let it be spent again. Run Redis with 'appendonly yes' "
                "(docs/money.md, Ledger durability).",
                aof_enabled=False,
            )
        return aof

    async def _check_restart(self, redis: Redis) -> None:
        """Notice a Redis restart (its run id changes): counted, logged, and its persistence
        read again, since a Redis without one came back without the spend it held."""
        info: Any = await redis.info("server")
        run_id = str(info.get("run_id", ""))
        if self._redis_run_id and run_id != self._redis_run_id:
            self.metrics.redis_restarts.inc()
            log.error(
                "Redis restarted"
                + (
                    ""
                    if self.redis_persists
                    else " without an append-only file: ledger events and reservations it "
                    "held are lost"
                ),
                had_append_only_file=self.redis_persists,
            )
            self.redis_persists = await self._check_persistence(redis)
        self._redis_run_id = run_id

    async def _watch_lag(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                events, age = await self.writer.lag()
                self.metrics.ledger_lag_events.set(events)
                self.metrics.ledger_lag_seconds.set(age)
            if self.redis is not None:
                with contextlib.suppress(Exception):
                    await self._check_restart(self.redis)
            await asyncio.sleep(self._watch_s)

    async def close(self) -> None:
        for task in (self._listener, self._lag_task, self._renew_task):
            await stop(task)
        if self.guard is not None:  # before the drainer's last pass: replayed events drain
            await self.guard.close()
        await self.writer.stop()
        await self.store.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()

    async def _listen_revocations(self) -> None:
        assert self.redis is not None
        lost = False
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.prefix + REVOKED_CHANNEL)
                if lost:
                    # Revocations published while Redis was away were missed: reload every
                    # key from the database on its next request.
                    self._expire_all()
                    lost = False
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = message["data"].decode()
                    if data == ALL_KEYS:
                        self._expire_all()
                    else:
                        self.forget(data)
            except REDIS_DOWN as exc:
                if not lost:
                    log.warning("key revocation channel lost; resubscribing", error=str(exc))
                lost = True
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    # typed in some redis releases, not in others
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]

    async def _redis_recovered(self) -> None:
        self._expire_all()
        if isinstance(self.writer, StreamDrainer):
            await self.writer.ensure_group()  # Redis may have restarted empty

    def _expire_all(self) -> None:
        """Reload every cached key on its next request, keeping it as a fallback."""
        self._cache = {h: replace(e, expires=0.0) for h, e in self._cache.items()}

    def forget(self, key_hash: str) -> None:
        self._cache.pop(key_hash, None)

    def invalidate_all(self) -> None:
        """Budgets or limits changed: reload every key on its next request."""
        self._cache.clear()

    async def publish_revocation(self, key_hash: str) -> None:
        self.forget(key_hash)
        if self.redis is not None:
            await self.redis.publish(self.prefix + REVOKED_CHANNEL, key_hash)

    async def publish_budget_change(self) -> None:
        """A budget or limit changed: this process and every other reload their keys now,
        not when their 5 s cache runs out (a lowered limit would be served past till then)."""
        self.invalidate_all()
        if self.redis is not None:
            await self.redis.publish(self.prefix + REVOKED_CHANNEL, ALL_KEYS)

    # ---- auth --------------------------------------------------------------------------

    async def _load(self, key_hash: str) -> _Entry | None:
        async with self.sessions() as s:
            key = await s.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
            if key is None or key.revoked_at is not None:
                return None
            rows = (
                await s.scalars(
                    select(Budget).where(
                        or_(
                            (Budget.scope == "key") & (Budget.scope_id == key.id),
                            (Budget.scope == "team") & (Budget.scope_id == key.team_id),
                        )
                    )
                )
            ).all()
            limit = await s.get(RateLimit, key.id)
        budgets = tuple(
            BudgetSpec(
                b.id,
                "key" if b.scope == "key" else "team",
                b.scope_id,
                _period(b.period),
                b.limit_nanos,
                tuple(b.soft_thresholds or ()),
                b.downgrade_at,
            )
            for b in rows
        )
        caller = Caller(
            key_id=key.id,
            team_id=key.team_id,
            key_prefix=key.prefix,
            allowed_models=tuple(key.allowed_models) if key.allowed_models else None,
            may_override_tier=key.may_override_tier,
            max_tokens_ceiling=key.max_tokens_ceiling,
        )
        return _Entry(
            caller,
            budgets,
            limit.requests_per_minute if limit else None,
            limit.tokens_per_minute if limit else None,
            time.monotonic() + self._ttl,
        )

    async def _entry(self, caller: Caller) -> _Entry | None:
        if caller.key_id is None:
            return None
        h = caller.extra.get("hash")
        return self._cache.get(h) if isinstance(h, str) else None

    async def authenticate(self, raw_key: str | None) -> Caller:
        if raw_key is None:
            if self.require_key:
                raise AuthenticationFailed(
                    "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
                )
            return ANONYMOUS
        h = hash_key(raw_key)
        entry = self._cache.get(h)
        if entry is None or entry.expires < time.monotonic():
            try:
                loaded = await self._load(h)
            except DATABASE_DOWN as exc:
                return self._stale(h, entry, exc)
            entry = loaded
            if entry is None:
                self._cache.pop(h, None)
                raise AuthenticationFailed("invalid or revoked API key")
            entry.caller.extra["hash"] = h
            self._cache[h] = entry
        return entry.caller

    def _stale(self, h: str, entry: _Entry | None, exc: BaseException) -> Caller:
        """The database is unreachable: a key seen before keeps working, an unknown one 503s."""
        if entry is None:
            raise ServiceUnavailable(
                "key store unavailable: the database cannot be reached to check this API key; "
                "keys this gateway has seen recently keep working. Retry in a few seconds.",
                retry_after=5,
            ) from None
        log.warning(
            "database unreachable; serving a cached API key",
            key=entry.caller.key_prefix,
            error=f"{type(exc).__name__}: {exc}",
        )
        # Try the database again in a second, not on every request.
        self._cache[h] = replace(entry, expires=time.monotonic() + 1.0)
        return entry.caller

    # ---- limits and budgets ----------------------------------------------------------

    def _windows(self, entry: _Entry | None, when: datetime) -> list[Window]:
        if entry is None:
            return []
        return [Window(b, *self._clock.window(b.period, when)) for b in entry.budgets]

    async def _load_spent(self, w: Window) -> int:
        return await spent_since(self.sessions, w.spec.scope, w.spec.scope_id, w.start)

    async def check_rate(self, caller: Caller, tokens: int) -> RateCharge | None:
        entry = await self._entry(caller)
        if entry is None or (not entry.rpm and not entry.tpm):
            return None
        key_id = entry.caller.key_id or ""
        at = window()
        retry = await self.limiter.allow(key_id, entry.rpm, entry.tpm, tokens, at)
        if retry:
            raise RateLimited(
                f"rate limit for key {caller.key_prefix}: {rate_limits(entry.rpm, entry.tpm)} "
                f"per minute; retry in {math.ceil(retry)} s",
                retry_after=retry,
            )
        return RateCharge(key_id, at[0], tokens) if entry.tpm else None

    async def budget_view(self, caller: Caller, now: datetime) -> BudgetView:
        entry = await self._entry(caller)
        if entry is None or not any(b.downgrade_at is not None for b in entry.budgets):
            return BudgetView()
        windows = self._windows(entry, now)
        states = await self.budgets.state(windows)
        worst = max(
            (s.spent_nanos / max(s.window.spec.limit_nanos, 1) for s in states), default=0.0
        )
        down = any(should_downgrade(s.window.spec, s.spent_nanos) for s in states)
        return BudgetView(pressure=worst, downgrade=down)

    async def reserve(
        self,
        caller: Caller,
        request_id: str,
        amount_nanos: int,
        now: datetime,
        rate: RateCharge | None = None,
    ) -> Hold:
        entry = await self._entry(caller)
        windows = self._windows(entry, now)
        hold = Hold(request_id, amount_nanos, tuple(windows), rate)
        # Every request, budgets or not: with Redis down, closed mode refuses them all.
        try:
            await self.budgets.reserve(request_id, windows, amount_nanos)
        except BudgetExceeded as exc:
            raise self._refusal(exc, amount_nanos) from None
        if windows:
            self._live[request_id] = hold
        return hold

    @staticmethod
    def _refusal(exc: BudgetExceeded, amount_nanos: int) -> BudgetExceededError:
        spec = exc.window.spec
        remaining = max(exc.remaining_nanos, 0)
        reset = exc.window.reset_at
        headers = {
            "x-tiergate-budget-remaining-usd": usd_text(remaining),
            "x-tiergate-budget-id": spec.id,
        }
        wait: float | None = None
        if amount_nanos > spec.limit_nanos:
            # Bigger than the whole limit: no reset makes room, so no reset time to wait for.
            when = "it is more than the budget's whole limit, so waiting will not help"
        elif spec.period == "total":
            when = "this budget does not reset"  # no reset time, no Retry-After
        else:
            when = f"it resets at {reset.isoformat()}"
            wait = max(1.0, (reset - datetime.now(UTC)).total_seconds())
            headers["x-tiergate-budget-reset"] = reset.isoformat()
        return BudgetExceededError(
            f"{spec.scope} budget '{spec.id}' ({spec.period}, limit "
            f"${usd_text(spec.limit_nanos)}) has ${usd_text(remaining)} "
            f"left, less than this request's worst case ${usd_text(amount_nanos)}; "
            f"{when}. Lower max_tokens or raise the budget.",
            retry_after=wait,
            headers=headers,
        )

    async def settle(
        self,
        caller: Caller,
        s: Settlement,
        hold: Hold,
        *,
        orphan: bool = False,
        replaces: int | None = None,
    ) -> int | None:
        windows = list(hold.windows)  # where the reservation was made, whatever changed since
        event = event_of(s)
        if orphan:
            event[ORPHAN] = True
        if replaces is not None:  # the ledger row is replaced; the log and metric below
            event[SUPERSEDES] = True
            event[REPLACED] = replaces
        try:
            after = await self.budgets.settle(s.request_id, windows, s.cost_nanos, event)
        finally:
            self._live.pop(hold.request_id, None)
        replaced = event.get(REPLACED)
        if replaced is not None:
            self.metrics.orphans_replaced.inc()
            log.warning(
                "settlement replaced the one made from the in-flight journal (this process "
                "was stalled past TIERGATE_INFLIGHT_ORPHAN_S)",
                request_id=s.request_id,
                journal_cost_nanos=replaced,
                cost_nanos=s.cost_nanos,
            )
        if hold.rate is not None:
            await self._count_tokens(hold.rate, s)
        if windows and s.cost_nanos > hold.amount_nanos:
            self.metrics.over_reservation.labels(s.backend).inc()
            log.warning(
                "settled over reservation",
                request_id=s.request_id,
                reserved_nanos=hold.amount_nanos,
                cost_nanos=s.cost_nanos,
                prompt_tokens=s.cache_hit_tokens + s.cache_miss_tokens,
                output_tokens=s.output_tokens,
            )
        added = s.cost_nanos - (replaced or 0)
        for w, spent in zip(windows, after or (), strict=False):
            spec = w.spec
            labels = (spec.scope, spec.scope_id, spec.period)
            self.metrics.budget_limit.labels(*labels).set(spec.limit_nanos)
            self.metrics.budget_spent.labels(*labels).set(spent)
            for t in crossed(spent - added, spent, spec.limit_nanos, spec.soft_thresholds):
                self.metrics.budget_alerts.labels(spec.scope, spec.scope_id, f"{t:g}").inc()
                log.warning(
                    "budget threshold crossed",
                    budget=spec.id,
                    scope=spec.scope,
                    scope_id=spec.scope_id,
                    threshold=t,
                )
        return replaced

    async def _count_tokens(self, rate: RateCharge, s: Settlement) -> None:
        """Move the key's token window from the prompt estimate to the actual tokens."""
        actual = s.cache_hit_tokens + s.cache_miss_tokens + s.output_tokens
        try:
            await self.limiter.add(rate.key_id, rate.minute, actual - rate.tokens)
        except Exception as exc:  # the request is settled; its tokens are a rate matter
            log.warning("tokens not counted in the rate window", error=repr(exc))

    async def release(self, caller: Caller, hold: Hold) -> None:
        windows = list(hold.windows)
        try:
            if windows or self.guard is not None:  # the guard frees a lease's slice too
                await self.budgets.release(hold.request_id, windows)
        finally:
            self._live.pop(hold.request_id, None)

    async def ledger_lag(self) -> tuple[int, float]:
        return await self.writer.lag()

    def describe(self) -> dict[str, Any]:
        return {
            "redis": self.redis is not None,
            "redis_down": self.guard is not None and self.guard.down,
            "redis_persists": self.redis_persists,
            "cached_keys": len(self._cache),
        }


async def open_money(settings: Any, metrics: Metrics) -> MoneyAccounting:
    """Build from settings; refuse to start on a database that is not migrated."""
    from gateway.db.engine import make_engine, make_sessions
    from gateway.db.migrate import require_compatible

    await asyncio.to_thread(require_compatible, settings.database_url)
    engine = make_engine(settings.database_url)
    # Fail fast when Redis is away (one quick retry for a connection it dropped), so that
    # RedisGuard, not a pile of retries, decides what a request does.
    # A blocking pool: at its size a request waits for a free connection (up to the reply
    # timeout) instead of failing, which RedisGuard would take for an outage.
    redis = (
        Redis(
            connection_pool=BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=settings.redis_max_connections,
                timeout=5,
                socket_connect_timeout=2,
                socket_timeout=5,
                retry=Retry(NoBackoff(), 1),
                # One driver description for every connection: left to redis-py, each new
                # connection reads the package metadata from disk (about 0.35 ms of CPU, paid
                # for every connection a burst adds to the pool).
                driver_info=DriverInfo(),
            )
        )
        if settings.redis_url
        else None
    )
    return MoneyAccounting(
        engine,
        make_sessions(engine),
        redis,
        metrics,
        require_key=settings.require_api_key,
        timezone=settings.budget_timezone,
        prefix=settings.redis_prefix,
        claim_idle_ms=settings.ledger_claim_idle_ms,
        redis_failure_mode=settings.redis_failure_mode,
        drain_inline=settings.ledger_drain == "inline",
        spool_dir=Path(settings.spool_dir) if settings.spool_dir else None,
        lease_share=settings.budget_lease_share,
        reservation_ttl_s=settings.reservation_ttl_s,
    )
