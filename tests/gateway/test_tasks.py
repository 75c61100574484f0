"""``gateway.tasks.stop``: a background loop that swallows a cancellation still stops."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.tasks import stop


async def test_a_loop_that_swallows_one_cancellation_is_stopped() -> None:
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as redis-py may, mid-reply: the loop runs on

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.02)
    await asyncio.wait_for(stop(task), timeout=2)
    assert task.cancelled() and swallowed == 1


async def test_a_task_that_never_stops_is_given_up_on() -> None:
    done = False

    async def stubborn() -> None:
        while not done:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    task = asyncio.create_task(stubborn())
    await asyncio.wait_for(stop(task, timeout_s=0.3), timeout=2)
    assert not task.done()  # still running, as stop() reported
    done = True
    await asyncio.wait_for(task, timeout=2)


async def test_a_failed_or_missing_task_is_fine() -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fail())
    await asyncio.sleep(0)
    await stop(task)
    await stop(None)
    assert task.done()
