"""A replica pool's own queue: requests wait in the gateway for a free replica slot.

With ``max_in_flight_per_replica`` set, a pool sends each replica at most that many
requests at once; the rest wait here, first come first served, up to
``queue_timeout_s`` and at most ``max_queued`` of them. A burst then waits in one queue
for whichever replica frees first, instead of piling onto the queues of replicas chosen
at arrival; and the replica is chosen when the request leaves the queue, with what is
known then (loads, cached prefixes).

A slot freed on a replica goes to the earliest of the first few waiters whose prompt that
replica holds the longest cached prefix of (so a saturated pool keeps its cache affinity),
else to the head of the queue; a waiter passed over that many times is served next,
whatever it prefers.

A request that times out or finds the queue full fails with a retryable error, so the
route plan moves on to its next option (the hosted API, where the route allows it) and
the route header says why.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from policies.errors import UpstreamUnavailable


class PoolQueueTimeout(UpstreamUnavailable):
    code = "pool_queue_timeout"


class PoolQueueFull(UpstreamUnavailable):
    code = "pool_queue_full"


# How many waiters from the head a freed replica looks through for one that prefers it,
# and how many times a waiter may be passed over.
LOOKAHEAD = 3


@dataclass(eq=False, slots=True)
class _Waiter:
    fut: asyncio.Future[None]
    prefers: Collection[str] = ()
    passed: int = field(default=0)


class Admission:
    """Admission against ``free()``, the number of slots free right now.

    The pool calls :meth:`wake` when a slot frees on a replica (one waiter) and
    :meth:`wake_free` after a health poll or discovery. With no usable replica, nobody
    waits: the pool's own failover decides. A woken waiter that finds its slot taken by a
    newcomer goes back to the head of the queue with its deadline.
    """

    def __init__(
        self,
        name: str,
        free: Callable[[], int],
        *,
        live: Callable[[], bool] = lambda: True,
        max_queued: int,
        timeout_s: float,
    ) -> None:
        self.name = name
        self._free = free
        self._live = live  # any replica usable? With none, nobody waits for a slot
        self.max_queued = max_queued
        self.timeout_s = timeout_s
        self._waiters: deque[_Waiter] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def full(self) -> bool:
        return len(self._waiters) >= self.max_queued

    async def admit(self, prefers: Callable[[], Collection[str]] | None = None) -> float:
        """Return once a slot is free (seconds waited); raise if none frees in time.

        ``prefers``: the replicas holding the longest cached prefix of this request
        (asked only if it has to wait).
        """
        if (not self._waiters and self._free() > 0) or not self._live():
            return 0.0
        if self.full:
            raise PoolQueueFull(
                f"backend {self.name}: {len(self._waiters)} requests already wait for a "
                f"replica (max_queued {self.max_queued}); retry shortly",
                retry_after=1.0,
            )
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.timeout_s
        w = _Waiter(loop.create_future(), prefers() if prefers is not None else ())
        self._waiters.append(w)
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    await w.fut
            except TimeoutError:
                self._leave(w)
                raise PoolQueueTimeout(
                    f"backend {self.name}: no replica slot freed within {self.timeout_s:g} s "
                    "(every replica is at max_in_flight_per_replica); retry shortly",
                    retry_after=1.0,
                ) from None
            except BaseException:
                self._leave(w)
                raise
            if self._free() > 0 or not self._live():
                return loop.time() - start
            # A newcomer took the slot: back to the head, keeping the times passed over.
            w.fut = loop.create_future()
            self._waiters.appendleft(w)

    def _leave(self, w: _Waiter) -> None:
        """A waiter gives up; a wake-up it was already handed passes to the next one."""
        if w.fut.done() and not w.fut.cancelled():
            self.wake()
            return
        w.fut.cancel()
        with contextlib.suppress(ValueError):  # already taken off by wake()
            self._waiters.remove(w)

    def wake(self, replica: str | None = None) -> None:
        """A slot freed (on ``replica``, if known): wake the waiter it should go to."""
        while self._waiters:
            pick = 0
            if replica is not None and self._waiters[0].passed < LOOKAHEAD:
                for i in range(min(LOOKAHEAD, len(self._waiters))):
                    if replica in self._waiters[i].prefers:
                        pick = i
                        break
            for i in range(pick):
                self._waiters[i].passed += 1
            w = self._waiters[pick]
            del self._waiters[pick]
            if not w.fut.done():
                w.fut.set_result(None)
                return

    def wake_free(self) -> None:
        """After a poll: wake one waiter per free slot, or all if no replica is usable.

        Capacity may have grown (a replica came back or joined). Waking too many is
        harmless (they find no slot and keep their place); too few would leave a slot idle
        while requests wait. With no usable replica left, waiting is pointless: the
        waiters go on and fail over at once rather than at their deadline.
        """
        for _ in range(len(self._waiters) if not self._live() else self._free()):
            self.wake()
