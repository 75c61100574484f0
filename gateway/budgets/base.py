"""The budget store interface, shared by the Redis and in-process implementations.

Semantics: ``reserve`` charges a worst-case amount to every budget of a request, all or
none, refusing when any budget would pass its hard limit; ``settle`` replaces the
reservation by the actual cost and, in the same atomic step, hands the ledger event to the
durable path, returning each window's spend after it (None if already settled);
``release`` drops a reservation without billing. Reservations that are never
settled (a gateway killed mid-request) expire after a TTL, so they cannot block a budget
forever; ``renew`` pushes that expiry back for requests still running, so only a dead
process's reservations expire. Settle is idempotent on the request id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from policies.budget import BudgetSpec, period_window

# In a settlement's event, never a ledger column: ORPHAN marks the settlement a surviving
# process makes from a dead one's in-flight journal entry (gateway/inflight.py); should the
# request's own process come back (it was stalled) its settlement replaces that one, and
# the store reports the replaced cost under REPLACED.
ORPHAN = "orphan"
REPLACED = "replaced_nanos"


@dataclass(frozen=True, slots=True)
class Window:
    spec: BudgetSpec
    start: datetime
    reset_at: datetime

    @property
    def key(self) -> str:
        return f"{self.spec.id}:{int(self.start.timestamp())}"

    @staticmethod
    def of(spec: BudgetSpec, now: datetime, tz: str) -> Window:
        start, reset = period_window(spec.period, now, tz)
        return Window(spec, start, reset)


@dataclass(frozen=True, slots=True)
class BudgetState:
    window: Window
    spent_nanos: int
    reserved_nanos: int  # held by requests in flight that reserved one by one
    leased_nanos: int = 0  # held by gateway processes' budget leases (gateway/budgets/leases.py)

    @property
    def remaining_nanos(self) -> int:
        spec = self.window.spec
        return spec.limit_nanos - self.spent_nanos - self.reserved_nanos - self.leased_nanos


class BudgetExceeded(Exception):
    def __init__(self, window: Window, remaining_nanos: int, amount_nanos: int) -> None:
        super().__init__(f"budget {window.spec.id} exceeded")
        self.window = window
        self.remaining_nanos = remaining_nanos
        self.amount_nanos = amount_nanos


# Rebuilds a window's spent amount from the ledger when the store has no counter for it.
SpentLoader = Callable[[Window], Awaitable[int]]


class BudgetStore(Protocol):
    async def reserve(
        self, request_id: str, windows: Sequence[Window], amount_nanos: int
    ) -> None: ...

    async def settle(
        self, request_id: str, windows: Sequence[Window], actual_nanos: int, event: dict[str, Any]
    ) -> list[int] | None: ...

    async def release(self, request_id: str, windows: Sequence[Window]) -> None: ...

    async def renew(self, holds: Sequence[tuple[str, Sequence[Window]]]) -> None: ...

    async def state(self, windows: Sequence[Window]) -> list[BudgetState]: ...

    async def close(self) -> None: ...
