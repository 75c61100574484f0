"""The pool's own queue: FIFO, deadlines, a full queue, wake-ups that must not be lost."""

from __future__ import annotations

import asyncio

import pytest

from engines.admission import LOOKAHEAD, Admission, PoolQueueFull, PoolQueueTimeout


class Slots:
    """A pool with ``n`` slots; ``take`` and ``give`` as requests start and end."""

    def __init__(self, n: int) -> None:
        self.free = n

    def take(self) -> None:
        assert self.free > 0, "admitted without a free slot"
        self.free -= 1


def queue(slots: Slots, *, max_queued: int = 8, timeout_s: float = 5.0) -> Admission:
    return Admission("flash-local", lambda: slots.free, max_queued=max_queued, timeout_s=timeout_s)


async def arrive(q: Admission, n: int) -> list[asyncio.Task[float]]:
    """``n`` requests join the queue, one after another."""
    tasks = []
    for _ in range(n):
        tasks.append(asyncio.create_task(q.admit()))
        await asyncio.sleep(0)
    return tasks


async def test_a_free_slot_admits_at_once() -> None:
    slots = Slots(1)
    assert await queue(slots).admit() == 0.0


async def test_waiters_are_admitted_in_arrival_order_as_slots_free() -> None:
    slots = Slots(0)
    q = queue(slots)
    order: list[int] = []

    async def one(i: int) -> None:
        await q.admit()
        slots.take()
        order.append(i)

    tasks = []
    for i in range(3):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(0)  # arrive one after another
    assert q.queued == 3
    for _ in range(3):
        slots.free += 1
        q.wake()
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert q.queued == 0


async def test_no_slot_in_time_is_a_retryable_timeout_and_leaves_the_queue() -> None:
    q = queue(Slots(0), timeout_s=0.05)
    with pytest.raises(PoolQueueTimeout) as err:
        await q.admit()
    assert err.value.retryable and err.value.status == 503
    assert "within 0.05 s" in err.value.message
    assert q.queued == 0


async def test_a_full_queue_refuses_at_once() -> None:
    q = queue(Slots(0), max_queued=2)
    waiting = [asyncio.create_task(q.admit()) for _ in range(2)]
    await asyncio.sleep(0)
    assert q.full
    with pytest.raises(PoolQueueFull) as err:
        await q.admit()
    assert "max_queued 2" in err.value.message
    for t in waiting:
        t.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert q.queued == 0


async def test_a_newcomer_waits_behind_the_queue_even_when_a_slot_is_free() -> None:
    slots = Slots(0)
    q = queue(slots)
    first = asyncio.create_task(q.admit())
    await asyncio.sleep(0)
    slots.free = 1  # freed, but nobody called wake yet
    late = asyncio.create_task(q.admit())
    await asyncio.sleep(0.01)
    assert not late.done()  # no overtaking while someone waits
    q.wake()
    await first
    slots.take()
    slots.free += 1
    q.wake()
    await late


async def test_a_woken_waiter_that_is_cancelled_passes_its_turn_on() -> None:
    slots = Slots(0)
    q = queue(slots)
    gone, nxt = await arrive(q, 2)
    slots.free = 1
    q.wake()  # wakes `gone`, which is cancelled before it runs
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert await asyncio.wait_for(nxt, 1) >= 0.0


async def test_a_woken_waiter_whose_slot_was_taken_keeps_its_place() -> None:
    slots = Slots(0)
    q = queue(slots)
    first, second = await arrive(q, 2)
    q.wake()  # a spurious wake-up: no slot is free
    await asyncio.sleep(0.01)
    assert not first.done() and q.queued == 2
    slots.free = 1
    q.wake()
    await asyncio.wait_for(first, 1)
    slots.take()
    assert not second.done()
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)


async def test_wake_free_admits_one_waiter_per_free_slot() -> None:
    slots = Slots(0)
    q = queue(slots)
    tasks = [asyncio.create_task(q.admit()) for _ in range(3)]
    await asyncio.sleep(0)
    slots.free = 2  # a replica came back with two slots
    q.wake_free()
    await asyncio.sleep(0.01)
    assert [t.done() for t in tasks] == [True, True, False]
    tasks[2].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_freed_replica_goes_to_the_first_waiter_it_holds_the_prefix_of() -> None:
    slots = Slots(0)
    q = queue(slots)
    order: list[str] = []

    async def one(name: str, holders: list[str]) -> None:
        await q.admit(lambda: holders)
        slots.take()
        order.append(name)

    tasks = []
    for name, holders in [("a", ["r1"]), ("b", ["r2"]), ("c", []), ("d", ["r2"])]:
        tasks.append(asyncio.create_task(one(name, holders)))
        await asyncio.sleep(0)
    for replica in ["r2", "r2", "r1", "r3"]:
        slots.free += 1
        q.wake(replica)
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    # r2 frees twice: b, then d (a and c are passed over); r1 takes a; r3 holds nothing: c
    assert order == ["b", "d", "a", "c"]


async def test_a_waiter_is_passed_over_a_bounded_number_of_times() -> None:
    slots = Slots(0)
    q = queue(slots, max_queued=32)
    served: list[str] = []

    async def one(name: str, holders: list[str]) -> None:
        await q.admit(lambda: holders)
        slots.take()
        served.append(name)

    tasks = [asyncio.create_task(one("head", ["r9"]))]
    await asyncio.sleep(0)
    for i in range(LOOKAHEAD + 2):
        tasks.append(asyncio.create_task(one(f"hot{i}", ["r1"])))
        await asyncio.sleep(0)
    for _ in range(LOOKAHEAD + 1):
        slots.free += 1
        q.wake("r1")
        await asyncio.sleep(0.01)
    # after LOOKAHEAD requests overtook it, the head is served next whatever it prefers
    assert served[:LOOKAHEAD] == [f"hot{i}" for i in range(LOOKAHEAD)]
    assert served[LOOKAHEAD] == "head"
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_with_no_usable_replica_nobody_waits() -> None:
    slots, alive = Slots(0), [True]
    q = Admission(
        "flash-local", lambda: slots.free, live=lambda: alive[0], max_queued=8, timeout_s=5
    )
    waiting = [asyncio.create_task(q.admit()) for _ in range(3)]
    await asyncio.sleep(0)
    assert q.queued == 3
    alive[0] = False  # the last replica failed its health poll
    q.wake_free()
    done = await asyncio.wait_for(asyncio.gather(*waiting), 1)
    assert len(done) == 3 and q.queued == 0  # on to the pool's failover, not the deadline
    assert await q.admit() == 0.0
