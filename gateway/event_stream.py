"""Server-sent events relayed as they arrive, with one light watcher for a client leaving.

Starlette's ``StreamingResponse`` runs every stream in an anyio task group with a cancel
scope (two tasks and a scope per response). The relay needs less: send each event, and if
the client goes away, stop, so the upstream request is closed (and stops generating) and
the relay settles what was streamed. One asyncio task waits on ``receive`` for the
disconnect and cancels the sending task; that cancellation ends here, not in the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        *,
        headers: Mapping[str, str],
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(headers=headers)
        self.events = events
        # Awaited last, in every case: closing a generator that never started runs none of
        # its code, so what must happen whatever became of the stream goes here.
        self.on_close = on_close
        # set by Response.init_headers for a body; a stream has none
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.current_task()
        assert sender is not None
        state = {"finished": False, "left": False}

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not state["finished"]:
                        state["left"] = True
                        sender.cancel()
                    return

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            state["finished"] = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["left"]:
                raise
            sender.uncancel()  # the client left: a normal end for this request
        finally:
            state["finished"] = True
            watcher.cancel()
            # Stopped while sending (not inside the relay): close it now, so that it
            # settles and releases the upstream at once rather than when collected.
            try:
                await self.events.aclose()
            finally:
                if self.on_close is not None:
                    await self.on_close()
