"""The data-plane routes on a pure-ASGI path, past FastAPI's middleware chain and router.

Every model request pays for each ASGI layer in front of its handler: FastAPI's error,
telemetry and body-limit middlewares, the exception middleware, the async exit stack and
the router's path matching. The handlers of the hot routes need none of it: they take a
``Request``, return a ``Response`` and raise ``TiergateError`` for anything a client should
hear about. ``TiergateApp`` answers those few ``POST`` paths itself, behind the same
``BodyLimit`` and with the same error shapes as the app's exception handlers, and hands
everything else (admin, models, health, metrics, docs, lifespan) to FastAPI. The routes stay
registered with FastAPI too, so the OpenAPI document still describes them.

Two things hold for every request, on either path: the OpenAI routes are served without
the ``/v1`` prefix too (``/chat/completions``, ``/models``...: DeepSeek documents the base
URL ``https://api.deepseek.com`` without it, and ``https://api.deepseek.com/beta`` for
FIM), and every response carries ``x-request-id``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import error_response
from gateway.http_guard import BodyLimit, metric_protocol, protocol_of_path
from policies.errors import ClientClosedRequest, TiergateError

Endpoint = Callable[[Request], Awaitable[Response]]

# The OpenAI paths a client with DeepSeek's base URL (no ``/v1``) or its beta one sends.
_UNPREFIXED = ("/chat/completions", "/completions", "/models", "/responses")
_BETA = ("/beta/chat/completions", "/beta/completions")


def canonical_path(path: str) -> str:
    """``/chat/completions`` -> ``/v1/chat/completions`` (and ``/models/{id}``...)."""
    if path in _BETA:
        return "/v1" + path[5:]
    for prefix in _UNPREFIXED:
        if path == prefix or path.startswith(prefix + "/"):
            return "/v1" + path
    return path


def with_request_id(send: Send) -> Send:
    """Every response carries ``x-request-id``: one the pipeline assigned (the id of the
    request's ledger row) when it got that far, else a fresh one (a refused body or key,
    an unknown route, a body over the limit), so any answer can be quoted back."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(name.lower() == b"x-request-id" for name, _ in headers):
                headers.append((b"x-request-id", uuid.uuid4().hex.encode()))
                message["headers"] = headers
        await send(message)

    return sending


def unexpected_error(path: str, exc: Exception) -> Response:
    """A bug or an unplanned failure: the protocol's 500 shape, the traceback in the log."""
    structlog.get_logger("tiergate").exception(
        "unhandled_error", path=path, error=type(exc).__name__
    )
    err = TiergateError(f"internal error ({type(exc).__name__}); the gateway logged the details")
    return error_response(err, protocol_of_path(path))


class TiergateApp(FastAPI):
    def __init__(self, *, max_body_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hot: dict[str, Endpoint] = {}
        self._hot_app = BodyLimit(self._serve_hot, max_body_bytes)

    def hot_routes(self, routes: Mapping[str, Endpoint]) -> None:
        """Serve these ``POST`` paths on the fast path."""
        self._hot.update(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if not scope["path"].startswith("/v1/"):
                scope["path"] = canonical_path(scope["path"])
            send = with_request_id(send)
            if scope["method"] == "POST" and scope["path"] in self._hot:
                scope["app"] = self
                await self._hot_app(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _serve_hot(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        request = Request(scope, receive, send)
        try:
            response = await self._hot[path](request)
        except ClientDisconnect:
            # Gone while its body was read (or it half-closed its socket, which the server
            # takes for a disconnect): nobody to answer; counted and logged as a 499.
            state = getattr(self.state, "tiergate", None)
            if state is not None:
                err = ClientClosedRequest("the client closed the connection while sending")
                state.pipeline.reject(metric_protocol(path), err, path=path)
            return
        except TiergateError as exc:
            response = error_response(exc, protocol_of_path(path), exc.headers.get("x-request-id"))
        except Exception as exc:
            response = unexpected_error(path, exc)
        await response(scope, receive, send)
