"""A replica pool's own queue: requests wait in the gateway for a free replica slot.

With ``max_in_flight_per_replica`` set, a pool sends each replica at most that many
requests at once; the rest wait here, first come first served, up to
``queue_timeout_s`` and at most ``max_queued`` of them. A burst then waits in one queue
for whichever replica frees first, instead of piling onto the queues of replicas chosen
at arrival; and the replica is chosen when the request leaves the queue, with what is
known then (loads, cached prefixes).

A request that times out or finds the queue full fails with a retryable error, so the
route plan moves on to its next option (the hosted API, where the route allows it) and
the route header says why.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from policies.errors import UpstreamUnavailable


class PoolQueueTimeout(UpstreamUnavailable):
    code = "pool_queue_timeout"


class PoolQueueFull(UpstreamUnavailable):
    code = "pool_queue_full"


class Admission:
    """FIFO admission against ``free()``, the number of slots free right now.

    The pool calls :meth:`wake` when a slot frees (one waiter) and after a health poll or
    discovery (as many waiters as there are free slots). A woken waiter that finds its
    slot taken by a newcomer goes back to the head of the queue with its deadline.
    """

    def __init__(
        self, name: str, free: Callable[[], int], *, max_queued: int, timeout_s: float
    ) -> None:
        self.name = name
        self._free = free
        self.max_queued = max_queued
        self.timeout_s = timeout_s
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def full(self) -> bool:
        return len(self._waiters) >= self.max_queued

    async def admit(self) -> float:
        """Return once a slot is free (seconds waited); raise if none frees in time."""
        if not self._waiters and self._free() > 0:
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
        head = False
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            if head:
                self._waiters.appendleft(fut)
            else:
                self._waiters.append(fut)
            try:
                async with asyncio.timeout_at(deadline):
                    await fut
            except TimeoutError:
                self._leave(fut)
                raise PoolQueueTimeout(
                    f"backend {self.name}: no replica slot freed within {self.timeout_s:g} s "
                    "(every replica is at max_in_flight_per_replica); retry shortly",
                    retry_after=1.0,
                ) from None
            except BaseException:
                self._leave(fut)
                raise
            if self._free() > 0:
                return loop.time() - start
            head = True  # a newcomer took the slot: keep our place

    def _leave(self, fut: asyncio.Future[None]) -> None:
        """A waiter gives up; a wake-up it was already handed passes to the next one."""
        if fut.done() and not fut.cancelled():
            self.wake()
            return
        fut.cancel()
        with contextlib.suppress(ValueError):  # already taken off by wake()
            self._waiters.remove(fut)

    def wake(self, n: int = 1) -> None:
        while n > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1

    def wake_free(self) -> None:
        """Capacity may have grown (a replica came back or joined): wake one per free slot.

        Waking too many is harmless (they find no slot and keep their place); too few
        would leave a slot idle while requests wait.
        """
        self.wake(self._free())
