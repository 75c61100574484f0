"""Anthropic Messages API: ``/v1/messages`` (also under ``/anthropic``, as DeepSeek serves it)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.accounting import Caller
from gateway.openapi_bodies import COUNT_TOKENS, MESSAGES, body
from gateway.parse import Call
from gateway.protocols.anthropic import EDGE, count_tokens, parse_messages
from gateway.serve import serve
from gateway.state import pipeline_of, settings_of

router = APIRouter()


async def _parsed(request: Request, count_only: bool = False) -> tuple[Call, Caller]:
    s, pipeline = settings_of(request), pipeline_of(request)
    caller = await pipeline.authenticate(request.headers, "anthropic")
    call = pipeline.parsed(
        lambda raw: parse_messages(
            raw,
            max_bytes=s.max_body_bytes,
            max_messages=s.max_messages,
            media=s.media_policy,
            count_only=count_only,
        ),
        await request.body(),
        "anthropic",
    )
    return call, caller


async def messages(request: Request) -> Response:
    call, caller = await _parsed(request)
    return await serve(pipeline_of(request), call, request.headers, caller, EDGE, request.receive)


async def tokens(request: Request) -> Response:
    """The body is checked as ``/v1/messages`` checks it (but for ``max_tokens``), and what
    would go upstream is counted."""
    call, caller = await _parsed(request, count_only=True)
    pipeline_of(request).check_model(call, caller)
    return Response(orjson.dumps(count_tokens(call)), media_type="application/json")


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
