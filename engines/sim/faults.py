"""Failure injection: which fault a request gets, and the faults that are not a status.

A fault comes from the ``x-sim-fail`` header, else (with probability ``fail_rate``) from
the config: ``fail_mode`` if set, else ``fail_status``. Kinds:

- an HTTP status (``503``, ``429`` with ``Retry-After``, ``402``, ``500``, ``400``...);
- ``disconnect``: the connection closes before any response byte;
- ``midstream``: part of the response (a few SSE chunks, or half a JSON body), then the
  connection closes (no ``[DONE]``);
- ``insufficient``: the hosted API's ``finish_reason: insufficient_system_resource``
  after part of the answer;
- ``stall``: the request is accepted and never answered until the client gives up
  (bounded by ``stall_s``);
- ``error_event``: vLLM's failure inside a stream: a few chunks, then
  ``data: {"error": {...}}`` and ``data: [DONE]`` (not streamed: vLLM's empty 500);
- ``no_usage``: a whole stream, ``[DONE]`` included, without the usage chunk that
  ``stream_options.include_usage`` asks for (an OpenAI-compatible server that ignores it);
  not streamed: no fault.

Closing a connection without a proper end needs the server's transport: under uvicorn
it is reached through the ``send`` callable the server hands the app; elsewhere the
request fails with an exception instead, which servers also turn into a broken response.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from engines.sim.config import SimConfig, fault_is_valid
from engines.sim.errors import SimError

#: Where the simulator's outer ASGI layer keeps the server's own ``send`` callable.
SERVER_SEND = "tiergate.sim.server_send"

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ConnectionDropped(Exception):
    """Raised to break a response off where the server's transport cannot be reached."""


def pick_fault(header: str | None, config: SimConfig, rng: random.Random) -> str:
    """The fault for one request: ``""`` for none, a status such as ``"503"``, or a kind."""
    if header:
        fault = header.strip().lower()
        if not fault_is_valid(fault):
            raise SimError(400, f"unknown x-sim-fail value {header!r}")
        return fault
    if config.fail_rate and rng.random() < config.fail_rate:
        return config.fail_mode or str(config.fail_status)
    return ""


def _server_cycle(scope: MutableMapping[str, Any]) -> Any:
    send = scope.get(SERVER_SEND)
    return getattr(send, "__self__", None)


async def drop_connection(scope: MutableMapping[str, Any]) -> None:
    """Close the client's connection now, whatever was sent so far.

    Returns once the server has noticed, so that nothing it sends afterwards reaches the
    client and it does not answer for the app. Raises ``ConnectionDropped`` where the
    transport cannot be reached.
    """
    cycle = _server_cycle(scope)
    transport = getattr(cycle, "transport", None)
    if transport is None or not hasattr(cycle, "disconnected"):
        raise ConnectionDropped("simulated connection drop")
    transport.close()
    for _ in range(100):  # connection_lost runs on one of the next loop iterations
        if cycle.disconnected:
            return
        await asyncio.sleep(0)
    raise ConnectionDropped("simulated connection drop")


async def stall(receive: Callable[[], Awaitable[MutableMapping[str, Any]]], limit_s: float) -> bool:
    """Wait until the client disconnects (True) or ``limit_s`` passes (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while (left := deadline - loop.time()) > 0:
        try:
            message = await asyncio.wait_for(receive(), timeout=left)
        except TimeoutError:
            return False
        if message.get("type") == "http.disconnect":
            return True
    return False
