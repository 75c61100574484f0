"""The simulator's HTTP app (Starlette): a vLLM V4 replica or the hosted DeepSeek API.

See ``engines.sim.behaviour`` for what a request produces; this module is the HTTP side:
routes per mode, auth and model checks, fault injection, streaming, metrics and control.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from engines.sim.behaviour import Generation, SimError, plan_chat, plan_completion
from engines.sim.config import SimConfig
from engines.sim.state import SimState

FAULTS = ("disconnect", "midstream", "insufficient", "stall")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, media_type="application/json", headers=headers
    )


def _error(
    status: int, message: str, state: SimState, err_type: str = "invalid_request_error"
) -> Response:
    headers = {"x-sim-replica": state.config.replica_id}
    if status == 429:
        headers["Retry-After"] = "1"
    return _json(
        {"error": {"message": message, "type": err_type, "param": None, "code": str(status)}},
        status,
        headers,
    )


class _Abort(Exception):
    """Raised inside a response to drop the connection without a proper end."""


def create_sim_app(config: SimConfig) -> Starlette:
    state = SimState(config)
    rng = random.Random(config.seed)

    def pick_fault(request: Request) -> str:
        header = request.headers.get("x-sim-fail", "")
        if header:
            return header
        if state.fail_rate and rng.random() < state.fail_rate:
            return state.fail_mode or str(state.fail_status)
        return ""

    async def handle(request: Request, kind: str) -> Response:
        cfg = state.config
        if cfg.mode == "hosted":
            auth = request.headers.get("authorization", "")
            if not auth.startswith("Bearer ") or not auth[7:].strip():
                return _error(
                    401, "Authentication Fails (no such user)", state, "authentication_error"
                )
        fault = pick_fault(request)
        if fault.isdigit():
            state.stats["faults"] += 1
            return _error(int(fault), f"simulated failure {fault}", state, "api_error")
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "invalid JSON body", state)
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object", state)
        state.last_user_id = body.get("user_id") if isinstance(body.get("user_id"), str) else None
        try:
            gen = (
                plan_chat(state, body, request.headers)
                if kind == "chat"
                else plan_completion(state, body, request.headers)
            )
        except SimError as exc:
            return _error(exc.status, exc.message, state)
        if fault == "stall":
            # Hold the request until the client gives up (or a minute passes).
            for _ in range(600):
                if await request.is_disconnected():
                    break
                await asyncio.sleep(0.1)
            return _error(504, "simulated stall ended", state, "api_error")
        if fault == "insufficient":
            gen.finish_reason = "insufficient_system_resource"
            gen.content_tokens = gen.content_tokens[: max(1, len(gen.content_tokens) // 2)]
        headers = {"x-sim-replica": cfg.replica_id}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                _stream(state, gen, include_usage, fault),
                media_type="text/event-stream",
                headers=headers,
            )
        async with state.slot() as queued_s:
            await _sleep(cfg, gen.prefill_s + cfg.itl_s * gen.output_tokens)
            state.observe(gen, queued_s)
        payload = orjson.dumps(gen.response_body())
        if fault in ("disconnect", "midstream"):
            return _Truncated(payload, headers)
        return Response(payload, media_type="application/json", headers=headers)

    async def chat(request: Request) -> Response:
        return await handle(request, "chat")

    async def completions(request: Request) -> Response:
        return await handle(request, "completions")

    async def models(request: Request) -> Response:
        names = (config.model,) if config.mode == "vllm" else config.models
        now = int(time.time())
        return _json(
            {
                "object": "list",
                "data": [
                    {"id": n, "object": "model", "created": now, "owned_by": "sim"} for n in names
                ],
            }
        )

    async def health(request: Request) -> Response:
        return Response(status_code=200 if state.healthy else 503)

    async def metrics(request: Request) -> Response:
        state.refresh_gauges()
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    async def control(request: Request) -> Response:
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "control body must be JSON", state)
        state.control(data)
        return _json({"ok": True, **state.snapshot()})

    async def stats(request: Request) -> Response:
        return _json(state.snapshot())

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/sim/control", control, methods=["POST"]),
        Route("/sim/stats", stats, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    if config.mode == "hosted":
        routes += [
            Route("/chat/completions", chat, methods=["POST"]),
            Route("/beta/chat/completions", chat, methods=["POST"]),
            Route("/beta/completions", completions, methods=["POST"]),
            Route("/completions", completions, methods=["POST"]),
        ]
    app = Starlette(routes=routes)
    app.state.sim = state
    return app


async def _sleep(cfg: SimConfig, seconds: float) -> None:
    if not cfg.instant and seconds > 0:
        await asyncio.sleep(seconds)


class _Truncated(Response):
    """Announces a full body, sends part of it, then drops the connection."""

    def __init__(self, payload: bytes, headers: dict[str, str]) -> None:
        super().__init__(payload, media_type="application/json", headers=headers)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send(
            {
                "type": "http.response.body",
                "body": self.body[: len(self.body) // 2],
                "more_body": True,
            }
        )
        raise _Abort("simulated connection drop")


async def _stream(
    state: SimState, gen: Generation, include_usage: bool, fault: str
) -> AsyncIterator[bytes]:
    cfg = state.config
    async with state.slot() as queued_s:
        await _sleep(cfg, gen.prefill_s)
        sent = 0
        for i, chunk in enumerate(gen.chunks()):
            if i and cfg.itl_s and not cfg.instant:
                await asyncio.sleep(cfg.itl_s)
            if cfg.keepalive_comments and i == 1:
                yield b": keep-alive\n\n"
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            sent += 1
            if fault in ("midstream", "disconnect") and sent >= 3:
                raise _Abort("simulated mid-stream drop")
        yield b"data: " + orjson.dumps(gen.final_chunk()) + b"\n\n"
        if include_usage:
            yield b"data: " + orjson.dumps(gen.usage_chunk()) + b"\n\n"
        yield b"data: [DONE]\n\n"
        state.observe(gen, queued_s)
