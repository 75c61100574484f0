"""Anthropic Messages API: ``/v1/messages`` (also under ``/anthropic``, as DeepSeek serves it)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.openapi_bodies import COUNT_TOKENS, MESSAGES, body
from gateway.protocols.anthropic import EDGE, count_tokens, parse_messages
from gateway.serve import serve
from gateway.state import pipeline_of, settings_of

router = APIRouter()


async def messages(request: Request) -> Response:
    s, pipeline = settings_of(request), pipeline_of(request)
    caller = await pipeline.authenticate(request.headers, "anthropic")
    call = pipeline.parsed(
        lambda raw: parse_messages(
            raw, max_bytes=s.max_body_bytes, max_messages=s.max_messages, media=s.media_policy
        ),
        await request.body(),
        "anthropic",
    )
    return await serve(pipeline, call, request.headers, caller, EDGE, request.receive)


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
