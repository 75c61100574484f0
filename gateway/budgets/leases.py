"""Budget leases: most requests reserve in process, without a Redis round trip.

Each gateway process holds, per budget window it serves, a *lease*: a slice of the budget
reserved in Redis under the process's holder name (``lease:<host>:<pid>:<random>``),
counted in the window's ``leased`` field, which every reservation checks. A request whose
worst case fits the free part of the leases of all its windows reserves there, in
process; settling it (settle.lua) moves its actual cost from the lease to the spend and
frees the rest of its slice for the next request, and releasing it only frees its slice
locally. Any other request reserves in Redis as before.

So no budget can be overspent across processes: a lease is money reserved in Redis like
any reservation. What leases change:
- a lease takes at most ``share`` of a window's headroom (what neither spend, reservations
  nor other processes' leases hold), so leases shrink as a budget runs out, and near its
  limit requests reserve in Redis one by one;
- a request refused in Redis makes its own process give back the free part of its leases
  first and tries once more; other processes' leases still count, so with several
  processes a request whose worst case is within about ``share`` x processes of the
  remaining budget can be refused while that money is leased elsewhere;
- leases are renewed every ``renew_s``; a process that dies stops holding its leases after
  ``ttl_s`` (per-request reservations expire after their own, longer, TTL);
- a lease unused for ``idle_s`` is given back, and every lease when the process stops.

Sizing: a lease aims to fund ``slots`` requests of the largest worst case the window saw
recently, and at least twice what its requests held plus what missed it since the last
call (a burst); ``slots`` doubles while requests miss the lease for want of room and halves
when the lease stays mostly unused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis

from gateway.budgets.base import Window
from gateway.tasks import stop

log = structlog.get_logger("tiergate.budgets")

MAX_SLOTS = 4096


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    share: float = 0.05  # of a window's headroom, at most, per lease
    slots: int = 8  # requests of the recent largest worst case a lease aims to fund, at least
    ttl_s: int = 60  # a lease not renewed this long (its process died) stops holding budget
    renew_s: float = 10.0
    idle_s: float = 30.0


class Lease:
    """One process's lease in one budget window, as this process knows it."""

    __slots__ = (
        "window",
        "amount",
        "used",
        "busy",
        "verified",
        "cap",
        "slots",
        "peak",
        "last_peak",
        "demand",
        "last_demand",
        "grew",
        "missed",
        "last_used",
        "renewed_at",
        "period_at",
    )

    def __init__(self, window: Window, slots: int) -> None:
        self.window = window
        self.amount = 0  # what Redis holds for this process (mirrored on every change)
        self.used = 0  # held by this process's requests in flight
        self.busy = False  # a lease call is in flight: no local reservations meanwhile
        self.verified = False  # the amount is known to match Redis
        self.cap: int | None = None  # share x headroom at the last call
        self.slots = slots
        # Per period of ``renew_s``, this one and the last: the largest worst case, and the
        # most held plus missed at once.
        self.peak = 0
        self.last_peak = 0
        self.demand = 0
        self.last_demand = 0
        self.grew = False  # slots doubled since the last call
        self.missed = 0  # worst cases that did not fit since the last call
        self.last_used = time.monotonic()
        self.renewed_at = 0.0
        self.period_at = time.monotonic()

    @property
    def free(self) -> int:
        return self.amount - self.used

    def want(self, now: float, idle_s: float) -> int:
        if now - self.last_used > idle_s:
            return 0
        # a burst that missed the lease asks for twice what it held and wanted at once
        burst = max(self.demand, self.last_demand)
        return max(self.slots * max(self.peak, self.last_peak), 2 * burst)


@dataclass(frozen=True, slots=True)
class Funded:
    amount: int
    leases: tuple[Lease, ...]
    at: float  # monotonic time of the reservation


KeysOf = Callable[[Window], list[str]]


class LeaseBook:
    def __init__(
        self,
        redis: Redis,
        keys_of: KeysOf,
        expire_at: Callable[[Window], int],
        policy: LeasePolicy,
        script: str,
        *,
        reservation_ttl_s: float = 900,
    ) -> None:
        self.redis = redis
        self.reservation_ttl_s = reservation_ttl_s
        self.policy = policy
        self.holder = f"lease:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._keys_of = keys_of
        self._expire_at = expire_at
        self._script = redis.register_script(script)
        self.leases: dict[str, Lease] = {}
        self.funded: dict[str, Funded] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._calling = asyncio.Lock()

    # ---- the request path: no Redis here ---------------------------------------------

    def take(self, request_id: str, windows: Sequence[Window], amount: int) -> bool:
        """Reserve ``amount`` in every window's lease, all or none; False: reserve in Redis."""
        now = time.monotonic()
        leases = []
        fits = True
        for w in windows:
            lease = self.leases.get(w.key)
            if lease is None:  # sized once this request's reservation made the counters
                lease = self.leases[w.key] = Lease(w, self.policy.slots)
            if w.spec.limit_nanos != lease.window.spec.limit_nanos:
                lease.verified = False  # the limit changed: resize before funding again
                self._kick()
            lease.window = w
            lease.last_used = now
            if amount > lease.peak:
                lease.peak = amount
            leases.append(lease)
            if not lease.verified:
                fits = False
            elif lease.busy or lease.free < amount:
                fits = False
                if lease.cap is None or lease.amount < lease.cap:
                    lease.missed += amount  # demand the next call sizes the lease for
                    lease.demand = max(lease.demand, lease.used + lease.missed)
                    if not lease.busy and not lease.grew:
                        lease.slots = min(lease.slots * 2, MAX_SLOTS)
                        lease.grew = True
                    self._kick()
        if not fits:
            return False
        for lease in leases:
            lease.used += amount
            if lease.used > lease.demand:
                lease.demand = lease.used
            if lease.free * 2 < lease.want(now, self.policy.idle_s) and (
                lease.cap is None or lease.amount < lease.cap
            ):
                self._kick()
        self.funded[request_id] = Funded(amount, tuple(leases), now)
        return True

    def settled(self, request_id: str, taken: Sequence[int]) -> None:
        """A lease-funded request settled: ``taken`` is the cost settle.lua took from each
        lease (less where a lease no longer held it)."""
        f = self.funded.pop(request_id, None)
        if f is None:
            return
        for lease, t in zip(f.leases, taken, strict=False):
            lease.amount -= t
            lease.used -= f.amount

    def release(self, request_id: str) -> bool:
        """Give a lease-funded request's slice back to its leases; False if it had none."""
        f = self.funded.pop(request_id, None)
        if f is None:
            return False
        for lease in f.leases:
            lease.used -= f.amount
        return True

    def renew(self, request_id: str) -> bool:
        """A lease-funded request is still running: its slice does not expire yet. False
        when the request was not funded from a lease."""
        f = self.funded.get(request_id)
        if f is None:
            return False
        self.funded[request_id] = Funded(f.amount, f.leases, time.monotonic())
        return True

    def _expire_funded(self, now: float) -> None:
        """A lease-funded request never settled nor released stops holding its slice after
        the reservation TTL, as a reservation made in Redis would."""
        stale = [r for r, f in self.funded.items() if now - f.at > self.reservation_ttl_s]
        for request_id in stale:
            log.warning("lease-funded reservation expired unsettled", request_id=request_id)
            self.release(request_id)

    def invalidate(self) -> None:
        """Redis was unreachable or restarted: trust no lease until Redis confirms it."""
        for lease in self.leases.values():
            lease.verified = False
        self._kick()

    # ---- talking to Redis ------------------------------------------------------------

    def counters_made(self, windows: Sequence[Window]) -> None:
        """A reservation in Redis made these windows' counters: size their new leases."""
        if any(not lease.verified for w in windows if (lease := self.leases.get(w.key))):
            self._kick()

    def _kick(self) -> None:
        self._wake.set()
        if not self._closed and (self._task is None or self._task.done()):
            with contextlib.suppress(RuntimeError):  # no running loop: started on first use
                self._task = asyncio.get_running_loop().create_task(
                    self._run(), name="budget-leases"
                )

    def _due(self, lease: Lease, now: float) -> bool:
        if not lease.verified:
            return True
        want = lease.want(now, self.policy.idle_s)
        if (lease.amount > 0 or want > 0) and now - lease.renewed_at >= self.policy.renew_s:
            return True  # renewed while anything is held; the headroom re-read while wanted
        if want == 0:
            return lease.amount > lease.used
        short = lease.free * 2 < want and (lease.cap is None or lease.amount < lease.cap)
        return short or lease.amount > 2 * want

    async def _run(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.policy.renew_s / 2)
            self._wake.clear()
            if self._closed:
                return
            now = time.monotonic()
            self._expire_funded(now)
            for key in [
                k
                for k, lease in self.leases.items()
                if lease.verified
                and lease.amount == 0
                and lease.used == 0
                and lease.want(now, self.policy.idle_s) == 0
            ]:
                del self.leases[key]
            due = [lease for lease in self.leases.values() if self._due(lease, now)]
            if not due:
                continue
            try:
                await self.call(due, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("budget leases not renewed", error=f"{type(exc).__name__}: {exc}")
                self.invalidate()
                self._wake.clear()
                await asyncio.sleep(1.0)

    async def call(self, leases: Sequence[Lease], want: int | None) -> None:
        """One lease.lua call for ``leases``: to the size each wants, or to ``want``.
        Calls run one at a time: each sees the amounts the one before left."""
        async with self._calling:
            await self._call(leases, want)

    async def _call(self, leases: Sequence[Lease], want: int | None) -> None:
        now = time.monotonic()
        keys: list[str] = []
        args: list[Any] = [self.holder, int(time.time()), self.policy.ttl_s]
        args += [repr(self.policy.share), len(leases)]
        for lease in leases:
            lease.busy = True
            keys += self._keys_of(lease.window)
            w = lease.want(now, self.policy.idle_s) if want is None else want
            lease.missed = 0
            args += [
                w,
                lease.used,
                lease.amount,
                lease.window.spec.limit_nanos,
                self._expire_at(lease.window),
            ]
        try:
            result = await self._script(keys=keys, args=args)
        finally:
            for lease in leases:
                lease.busy = False
        for lease, (new, change, lost, cap) in zip(leases, result, strict=True):
            # Changes, not totals: a settlement whose reply is still on its way changes the
            # lease too, and both orders must add up.
            if int(lost):
                lease.amount = 0  # as in Redis; the next call grants a new lease
                self._wake.set()
            else:
                lease.amount += int(change)
            lease.verified = True
            lease.cap = int(cap)
            lease.renewed_at = now
            if int(new) == 0 and lease.used == 0:
                lease.amount = 0  # nothing held, nothing in flight: exact again
            lease.grew = False
            if now - lease.period_at >= self.policy.renew_s:  # a new period
                busiest = max(lease.demand, lease.last_demand)
                if busiest * 4 < lease.amount and lease.slots > self.policy.slots:
                    lease.slots //= 2
                lease.last_peak, lease.peak = lease.peak, 0
                lease.last_demand, lease.demand = lease.demand, lease.used
                lease.period_at = now

    async def give_back(self, windows: Sequence[Window]) -> bool:
        """Return the free part of this process's leases in ``windows``; True if any was."""
        async with self._calling:  # after a resize in flight, on what it left
            leases = [
                lease
                for w in windows
                if (lease := self.leases.get(w.key)) is not None and lease.amount > lease.used
            ]
            if not leases:
                return False
            await self._call(leases, 0)
            return True

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            # Let a lease call in flight finish: cancelling redis-py mid-reply can hang.
            self._wake.set()
            await asyncio.wait((self._task,), timeout=5)
            await stop(self._task)
        held = [lease for lease in self.leases.values() if lease.amount > 0]
        if held:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.call(held, 0), timeout=2)
