"""One request lifecycle for every protocol: prepare, dispatch, render, settle.

A protocol (gateway/protocols/) is a parser (its body -> ``Call``) and an ``Edge``: how it
renders the DeepSeek-shaped answer or event stream the pipeline returns. ``serve`` drives
the rest the same way for all of them (answer or stream, settlement after the response is
sent, the abandoned-stream settlement), so a new protocol adds a parser and an edge, not a
lifecycle. Routes only bind paths to a parser and an edge.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.responses import Response
from starlette.types import Receive

from gateway.accounting import Caller
from gateway.event_stream import EventStreamResponse
from gateway.parse import Call
from gateway.pipeline import Pipeline, Prepared
from gateway.settled import settled_response
from policies.errors import ClientClosedRequest, TiergateError

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
    pipeline: Pipeline,
    call: Call,
    headers: Mapping[str, str],
    caller: Caller,
    edge: Edge,
    receive: Receive | None = None,
) -> Response:
    """``receive``: the request's ASGI channel, watched for the client leaving while the
    gateway waits for the answer to begin."""
    p = await pipeline.prepare(call, headers, caller)
    try:
        return await _respond(pipeline, p, edge, receive)
    except TiergateError as err:
        # Also an error the edge raised over an answer that was billed (a cut answer is a
        # 503): the client can quote the id of its ledger row.
        err.headers.setdefault("x-request-id", p.request_id)
        err.headers.setdefault("x-tiergate-route", p.route_header())
        raise


async def _respond(
    pipeline: Pipeline, p: Prepared, edge: Edge, receive: Receive | None
) -> Response:
    out = edge.headers(p)
    if p.call.stream:
        stream = await _unless_gone(pipeline, p, pipeline.open_stream(p), receive)
        out["x-tiergate-route"] = p.route_header()
        events = edge.stream(p, pipeline.relay(p, stream, edge.stream_error))
        return EventStreamResponse(
            events, headers={**_SSE_HEADERS, **out}, on_close=lambda: pipeline.abandon(p, stream)
        )
    resp = await _unless_gone(pipeline, p, pipeline.answer(p), receive)
    out["x-tiergate-route"] = p.route_header()
    return await settled_response(pipeline, p, resp, lambda: edge.render(p, resp.body), out)


T = TypeVar("T")


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(
    pipeline: Pipeline, p: Prepared, work: Coroutine[Any, Any, T], receive: Receive | None
) -> T:
    """``work`` (the upstream call), cancelled if the client goes away before it returns:
    a client that timed out no longer keeps an upstream generating, billed, for nobody, nor
    its hold. Nothing reached the client and nothing says the upstream took the request,
    so it is released unbilled (status 499 in the log and the metrics)."""
    if receive is None:
        return await work
    me = asyncio.current_task()
    assert me is not None
    waiting = True

    def left(watch: asyncio.Task[None]) -> None:
        if waiting and not watch.cancelled() and watch.exception() is None:
            me.cancel()  # the client left: stop waiting for the upstream

    watch = asyncio.ensure_future(_disconnect(receive))
    watch.add_done_callback(left)
    try:
        return await work
    except asyncio.CancelledError:
        if not (watch.done() and not watch.cancelled() and watch.exception() is None):
            raise  # cancelled for another reason (shutdown)
        me.uncancel()
        err = ClientClosedRequest("the client closed the connection before the answer began")
        await pipeline.fail(p, err)
        raise err from None
    finally:
        waiting = False
        watch.cancel()
