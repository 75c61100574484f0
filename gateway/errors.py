"""Rendering tiergate errors in the caller's protocol: OpenAI or Anthropic error shape."""

from __future__ import annotations

import math
from typing import Literal

import orjson
from starlette.responses import Response

from policies.errors import TiergateError

Protocol = Literal["openai", "anthropic"]

# Anthropic's error "type" for each HTTP status it documents.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def anthropic_type(status: int) -> str:
    """Anthropic's error type for a status: its documented one, else a client error
    (``invalid_request_error``) for any other 4xx (408, 431...) and ``api_error`` for 5xx."""
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(err: TiergateError, protocol: Protocol) -> dict[str, object]:
    if protocol == "anthropic":
        return {
            "type": "error",
            "error": {
                "type": anthropic_type(err.status),
                "message": err.message,
            },
        }
    return {
        "error": {
            "message": err.message,
            "type": err.type,
            "param": err.param,
            "code": err.code,
        }
    }


def error_headers(err: TiergateError, request_id: str | None) -> dict[str, str]:
    headers = dict(err.headers)
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
    if request_id:
        headers["x-request-id"] = request_id
    return headers


def error_response(
    err: TiergateError, protocol: Protocol = "openai", request_id: str | None = None
) -> Response:
    return Response(
        orjson.dumps(error_body(err, protocol)),
        status_code=err.status,
        headers=error_headers(err, request_id),
        media_type="application/json",
    )


def sse_error_event(err: TiergateError, protocol: Protocol) -> bytes:
    """The last event of a stream that failed after its first byte."""
    if protocol == "anthropic":
        return b"event: error\ndata: " + orjson.dumps(error_body(err, protocol)) + b"\n\n"
    return b"data: " + orjson.dumps(error_body(err, protocol)) + b"\n\n"
