"""Stopping the gateway's background tasks (pollers, watchers, the journal, the drainer).

redis-py can swallow a cancellation that lands while it reads a reply, and a loop around
such a call then runs on; a shutdown that awaits it would hang (seen: a process that could
not bind its port never exited, SIGTERM included). ``stop`` cancels again until the task
ends, within a time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from gateway.logging import get_logger

log = get_logger("tiergate")


async def stop(task: asyncio.Task[Any] | None, timeout_s: float = 5.0) -> None:
    """Cancel ``task`` and wait until it ends, cancelling it again while it does not;
    after ``timeout_s`` give up on it (logged). Its result or exception is discarded."""
    if task is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        if loop.time() >= deadline:
            log.warning("a background task did not stop", task=task.get_name())
            return
        task.cancel()
        await asyncio.wait((task,), timeout=0.05)
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()  # retrieved: no "exception was never retrieved" at exit
