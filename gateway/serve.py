"""One request lifecycle for every protocol: prepare, dispatch, render, settle.

A protocol (gateway/protocols/) is a parser (its body -> ``Call``) and an ``Edge``: how it
renders the DeepSeek-shaped answer or event stream the pipeline returns. ``serve`` drives
the rest the same way for all of them (answer or stream, settlement after the response is
sent, the abandoned-stream settlement), so a new protocol adds a parser and an edge, not a
lifecycle. Routes only bind paths to a parser and an edge.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from gateway.accounting import Caller
from gateway.event_stream import EventStreamResponse
from gateway.parse import Call
from gateway.pipeline import Pipeline, Prepared
from gateway.settled import settled_response
from policies.errors import TiergateError

Events = AsyncGenerator[bytes, None]

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True, slots=True)
class Edge:
    """How one protocol renders what the pipeline returns."""

    # the DeepSeek-shaped answer -> the client's response body
    render: Callable[[Prepared, dict[str, Any]], bytes]
    # the relayed DeepSeek-shaped SSE events -> the client's events
    stream: Callable[[Prepared, Events], Events]
    # a failure after the first byte, in the framing ``stream`` reads
    stream_error: Callable[[TiergateError], bytes]
    # response headers of this protocol, besides the route header
    headers: Callable[[Prepared], dict[str, str]]


async def serve(
    pipeline: Pipeline, call: Call, headers: Mapping[str, str], caller: Caller, edge: Edge
) -> Response:
    p = await pipeline.prepare(call, headers, caller)
    out = edge.headers(p)
    if call.stream:
        stream = await pipeline.open_stream(p)
        out["x-tiergate-route"] = p.route_header()
        events = edge.stream(p, pipeline.relay(p, stream, edge.stream_error))
        return EventStreamResponse(
            events, headers={**_SSE_HEADERS, **out}, on_close=lambda: pipeline.abandon(p, stream)
        )
    resp = await pipeline.answer(p)
    out["x-tiergate-route"] = p.route_header()
    return await settled_response(pipeline, p, resp, lambda: edge.render(p, resp.body), out)
