"""Budgets shared by every gateway process through Redis: one Lua script per step.

With a ``LeasePolicy``, most reservations are taken from this process's budget leases
(gateway/budgets/leases.py) without a round trip; the rest go to Redis as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import orjson
from redis.asyncio import Redis

from gateway.budgets.base import (
    ORPHAN,
    REPLACED,
    BudgetExceeded,
    BudgetState,
    SpentLoader,
    Window,
)
from gateway.budgets.leases import LeaseBook, LeasePolicy

_SETTLED_TTL_S = 7 * 24 * 3600


def _script(name: str) -> str:
    """A budget script with the shared Lua functions (common.lua) in front."""
    files = resources.files("gateway.budgets")
    return files.joinpath("common.lua").read_text() + files.joinpath(name).read_text()


class RedisBudgetStore:
    def __init__(
        self,
        redis: Redis,
        load_spent: SpentLoader,
        *,
        prefix: str = "tg:",
        reservation_ttl_s: int = 900,
        lease: LeasePolicy | None = None,
        on_reserve: Callable[[bool], None] | None = None,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.stream = prefix + "ledger"
        self._load_spent = load_spent
        self._ttl = reservation_ttl_s
        self._reserve = redis.register_script(_script("reserve.lua"))
        self._settle = redis.register_script(_script("settle.lua"))
        self._release = redis.register_script(_script("release.lua"))
        self._renew = redis.register_script(_script("renew.lua"))
        self._on_reserve = on_reserve  # told, per reservation, whether a lease took it
        self.leases = (
            LeaseBook(
                redis,
                self._keys,
                self._expire_at,
                lease,
                _script("lease.lua"),
                reservation_ttl_s=reservation_ttl_s,
            )
            if lease is not None
            else None
        )

    def _keys(self, w: Window) -> list[str]:
        k = self.prefix + "b:" + w.key
        return [k, k + ":z", k + ":h"]

    def _expire_at(self, w: Window) -> int:
        if w.spec.period == "total":
            return 0
        return int(w.reset_at.timestamp()) + 86_400  # keep a day past the reset for reports

    async def _rebuild(self, w: Window) -> None:
        spent = await self._load_spent(w)
        key = self._keys(w)[0]
        # First writer wins: concurrent rebuilders compute the same sum from the ledger.
        if await self.redis.hsetnx(key, "spent", spent):
            await self.redis.hsetnx(key, "reserved", 0)

    async def reserve(self, request_id: str, windows: Sequence[Window], amount_nanos: int) -> None:
        book = self.leases
        leased = book is not None and bool(windows) and book.take(request_id, windows, amount_nanos)
        if windows and self._on_reserve is not None:
            self._on_reserve(leased)
        if leased:
            return
        if book is None or not windows:
            await self._reserve_shared(request_id, windows, amount_nanos)
            return
        try:
            await self._reserve_shared(request_id, windows, amount_nanos)
        except BudgetExceeded:
            # This process's own unused leases may be what stands in the way.
            if not await book.give_back(windows):
                raise
            await self._reserve_shared(request_id, windows, amount_nanos)
        book.counters_made(windows)

    async def _reserve_shared(
        self, request_id: str, windows: Sequence[Window], amount_nanos: int
    ) -> None:
        keys = [self.prefix + "r:" + request_id]
        args: list[str | int] = [
            request_id,
            amount_nanos,
            int(time.time()),
            self._ttl,
            len(windows),
        ]
        for w in windows:
            keys += self._keys(w)
            args += [w.spec.limit_nanos, self._expire_at(w)]
        for _ in range(len(windows) + 1):
            result = await self._reserve(keys=keys, args=args)
            code = int(result[0])
            if code == 1:
                return
            w = windows[int(result[1])]
            if code == 2:
                await self._rebuild(w)
                continue
            raise BudgetExceeded(w, int(result[2]), amount_nanos)
        raise RuntimeError("budget counters could not be initialised")

    async def settle(
        self, request_id: str, windows: Sequence[Window], actual_nanos: int, event: dict[str, Any]
    ) -> list[int] | None:
        keys = [self.prefix + "s:" + request_id, self.prefix + "r:" + request_id, self.stream]
        for w in windows:
            keys += self._keys(w)
        book = self.leases
        funded = book.funded.get(request_id) if book is not None else None
        orphan = bool(event.get(ORPHAN))
        args: list[str | int | bytes] = [
            request_id,
            actual_nanos,
            len(windows),
            _SETTLED_TTL_S,
            orjson.dumps({k: v for k, v in event.items() if k not in (ORPHAN, REPLACED)}),
            book.holder if book is not None and funded is not None else "",
            "orphan" if orphan else "",
        ]
        result = await self._settle(keys=keys, args=args)
        n = len(windows)
        if int(result[0]) == 2:
            # This request was settled from the in-flight journal while its process was
            # stalled; this settlement replaced that one (the caller reads what it cost).
            event[REPLACED] = int(result[1 + 2 * n])
        if int(result[0]) == 0:
            if book is not None and funded is not None:
                # Settled before (a lost reply): the marker says what it took from the lease.
                marker = (result[1] or b"").decode() if len(result) > 1 else ""
                parts = marker.split(",") if marker else []
                book.settled(request_id, [int(p) for p in parts] if len(parts) == n else [0] * n)
            return None
        if book is not None and funded is not None:
            book.settled(request_id, [int(v) for v in result[1 + n : 1 + 2 * n]])
        return [int(v) for v in result[1 : 1 + n]]

    def release_leased(self, request_id: str) -> bool:
        """Release a lease-funded request (no Redis needed); False if it was not one."""
        return self.leases is not None and self.leases.release(request_id)

    async def release(self, request_id: str, windows: Sequence[Window]) -> None:
        if self.release_leased(request_id):
            return
        keys = [self.prefix + "r:" + request_id]
        for w in windows:
            keys += self._keys(w)
        await self._release(keys=keys, args=[request_id, len(windows)])

    async def renew(self, holds: Sequence[tuple[str, Sequence[Window]]]) -> None:
        """Push back the expiry of live requests' reservations (request id, its windows)."""
        keys: list[str] = []
        args: list[str | int] = [int(time.time()), self._ttl, 0]
        count = 0
        for request_id, windows in holds:
            if self.leases is not None and self.leases.renew(request_id):
                continue  # funded from this process's lease: renewed in process
            keys.append(self.prefix + "r:" + request_id)
            for w in windows:
                keys += self._keys(w)[1:]
            args += [request_id, len(windows)]
            count += 1
        if count:
            args[2] = count
            await self._renew(keys=keys, args=args)

    async def state(self, windows: Sequence[Window]) -> list[BudgetState]:
        if not windows:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for w in windows:
            pipe.hmget(self._keys(w)[0], "spent", "reserved", "leased")
        out = []
        for w, (spent, reserved, leased) in zip(windows, await pipe.execute(), strict=True):
            if spent is None:
                await self._rebuild(w)
                spent, reserved, leased = await self.redis.hmget(
                    self._keys(w)[0], "spent", "reserved", "leased"
                )
            out.append(BudgetState(w, int(spent or 0), int(reserved or 0), int(leased or 0)))
        return out

    async def close(self) -> None:
        if self.leases is not None:
            await self.leases.close()
