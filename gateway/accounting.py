"""The money hooks of the request path: who is calling, reserve before dispatch, settle after.

``Caller`` is what auth resolves a key to. ``Hold`` is what ``reserve`` took for a request;
it travels with the request to ``settle`` or ``release``. ``Settlement`` is everything the
ledger records about one finished request. ``Accounting`` is the interface the pipeline calls; the
budget store and ledger implement it, and ``OpenAccounting`` serves the embedded default
when no keys or budgets are configured (it still keeps the in-process ledger of the run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gateway.budgets.base import Window


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str | None = None
    team_id: str | None = None
    key_prefix: str | None = None
    allowed_models: tuple[str, ...] | None = None
    may_override_tier: bool = False
    max_tokens_ceiling: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


ANONYMOUS = Caller(may_override_tier=True)


@dataclass(frozen=True, slots=True)
class Settlement:
    request_id: str
    ts: datetime
    key_id: str | None
    team_id: str | None
    protocol: str
    requested_model: str
    tier: str
    mode: str
    backend: str
    replica: str | None
    route_reason: str
    cache_hit_tokens: int
    cache_miss_tokens: int
    output_tokens: int
    reasoning_tokens: int
    price_version: str
    cost_nanos: int
    hosted_equiv_nanos: int
    latency_ms: float
    status: int
    kind: str = "client"  # "shadow": shadow-mode calls, outside every client budget


@dataclass(frozen=True, slots=True)
class RateCharge:
    """Tokens a request was counted for in its key's rate window at admission."""

    key_id: str
    minute: int
    tokens: int


@dataclass(frozen=True, slots=True)
class Hold:
    """What a request holds, decided once at admission and carried with the request to its
    settlement or release: the budget windows reserved in (never looked up again, so an
    admin change or a period boundary in between cannot move the money elsewhere), the
    amount, and the rate-limit window it was counted in."""

    request_id: str
    amount_nanos: int = 0
    windows: tuple[Window, ...] = ()
    rate: RateCharge | None = None


@dataclass(frozen=True, slots=True)
class BudgetView:
    """Budget facts the router and the response headers use."""

    pressure: float = 0.0
    downgrade: bool = False
    headers: dict[str, str] = field(default_factory=dict)


class Accounting(Protocol):
    async def start(self) -> None: ...

    async def authenticate(self, raw_key: str | None) -> Caller: ...

    async def check_rate(self, caller: Caller, tokens: int) -> RateCharge | None: ...

    async def budget_view(self, caller: Caller, now: datetime) -> BudgetView: ...

    async def reserve(
        self,
        caller: Caller,
        request_id: str,
        amount_nanos: int,
        now: datetime,
        rate: RateCharge | None = None,
    ) -> Hold: ...

    async def settle(
        self,
        caller: Caller,
        s: Settlement,
        hold: Hold,
        *,
        orphan: bool = False,
        replaces: int | None = None,
    ) -> int | None:
        """Bill ``s`` in the windows ``hold`` reserved in (idempotent on the request id).
        ``orphan``: a surviving process settling a dead one's request from the in-flight
        journal. Returns the cost of such an orphan settlement of this request that this
        one replaced (its process was stalled, not dead), else None or 0. ``replaces``:
        the cost of an orphan settlement already in the ledger that this one replaces
        (found by the caller: without Redis, where the budget store cannot know it)."""
        ...

    async def release(self, caller: Caller, hold: Hold) -> None: ...

    async def ledger_lag(self) -> tuple[int, float]:
        """(settled events not yet in the database, age in seconds of the oldest)."""
        ...

    async def close(self) -> None: ...


class OpenAccounting:
    """No keys, no budgets: every caller is anonymous; settlements kept in memory."""

    def __init__(self, *, keep: int = 100_000) -> None:
        self.settled: list[Settlement] = []
        self._keep = keep

    async def start(self) -> None:
        return None

    async def authenticate(self, raw_key: str | None) -> Caller:
        return ANONYMOUS

    async def check_rate(self, caller: Caller, tokens: int) -> RateCharge | None:
        return None

    async def budget_view(self, caller: Caller, now: datetime) -> BudgetView:
        return BudgetView()

    async def reserve(
        self,
        caller: Caller,
        request_id: str,
        amount_nanos: int,
        now: datetime,
        rate: RateCharge | None = None,
    ) -> Hold:
        return Hold(request_id, amount_nanos, (), rate)

    async def settle(
        self,
        caller: Caller,
        s: Settlement,
        hold: Hold,
        *,
        orphan: bool = False,
        replaces: int | None = None,
    ) -> int | None:
        self.settled.append(s)
        if len(self.settled) > self._keep:
            del self.settled[: len(self.settled) - self._keep]
        return None

    async def release(self, caller: Caller, hold: Hold) -> None:
        return None

    async def ledger_lag(self) -> tuple[int, float]:
        return 0, 0.0

    async def close(self) -> None:
        return None
