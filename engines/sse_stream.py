"""An upstream SSE response, consumed line by line and re-emitted in DeepSeek's shape.

Before the engine hands the stream over, :meth:`SSEStream.wait_first_token` reads up to the
first ``data:`` event: keep-alive comments sent while the request waits in the upstream's
queue (the hosted API's overload behaviour) are dropped there, do not count as a first
token, and do not extend the first-token deadline. Nothing has reached the client yet, so
a deadline passed, a connection lost or an error event at that point fails over like any
error before the first byte.

Lines are split here rather than by aiohttp's ``readline``, whose 128 KiB line limit
raises an untyped error: a line may hold up to ``MAX_LINE_BYTES`` (a whole tool call's
arguments arrive as one line from some servers); a longer one is a typed upstream error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import aiohttp

from engines.base import StreamOutcome
from engines.http import translate_errors
from engines.translate import SSENormalizer
from policies.errors import UpstreamError, UpstreamTimeout

MAX_LINE_BYTES = 16 * 1024 * 1024


def no_first_token(
    where: str, timeout_s: float | None, comments: int | None = None
) -> UpstreamTimeout:
    """The error for a stream whose first token did not come within ``timeout_s``
    (``comments``: keep-alive comments seen meanwhile, when the client can see them).
    Nothing has reached the client: the route plan fails over, or the client gets a 504."""
    return UpstreamTimeout(
        f"{where} sent no token within {timeout_s:g} s"
        + (
            f" ({comments} keep-alive comments: the request waited in its queue)"
            if comments
            else ""
        )
    )


class SSEStream:
    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        replica: str | None,
        include_usage: bool,
        where: str,
        *,
        on_close: Callable[[], None] | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.replica = replica
        self.outcome = StreamOutcome()
        self._resp = resp
        self._norm = SSENormalizer(self.outcome, include_usage=include_usage, where=where)
        self._where = where
        self._on_close = on_close
        self._closed = False
        self._max_line = max_line_bytes
        self._lines = self._read_lines()
        self._ready: list[bytes] = []  # events read while waiting for the first token

    async def _read_lines(self) -> AsyncGenerator[bytes, None]:
        """The body's lines without their line ends, empty lines (separators) left out."""
        buf = bytearray()
        async for chunk in self._resp.content.iter_any():
            buf += chunk
            if b"\n" in chunk:
                *lines, rest = buf.split(b"\n")
                buf = bytearray(rest)
                for line in lines:
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    if line:
                        yield bytes(line)
            if len(buf) > self._max_line:
                raise UpstreamError(
                    f"{self._where} sent a stream line over {self._max_line} bytes; "
                    "the gateway does not relay lines that long"
                )
        if buf.strip():
            yield bytes(buf.rstrip(b"\r"))

    async def wait_first_token(self, timeout_s: float | None) -> None:
        """Read up to the first ``data:`` event, within ``timeout_s`` (None: no deadline).

        Comments before it are counted (``outcome.extra["keepalives"]``) and dropped. On
        any failure the response is released and the error raised.
        """
        comments = 0
        try:
            async with asyncio.timeout(timeout_s):
                async with translate_errors(self._where):
                    async for line in self._lines:
                        if line.startswith(b":"):
                            comments += 1
                            continue
                        event = self._norm.feed(line)
                        if event is not None:
                            self._ready.append(event)
                        if line.startswith(b"data:"):
                            break
                    else:
                        raise UpstreamError(f"{self._where} ended the stream before any event")
        except TimeoutError:
            await self.aclose()
            raise no_first_token(self._where, timeout_s, comments) from None
        except BaseException:
            await self.aclose()
            raise
        finally:
            self.outcome.extra["keepalives"] = comments

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async with translate_errors(self._where):
                ready, self._ready = self._ready, []
                for event in ready:
                    yield event
                async for line in self._lines:
                    out = self._norm.feed(line)
                    if out is not None:
                        yield out
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
            with contextlib.suppress(RuntimeError):  # still running: it ends with the body
                await self._lines.aclose()
