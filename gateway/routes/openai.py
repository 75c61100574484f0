"""OpenAI-protocol routes: chat completions and (FIM) completions. Thin: parse, call, render."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.accounting import Caller
from gateway.errors import sse_error_event
from gateway.event_stream import EventStreamResponse
from gateway.openapi_bodies import CHAT_COMPLETION, COMPLETION, body
from gateway.parse import Call, parse_chat, parse_completion
from gateway.pipeline import Pipeline
from gateway.settled import settled_response
from gateway.state import pipeline_of, settings_of

router = APIRouter()

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _serve(pipeline: Pipeline, call: Call, request: Request, caller: Caller) -> Response:
    p = await pipeline.prepare(call, request.headers, caller)
    if call.stream:
        stream = await pipeline.open_stream(p)
        headers = {
            **_SSE_HEADERS,
            "x-request-id": p.request_id,
            "x-tiergate-route": p.route_header(),
        }
        events = pipeline.relay(p, stream, lambda err: sse_error_event(err, "openai"))
        return EventStreamResponse(
            events, headers=headers, on_close=lambda: pipeline.abandon(p, stream)
        )
    resp = await pipeline.answer(p)
    headers = {"x-request-id": p.request_id, "x-tiergate-route": p.route_header()}
    return await settled_response(pipeline, p, resp, lambda: orjson.dumps(resp.body), headers)


@router.post(
    "/v1/chat/completions",
    summary="Chat completion (OpenAI/DeepSeek format)",
    openapi_extra=body(CHAT_COMPLETION),
)
async def chat_completions(request: Request) -> Response:
    s, pipeline = settings_of(request), pipeline_of(request)
    caller = await pipeline.authenticate(request.headers)
    call = parse_chat(await request.body(), max_bytes=s.max_body_bytes, max_messages=s.max_messages)
    return await _serve(pipeline, call, request, caller)


@router.post(
    "/v1/completions",
    summary="Text completion and fill-in-the-middle (prompt + suffix)",
    openapi_extra=body(COMPLETION),
)
async def completions(request: Request) -> Response:
    s, pipeline = settings_of(request), pipeline_of(request)
    caller = await pipeline.authenticate(request.headers)
    call = parse_completion(await request.body(), max_bytes=s.max_body_bytes)
    return await _serve(pipeline, call, request, caller)
