"""Anthropic Messages API: ``/v1/messages`` (also under ``/anthropic``, as DeepSeek serves it)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.anthropic import (
    count_tokens,
    parse_messages,
    stream_error,
    to_message,
    translate_stream,
)
from gateway.event_stream import EventStreamResponse
from gateway.openapi_bodies import COUNT_TOKENS, MESSAGES, body
from gateway.settled import settled_response
from gateway.state import pipeline_of, settings_of

router = APIRouter()


async def messages(request: Request) -> Response:
    s, pipeline = settings_of(request), pipeline_of(request)
    caller = await pipeline.authenticate(request.headers, "anthropic")
    call = parse_messages(
        await request.body(), max_bytes=s.max_body_bytes, max_messages=s.max_messages
    )
    p = await pipeline.prepare(call, request.headers, caller)
    headers = {"request-id": p.request_id, "x-request-id": p.request_id}
    if call.stream:
        stream = await pipeline.open_stream(p)
        headers["x-tiergate-route"] = p.route_header()
        events = translate_stream(pipeline.relay(p, stream, stream_error), call.model)
        return EventStreamResponse(
            events,
            headers={**headers, "Cache-Control": "no-cache"},
            on_close=lambda: pipeline.abandon(p, stream),
        )
    resp = await pipeline.answer(p)
    headers["x-tiergate-route"] = p.route_header()
    return await settled_response(
        pipeline, p, resp, lambda: orjson.dumps(to_message(resp.body, call.model)), headers
    )


async def tokens(request: Request) -> Response:
    s, pipeline = settings_of(request), pipeline_of(request)
    await pipeline.authenticate(request.headers, "anthropic")
    return Response(
        orjson.dumps(count_tokens(await request.body(), max_bytes=s.max_body_bytes)),
        media_type="application/json",
    )


for prefix in ("", "/anthropic"):
    router.add_api_route(
        prefix + "/v1/messages",
        messages,
        methods=["POST"],
        summary="Create a message (Anthropic format)",
        openapi_extra=body(MESSAGES),
        include_in_schema=not prefix,
    )
    router.add_api_route(
        prefix + "/v1/messages/count_tokens",
        tokens,
        methods=["POST"],
        summary="Estimate input tokens (Anthropic format)",
        openapi_extra=body(COUNT_TOKENS),
        include_in_schema=not prefix,
    )
