"""An upstream SSE response, consumed line by line and re-emitted in DeepSeek's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp

from engines.base import StreamOutcome
from engines.http import translate_errors
from engines.translate import SSENormalizer
from policies.errors import UpstreamError


class SSEStream:
    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        replica: str | None,
        include_usage: bool,
        where: str,
        *,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.replica = replica
        self.outcome = StreamOutcome()
        self._resp = resp
        self._norm = SSENormalizer(self.outcome, include_usage=include_usage)
        self._where = where
        self._on_close = on_close
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async with translate_errors(self._where):
                async for raw in self._resp.content:
                    line = raw.rstrip(b"\r\n")
                    if not line:
                        continue
                    event = self._norm.feed(line)
                    if event is not None:
                        yield event
            if not self._norm.done:
                raise UpstreamError(f"{self._where} ended the stream without [DONE]")
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                self._on_close()
            self._resp.release()
