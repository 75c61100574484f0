"""Budgets shared by every gateway process through Redis: one Lua script per step."""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

import orjson
from redis.asyncio import Redis

from gateway.budgets.base import BudgetExceeded, BudgetState, SpentLoader, Window

_SETTLED_TTL_S = 7 * 24 * 3600


def _script(name: str) -> str:
    return resources.files("gateway.budgets").joinpath(name).read_text()


class RedisBudgetStore:
    def __init__(
        self,
        redis: Redis,
        load_spent: SpentLoader,
        *,
        prefix: str = "tg:",
        reservation_ttl_s: int = 900,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.stream = prefix + "ledger"
        self._load_spent = load_spent
        self._ttl = reservation_ttl_s
        self._reserve = redis.register_script(_script("reserve.lua"))
        self._settle = redis.register_script(_script("settle.lua"))
        self._release = redis.register_script(_script("release.lua"))

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
        args: list[str | int | bytes] = [
            request_id,
            actual_nanos,
            len(windows),
            _SETTLED_TTL_S,
            orjson.dumps(event),
        ]
        result = await self._settle(keys=keys, args=args)
        if int(result[0]) == 0:
            return None
        return [int(v) for v in result[1:]]

    async def release(self, request_id: str, windows: Sequence[Window]) -> None:
        keys = [self.prefix + "r:" + request_id]
        for w in windows:
            keys += self._keys(w)
        await self._release(keys=keys, args=[request_id, len(windows)])

    async def state(self, windows: Sequence[Window]) -> list[BudgetState]:
        if not windows:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for w in windows:
            pipe.hmget(self._keys(w)[0], "spent", "reserved")
        out = []
        for w, (spent, reserved) in zip(windows, await pipe.execute(), strict=True):
            if spent is None:
                await self._rebuild(w)
                spent, reserved = await self.redis.hmget(self._keys(w)[0], "spent", "reserved")
            out.append(BudgetState(w, int(spent or 0), int(reserved or 0)))
        return out

    async def close(self) -> None:
        return None
