"""OpenAI chat completions and (FIM) completions: DeepSeek's shape passes through.

Parsing is gateway/parse.py (the internal request is OpenAI chat already); rendering only
puts back the model name the client asked for, in the answer and in every stream chunk.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.errors import sse_error_event
from gateway.pipeline import Prepared
from gateway.serve import Edge, Events

# The first "model" key of a chunk: in JSON text an unescaped quote only delimits keys and
# strings, so this cannot match inside generated text.
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')


def _chat_render(p: Prepared, body: dict[str, Any]) -> bytes:
    body["model"] = p.call.model  # the name the client asked for, whichever option served it
    return orjson.dumps(body)


async def _chat_stream(p: Prepared, events: Events) -> Events:
    name = b'"model":' + orjson.dumps(p.call.model)
    async for event in events:
        yield _MODEL_FIELD.sub(lambda _: name, event, count=1) if event[:6] == b"data: " else event


EDGE = Edge(
    render=_chat_render,
    stream=_chat_stream,
    stream_error=lambda err: sse_error_event(err, "openai"),
    headers=lambda p: {"x-request-id": p.request_id},
)
