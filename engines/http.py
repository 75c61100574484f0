"""Shared pooled HTTP client for OpenAI-compatible upstreams, and its error translation.

aiohttp's exceptions and upstream status codes become tiergate errors here and nowhere
else.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from policies.errors import (
    UpstreamBadRequest,
    UpstreamConnectionLost,
    UpstreamError,
    UpstreamInsufficientBalance,
    UpstreamRateLimited,
    UpstreamRequestFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)

#: How long an idle upstream connection is kept for reuse: under vLLM's (uvicorn's) 5 s
#: keep-alive, so the gateway drops a connection before the server closes it.
KEEPALIVE_S = 4.0


def new_session(
    *, limit: int = 1024, keepalive_s: float = KEEPALIVE_S, force_close: bool = False
) -> aiohttp.ClientSession:
    """The pooled client session. ``force_close``: a new connection for every request."""
    connector = (
        aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=30, force_close=True)
        if force_close
        else aiohttp.TCPConnector(
            limit=limit, limit_per_host=0, ttl_dns_cache=30, keepalive_timeout=keepalive_s
        )
    )
    return aiohttp.ClientSession(
        connector=connector,
        json_serialize=lambda o: orjson.dumps(o).decode(),
        skip_auto_headers=("User-Agent",),
        auto_decompress=True,
    )


def _retry_after(headers: Any) -> float | None:
    raw = headers.get("Retry-After") if headers is not None else None
    if raw is None:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        return None


def _message_from(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if data.get("detail"):
            return str(data["detail"])
    return body[:300].decode("utf-8", "replace").strip()


def _has_error_body(body: bytes) -> bool:
    """Whether ``body`` is an OpenAI-shaped error object with a message (vLLM's
    ``{"error": {...}}``, or ``{"object": "error", ...}`` from older releases)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(data, dict):
        return False
    err = data.get("error") if "error" in data else data if data.get("object") == "error" else None
    return isinstance(err, dict) and bool(err.get("message"))


def error_for_status(
    status: int, body: bytes, headers: Any, where: str, *, request_faults: bool = False
) -> UpstreamError:
    """The error for an upstream's non-200 answer.

    ``request_faults`` (vLLM replicas): a 400 or 422, a 501, or a 500 that carries an
    error body is the request's own failure (vLLM answers so for input it refuses, and
    for an assertion or a ``NotImplementedError`` raised while encoding the request);
    another backend, with another encoder and limits, may still take it. A 500 without
    an error body (the engine died) is the replica's.
    """
    msg = f"{where} answered {status}: {_message_from(body)}"
    retry_after = _retry_after(headers)
    if request_faults and (status in (400, 422, 501) or (status == 500 and _has_error_body(body))):
        return UpstreamRequestFailed(
            f"{msg}. The replica refused this request itself (not a replica failure); "
            "check the messages and parameters"
        )
    if status == 402:
        return UpstreamInsufficientBalance(
            f"{msg}. The hosted account balance is exhausted; top it up (not retried)."
        )
    if status in (401, 403):
        return UpstreamError(
            f"{msg}. The backend refused the gateway's own credentials; the gateway's "
            "operator must check its API key for this backend"
        )
    if status == 429:
        return UpstreamRateLimited(msg, retry_after=retry_after or 1.0)
    if status in (400, 404, 413, 422):
        return UpstreamBadRequest(msg)
    if status in (503, 529):
        return UpstreamUnavailable(msg, retry_after=retry_after)
    if status == 504:
        return UpstreamTimeout(msg)
    return UpstreamError(msg)


def _detail(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@asynccontextmanager
async def translate_errors(where: str) -> AsyncIterator[None]:
    """aiohttp's exceptions as tiergate errors. The client's message says what happened in
    words; the library's exception (class, text, addresses) goes in ``detail``, for the log.
    """
    try:
        yield
    except UpstreamError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(f"{where} did not answer in time", detail=_detail(exc)) from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnavailable(f"cannot connect to {where}", detail=_detail(exc)) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise UpstreamConnectionLost(
            f"{where} closed the connection before answering", detail=_detail(exc)
        ) from exc
    except aiohttp.ClientOSError as exc:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            raise UpstreamConnectionLost(
                f"{where} reset the connection", detail=_detail(exc)
            ) from exc
        raise UpstreamUnavailable(f"{where} failed: connection error", detail=_detail(exc)) from exc
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamError(
            f"{where} broke off its response mid-way: connection closed", detail=_detail(exc)
        ) from exc
    except (aiohttp.ClientError, ConnectionError) as exc:
        raise UpstreamUnavailable(f"{where} failed: connection error", detail=_detail(exc)) from exc


async def read_json_object(resp: aiohttp.ClientResponse, where: str) -> dict[str, Any]:
    """Read a whole JSON object body and release the connection."""
    try:
        async with translate_errors(where):
            raw = await resp.read()
    finally:
        resp.release()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"{where} returned invalid JSON") from exc
    if not isinstance(body, dict):
        raise UpstreamError(f"{where} returned a non-object body")
    return body
