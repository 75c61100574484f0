"""A JSON response whose request is settled before its bytes are handed to the client.

Settling (the cost, the budget script in Redis, the ledger event, metrics, the log line)
takes a Redis round trip. It runs before the first byte is sent, so an answer a client has
received is always in the ledger and its budget: a process killed between sending and
settling (SIGKILL, OOM) would otherwise lose answered, upstream-billed requests from both.
The price is that round trip on each non-stream answer's latency. Streams settle before
their last event for the same reason (``Pipeline.relay``).

``after`` runs once, also when rendering or sending fails (a client that went away was
still answered upstream, and the upstream bills for it), inside the request's own task, so
a graceful shutdown waits for it like for any request in flight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from engines.base import EngineResponse
from policies.errors import TiergateError

if TYPE_CHECKING:
    from gateway.pipeline import Pipeline, Prepared


class SettledResponse(Response):
    media_type = "application/json"

    def __init__(
        self,
        content: bytes,
        *,
        headers: Mapping[str, str],
        after: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(content, headers=headers)
        self._after = after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._after()  # never raises: a failed settlement is logged and counted
        await super().__call__(scope, receive, send)


async def settled_response(
    pipeline: Pipeline,
    p: Prepared,
    resp: EngineResponse,
    render: Callable[[], bytes],
    headers: Mapping[str, str],
) -> SettledResponse:
    """The client's answer, settled before it is sent; settled at once if rendering fails."""
    try:
        content = render()
    except TiergateError as err:  # the client gets this error for a billed answer
        await pipeline.finish(p, resp, err.status)
        raise
    except BaseException:
        await pipeline.finish(p, resp)
        raise
    return SettledResponse(content, headers=headers, after=lambda: pipeline.finish(p, resp))
