"""Reading a relayed OpenAI chat stream for a protocol that answers in another shape."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

import orjson


async def translate_relayed(
    events: AsyncGenerator[bytes, None],
    start: Callable[[], bytes],
    feed: Callable[[dict[str, Any]], bytes],
    end: Callable[[], bytes],
    fail: Callable[[dict[str, Any]], bytes],
) -> AsyncGenerator[bytes, None]:
    """The relay's SSE lines through a protocol's translator: ``start`` first, ``feed`` for
    each chunk, ``end`` at ``[DONE]``; an upstream error chunk (``{"error": ...}`` without
    choices) goes to ``fail`` and ends the stream. Keep-alive comments are skipped, and
    closing this stream early closes the relay too."""
    async with aclosing(events):
        yield start()
        async for raw in events:
            if not raw.startswith(b"data: "):
                continue  # keep-alive comments
            payload = raw[6:].strip()
            if payload == b"[DONE]":
                yield end()
                return
            chunk = orjson.loads(payload)
            if "error" in chunk and not chunk.get("choices"):
                yield fail(chunk["error"])
                return
            out = feed(chunk)
            if out:
                yield out
