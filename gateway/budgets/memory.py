"""Budgets in one process (the embedded default, no Redis): same semantics, no sharing."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.budgets.base import BudgetExceeded, BudgetState, SpentLoader, Window


@dataclass
class _Counter:
    spent: int = 0
    held: dict[str, tuple[int, float]] = field(default_factory=dict)  # request -> (amount, expiry)

    def reserved(self, now: float) -> int:
        for rid in [r for r, (_, exp) in self.held.items() if exp <= now]:
            del self.held[rid]
        return sum(a for a, _ in self.held.values())


EventSink = Callable[[dict[str, Any]], Awaitable[None]]


class MemoryBudgetStore:
    def __init__(
        self, load_spent: SpentLoader, sink: EventSink, *, reservation_ttl_s: float = 900
    ) -> None:
        self._load_spent = load_spent
        self._sink = sink
        self._ttl = reservation_ttl_s
        self._counters: dict[str, _Counter] = {}
        self._settled: dict[str, float] = {}

    async def _counter(self, w: Window) -> _Counter:
        c = self._counters.get(w.key)
        if c is None:
            spent = await self._load_spent(w)
            c = self._counters.setdefault(w.key, _Counter(spent=spent))
        return c

    async def reserve(self, request_id: str, windows: Sequence[Window], amount_nanos: int) -> None:
        counters = [await self._counter(w) for w in windows]
        now = time.monotonic()
        # No await between the check and the charge: atomic under asyncio.
        for w, c in zip(windows, counters, strict=True):
            if request_id in c.held:
                return
            remaining = w.spec.limit_nanos - c.spent - c.reserved(now)
            if amount_nanos > remaining:
                raise BudgetExceeded(w, remaining, amount_nanos)
        for c in counters:
            c.held[request_id] = (amount_nanos, now + self._ttl)

    async def adopt(self, request_id: str, windows: Sequence[Window], amount_nanos: int) -> None:
        """Hold ``amount_nanos`` for a request another life of this process was serving
        (its in-flight journal entry, not settled yet), whatever the limit: it was admitted
        then, and its settlement will take the hold as any request's does."""
        counters = [await self._counter(w) for w in windows]
        expiry = time.monotonic() + self._ttl
        for c in counters:
            c.held.setdefault(request_id, (amount_nanos, expiry))

    async def settle(
        self, request_id: str, windows: Sequence[Window], actual_nanos: int, event: dict[str, Any]
    ) -> list[int] | None:
        if request_id in self._settled:
            return None
        counters = [await self._counter(w) for w in windows]
        self._settled[request_id] = time.monotonic()
        for c in counters:
            c.held.pop(request_id, None)
            c.spent += actual_nanos
        if len(self._settled) > 200_000:
            cutoff = time.monotonic() - 3600
            self._settled = {r: t for r, t in self._settled.items() if t > cutoff}
        await self._sink(event)
        return [c.spent for c in counters]

    async def release(self, request_id: str, windows: Sequence[Window]) -> None:
        for w in windows:
            c = self._counters.get(w.key)
            if c is not None:
                c.held.pop(request_id, None)

    async def renew(self, holds: Sequence[tuple[str, Sequence[Window]]]) -> None:
        """Push back the expiry of live requests' reservations (request id, its windows)."""
        expiry = time.monotonic() + self._ttl
        for request_id, windows in holds:
            for w in windows:
                c = self._counters.get(w.key)
                if c is not None and request_id in c.held:
                    c.held[request_id] = (c.held[request_id][0], expiry)

    async def state(self, windows: Sequence[Window]) -> list[BudgetState]:
        now = time.monotonic()
        out = []
        for w in windows:
            c = await self._counter(w)
            out.append(BudgetState(w, c.spent, c.reserved(now)))
        return out

    async def close(self) -> None:
        return None
