"""A JSON response whose request is settled after its bytes are handed to the client.

Settling (the cost, the budget script in Redis, the ledger event, metrics, the log line)
takes a Redis round trip and some CPU; nothing in the response depends on it, so the
client should not wait for it. The worst-case reservation made before dispatch stays
held until the settlement replaces it, so a budget cannot be overspent in the gap.

``after`` runs whether or not sending succeeded (a client that went away was still
answered upstream, and the upstream bills for it), inside the request's own task, so a
graceful shutdown waits for it like for any request in flight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from engines.base import EngineResponse

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
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._after()


async def settled_response(
    pipeline: Pipeline,
    p: Prepared,
    resp: EngineResponse,
    render: Callable[[], bytes],
    headers: Mapping[str, str],
) -> SettledResponse:
    """The client's answer, settled after it is sent; settled at once if rendering fails."""
    try:
        content = render()
    except BaseException:
        await pipeline.finish(p, resp)
        raise
    return SettledResponse(content, headers=headers, after=lambda: pipeline.finish(p, resp))
