"""The simulator's HTTP app (Starlette): a vLLM V4 replica or the hosted DeepSeek API.

``engines.sim.planning`` decides what a request produces; this module is the HTTP side:
routes per mode, auth, fault injection, pacing (queue, prefill, inter-token latency),
streaming, metrics and runtime control. In the zero-latency mode the request path never
sleeps or yields to the event loop beyond reading the request body.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from engines.sim.config import SimConfig
from engines.sim.errors import SimError, error_body, status_message
from engines.sim.faults import (
    SERVER_SEND,
    ConnectionDropped,
    drop_connection,
    pick_fault,
    stall,
)
from engines.sim.generation import Generation
from engines.sim.metrics import CONTENT_TYPE
from engines.sim.planning import plan_chat, plan_completion
from engines.sim.state import SimState

_SSE_HEADERS = {"Cache-Control": "no-cache"}
_MIDSTREAM_CHUNKS = 3


class _SimApp(Starlette):
    """Starlette plus ``x-sim-replica`` on every response, the server's own ``send`` kept
    in the scope (for faults that close the connection), and vLLM's idle close.

    With ``idle_close_s`` set, a request that arrives on a kept-alive connection idle for
    longer is dropped unanswered: the server closed the connection just as the client
    reused it. (uvicorn, which vLLM runs, closes idle connections after its keep-alive,
    5 s by default; a client that reuses one in that instant loses its request. Here
    every such reuse loses it.)
    """

    def __init__(self, state: SimState, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sim = state
        self._replica_header = (b"x-sim-replica", state.config.replica_id.encode())
        self._idle_since: dict[Any, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope[SERVER_SEND] = send
        header = self._replica_header
        conn = (scope.get("client"), scope.get("server"))
        idle_close = self._sim.config.idle_close_s
        if idle_close:
            since = self._idle_since.pop(conn, None)
            if since is not None and time.monotonic() - since > idle_close:
                self._sim.stats["idle_closes"] += 1
                with contextlib.suppress(ConnectionDropped):
                    await drop_connection(scope)
                return
        idle_since = self._idle_since

        async def send_with_replica(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)
            if (
                idle_close
                and message["type"] == "http.response.body"
                and not message.get("more_body")
            ):
                if len(idle_since) > 10_000:
                    idle_since.clear()
                idle_since[conn] = time.monotonic()

        await super().__call__(scope, receive, send_with_replica)


class _Nothing(Response):
    """No response at all: the connection was closed, or the client left."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


class _HalfBody(Response):
    """Announces a whole JSON body, sends half of it, then closes the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        half = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        await drop_connection(scope)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, media_type="application/json", headers=headers
    )


async def _pause(cfg: SimConfig, until: float) -> None:
    """Sleep until ``until`` (a ``perf_counter`` time); never in the zero-latency mode."""
    if cfg.instant:
        return
    delay = until - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


def _dp_rank(request: Request) -> int | None:
    """The engine asked for, as vLLM's ``OpenAIServing._get_data_parallel_rank`` reads it:
    header ``X-data-parallel-rank`` as an integer; absent or not an integer: none."""
    raw = request.headers.get("x-data-parallel-rank")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def create_sim_app(config: SimConfig) -> Starlette:
    """An ASGI app simulating one backend; its ``SimState`` is at ``app.state.sim``."""
    state = SimState(config)
    rng = random.Random(config.seed)

    def error(status: int, message: str, param: str | None = None) -> Response:
        state.stats["errors"] += 1
        headers = {"Retry-After": "1"} if status == 429 else None
        return _json(error_body(state.config.mode, status, message, param), status, headers)

    def authorized(request: Request) -> bool:
        if state.config.mode != "hosted":
            return True
        auth = request.headers.get("authorization", "")
        return auth[:7].lower() == "bearer " and bool(auth[7:].strip())

    async def generate(request: Request, kind: str) -> Response:
        cfg = state.config
        state.stats["requests"] += 1
        if not authorized(request):
            return error(401, "Authentication Fails: no valid API key in the Authorization header")
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return error(400, "Invalid Format: the body is not valid JSON")
        if not isinstance(body, dict):
            return error(400, "Invalid Format: the body must be a JSON object")
        try:
            fault = pick_fault(request.headers.get("x-sim-fail"), cfg, rng)
            if fault:
                state.stats["faults"] += 1
            if fault.isdigit():
                if int(fault) == 500 and cfg.mode == "vllm":
                    # vLLM's handler for a dead engine: an empty 500 (its /health says 503)
                    state.stats["errors"] += 1
                    return Response(status_code=500)
                return error(int(fault), status_message(int(fault)))
            if fault == "disconnect":
                await drop_connection(request.scope)
                return _Nothing()
            if cfg.concurrency_limit and state.running + state.waiting >= cfg.concurrency_limit:
                return error(429, status_message(429) + " (the account's concurrency limit)")
            user_id = body.get("user_id")
            state.last_user_id = user_id if isinstance(user_id, str) else None
            engine = state.pick_engine(_dp_rank(request) if cfg.mode == "vllm" else None)
            if kind == "chat":
                beta = request.scope["path"].startswith("/beta/")
                gen = plan_chat(cfg, engine.cache, body, request.headers, beta=beta)
            else:
                gen = plan_completion(cfg, engine.cache, body, request.headers)
            gen.engine = engine.index
        except SimError as exc:
            return error(exc.status, exc.message, exc.param)
        if fault == "stall":
            await stall(request.receive, cfg.stall_s)
            await drop_connection(request.scope)
            return _Nothing()
        if fault == "insufficient":
            gen.break_off()
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return StreamingResponse(
                _stream(state, gen, include_usage, fault, request.scope),
                media_type="text/event-stream",
                headers=_SSE_HEADERS,
            )
        if fault == "error_event":  # not streamed: vLLM's engine-error handler, an empty 500
            state.stats["errors"] += 1
            return Response(status_code=500)
        if cfg.queue_s:
            return StreamingResponse(
                _queued_answer(state, gen, request.scope), media_type="application/json"
            )
        async with state.slot(gen.engine) as queued_s:
            started = time.perf_counter()
            last_token = gen.prefill_s + cfg.itl_s * max(0, gen.output_tokens - 1)
            if cfg.mode == "vllm" and not cfg.instant:
                # vLLM cancels a request whose client disconnects (its handlers run under
                # ``with_cancellation``): the engine aborts it and stops generating.
                if await stall(request.receive, started + last_token - time.perf_counter()):
                    state.stats["aborted"] += 1
                    return _Nothing()
            else:
                await _pause(cfg, started + last_token)
            state.finished(gen, queued_s)
        payload = orjson.dumps(gen.response_body())
        if fault == "midstream":
            return _HalfBody(payload, media_type="application/json")
        return Response(payload, media_type="application/json")

    async def chat(request: Request) -> Response:
        return await generate(request, "chat")

    async def completions(request: Request) -> Response:
        return await generate(request, "completions")

    async def models(request: Request) -> Response:
        cfg = state.config
        if not authorized(request):
            return error(401, "Authentication Fails: no valid API key in the Authorization header")
        now = int(time.time())
        if cfg.mode == "vllm":
            data = [
                {
                    "id": cfg.model,
                    "object": "model",
                    "created": now,
                    "owned_by": "vllm",
                    "root": cfg.model,
                    "max_model_len": cfg.max_model_len,
                }
            ]
        else:
            data = [{"id": n, "object": "model", "owned_by": "deepseek"} for n in cfg.models]
        return _json({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        if state.config.poll_delay_s:
            await asyncio.sleep(state.config.poll_delay_s)
        return Response(status_code=200 if state.healthy else 503)

    async def metrics(request: Request) -> Response:
        if state.config.poll_delay_s:
            await asyncio.sleep(state.config.poll_delay_s)
        return Response(state.exposition(), media_type=CONTENT_TYPE)

    async def control(request: Request) -> Response:
        try:
            state.control(orjson.loads(await request.body()))
        except orjson.JSONDecodeError:
            return error(400, "control body must be JSON")
        except SimError as exc:
            return error(exc.status, exc.message)
        return _json({"ok": True, **state.snapshot()})

    async def stats(request: Request) -> Response:
        return _json(state.snapshot())

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/sim/control", control, methods=["POST"]),
        Route("/sim/stats", stats, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    if config.mode == "hosted":
        routes += [
            Route("/models", models, methods=["GET"]),
            Route("/chat/completions", chat, methods=["POST"]),
            Route("/beta/chat/completions", chat, methods=["POST"]),
            Route("/beta/completions", completions, methods=["POST"]),
            Route("/completions", completions, methods=["POST"]),
        ]
    app = _SimApp(state, routes=routes)
    app.state.sim = state
    return app


async def _queue_wait(cfg: SimConfig, beat: bytes) -> AsyncIterator[bytes]:
    """The hosted API's overload wait: ``beat`` at once and every ``keepalive_every_s``
    while the request waits ``queue_s`` (at most ``queue_close_s``) for inference."""
    loop = asyncio.get_running_loop()
    end = loop.time() + min(cfg.queue_s, cfg.queue_close_s)
    yield beat
    while (left := end - loop.time()) > 0:
        await asyncio.sleep(min(cfg.keepalive_every_s, left))
        yield beat


async def _queued_answer(state: SimState, gen: Generation, scope: Scope) -> AsyncIterator[bytes]:
    """A non-stream answer from the overloaded hosted API: blank lines, then the body."""
    cfg = state.config
    async for beat in _queue_wait(cfg, b"\n"):
        yield beat
    if cfg.queue_s >= cfg.queue_close_s:
        await drop_connection(scope)
        return
    async with state.slot(gen.engine) as queued_s:
        started = time.perf_counter()
        await _pause(cfg, started + gen.prefill_s + cfg.itl_s * max(0, gen.output_tokens - 1))
        state.finished(gen, queued_s)
    yield orjson.dumps(gen.response_body())


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def _stream(
    state: SimState, gen: Generation, include_usage: bool, fault: str, scope: Scope
) -> AsyncIterator[bytes]:
    cfg = state.config
    if cfg.queue_s:
        async for beat in _queue_wait(cfg, b": keep-alive\n\n"):
            yield beat
        if cfg.queue_s >= cfg.queue_close_s:
            await drop_connection(scope)
            return
    elif cfg.keepalive_comments:  # the hosted API keeps a queued stream open with comments
        yield b": keep-alive\n\n"
    lead = 1 if gen.kind == "chat" else 0  # the role chunk leaves with the first token
    async with state.slot(gen.engine) as queued_s:
        started = time.perf_counter()
        await _pause(cfg, started + gen.prefill_s)
        for i, chunk in enumerate(gen.chunks()):
            if i > lead:
                await _pause(cfg, started + gen.prefill_s + (i - lead) * cfg.itl_s)
            yield _sse(chunk)
            if fault in ("midstream", "error_event") and i + 1 >= _MIDSTREAM_CHUNKS:
                break
        if fault == "midstream":  # a few chunks (all of a short answer), never the end
            await drop_connection(scope)
            return
        if fault == "error_event":  # vLLM: the failure as an error event, then [DONE]
            message = "EngineGenerateError: the request failed during generation"
            yield _sse(error_body("vllm", 500, message))
            yield b"data: [DONE]\n\n"
            return
        for chunk in gen.final_chunks():
            yield _sse(chunk)
        if include_usage and fault != "no_usage":
            yield _sse(gen.usage_chunk())
        yield b"data: [DONE]\n\n"
        state.finished(gen, queued_s)
