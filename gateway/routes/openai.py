"""OpenAI-protocol routes: chat completions and (FIM) completions. Only paths are bound here."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.openapi_bodies import CHAT_COMPLETION, COMPLETION, body
from gateway.parse import parse_chat, parse_completion
from gateway.protocols.chat import EDGE
from gateway.serve import serve
from gateway.state import pipeline_of, settings_of

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    summary="Chat completion (OpenAI/DeepSeek format)",
    openapi_extra=body(CHAT_COMPLETION),
)
async def chat_completions(request: Request) -> Response:
    s, pipeline = settings_of(request), pipeline_of(request)
    caller = await pipeline.authenticate(request.headers)
    call = pipeline.parsed(
        lambda raw: parse_chat(
            raw, max_bytes=s.max_body_bytes, max_messages=s.max_messages, media=s.media_policy
        ),
        await request.body(),
        "openai",
    )
    return await serve(pipeline, call, request.headers, caller, EDGE, request.receive)


@router.post(
    "/v1/completions",
    summary="Text completion and fill-in-the-middle (prompt + suffix)",
    openapi_extra=body(COMPLETION),
)
async def completions(request: Request) -> Response:
    s, pipeline = settings_of(request), pipeline_of(request)
    caller = await pipeline.authenticate(request.headers)
    call = pipeline.parsed(
        lambda raw: parse_completion(raw, max_bytes=s.max_body_bytes),
        await request.body(),
        "openai",
    )
    return await serve(pipeline, call, request.headers, caller, EDGE, request.receive)
