"""OpenAI Responses API routes; only paths are bound here (gateway/protocols/responses.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.openapi_bodies import RESPONSES, body
from gateway.protocols.responses import EDGE, parse_responses
from gateway.serve import serve
from gateway.state import pipeline_of, settings_of
from policies.errors import UnknownModel

router = APIRouter()


@router.post(
    "/v1/responses",
    summary="Create a model response (OpenAI Responses format)",
    openapi_extra=body(RESPONSES),
)
async def create_response(request: Request) -> Response:
    s, pipeline = settings_of(request), pipeline_of(request)
    caller = await pipeline.authenticate(request.headers, "responses")
    call = pipeline.parsed(
        lambda raw: parse_responses(
            raw, max_bytes=s.max_body_bytes, max_messages=s.max_messages, media=s.media_policy
        ),
        await request.body(),
        "responses",
    )
    return await serve(pipeline, call, request.headers, caller, EDGE, request.receive)


@router.get("/v1/responses/{response_id}", summary="Stored responses: none are kept here")
@router.delete("/v1/responses/{response_id}", summary="Stored responses: none are kept here")
async def stored_response(request: Request, response_id: str) -> Response:
    pipeline = pipeline_of(request)
    await pipeline.authenticate(request.headers, "responses")
    err = UnknownModel(
        f"response '{response_id}' not found: this gateway does not store responses",
        param="response_id",
    )
    err.code = "response_not_found"
    pipeline.reject("responses", err)
    raise err
