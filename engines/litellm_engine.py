"""Engine for hosted providers through litellm.

Serves the catalog's pass-through models (any OpenAI, Anthropic or other provider model a
team also uses) and, when a DeepSeek backend sets ``client: litellm``, the hosted DeepSeek
API. litellm is imported here and nowhere else, with its bundled price map
(``LITELLM_LOCAL_MODEL_COST_MAP``) so nothing is fetched at start-up. Its first import takes
seconds of CPU, so it is done by :meth:`LitellmEngine.start`, in a worker thread, when the
gateway starts with a catalog that uses litellm (the server listens only after engines have
started; ``health`` is false until then): a first request imported it on the event loop,
and every request of the process, ``/healthz`` included, waited seconds for it, deadlines
not counting. A process whose catalog uses no litellm never imports it. Its exceptions are
translated to tiergate errors in ``_translate`` only.

The hosted API under overload answers 200 and then sends keep-alive comments (blank lines
when not streaming) until inference starts; litellm drops them, and each one restarts its
read timeout. As with the direct client (``engines.deepseek``), a hosted stream must
therefore reach its first chunk within the backend's ``first_token_timeout_s``, and a
non-stream answer must be complete within its ``timeout_s``; otherwise the request fails
with ``UpstreamTimeout`` before anything reached the client (the route plan fails over,
or the client gets a 504).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from engines.base import EngineRequest, EngineResponse, StreamOutcome
from engines.http import error_for_status
from engines.sse_stream import no_first_token
from engines.translate import count_generated, hosted_body
from policies.catalog import HostedBackend, PassthroughModel
from policies.errors import TiergateError, UpstreamError, UpstreamTimeout
from policies.usage import Usage, usage_from_openai

_DROP = ("provider_specific_fields", "citations", "function_call", "audio")


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    litellm.drop_params = True
    return litellm


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if k not in _DROP}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _translate(exc: Exception, where: str) -> TiergateError:
    if isinstance(exc, TiergateError):
        return exc
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "Timeout":
        return UpstreamTimeout(f"{where} did not answer in time")
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", None) or exc)
    if isinstance(status, int):
        headers = getattr(getattr(exc, "response", None), "headers", None)
        return error_for_status(
            status, orjson.dumps({"error": {"message": message}}), headers, where
        )
    return UpstreamError(
        f"{where} failed: no answer (connection or protocol error)",
        detail=f"{type(exc).__name__}: {message}",
    )


class LitellmEngine:
    """One pass-through model, or a DeepSeek backend with ``client: litellm``."""

    def __init__(
        self,
        name: str,
        *,
        passthrough: PassthroughModel | None = None,
        hosted: HostedBackend | None = None,
    ) -> None:
        self.name = name
        self._passthrough = passthrough
        self._hosted = hosted
        self._where = f"backend {name} (litellm)"
        self._loaded = False  # litellm imported (``start``)

    def _call_args(self, req: EngineRequest, stream: bool) -> dict[str, Any]:
        if self._hosted is not None:
            model = self._hosted.models[req.option.tier].name
            body = hosted_body(req.body, req.option.mode, model, req.endpoint, stream)
            thinking = body.pop("thinking", None)
            effort = body.pop("reasoning_effort", None)
            extra = {"thinking": thinking, **({"reasoning_effort": effort} if effort else {})}
            args: dict[str, Any] = {
                **body,
                "model": f"deepseek/{model}",
                "api_base": self._hosted.base_url,
                "api_key": os.environ.get(self._hosted.api_key_env, ""),
                "extra_body": extra,
                "timeout": self._hosted.timeout_s,
                "num_retries": self._hosted.max_retries,
            }
            return args
        assert self._passthrough is not None
        pt = self._passthrough
        args = {k: v for k, v in req.body.items() if k not in ("thinking", "chat_template_kwargs")}
        args["model"] = pt.litellm_model
        if pt.api_base:
            args["api_base"] = pt.api_base
        if pt.api_key_env:
            args["api_key"] = os.environ.get(pt.api_key_env, "")
        if stream:
            args["stream"] = True
            args["stream_options"] = {"include_usage": True}
        else:
            args.pop("stream", None)
            args.pop("stream_options", None)
        args["num_retries"] = 0
        return args

    def _provider_cost(self, response: Any) -> float | None:
        try:
            return float(_litellm().completion_cost(completion_response=response))
        except Exception:  # litellm has no price for this model: the catalog must say
            return None

    async def complete(self, req: EngineRequest) -> EngineResponse:
        litellm = _litellm()
        # litellm's own timeout is restarted by every blank line of a queued answer
        total = self._hosted.timeout_s if self._hosted is not None else None
        try:
            async with asyncio.timeout(total) as deadline:
                resp = await litellm.acompletion(**self._call_args(req, stream=False))
        except TimeoutError as exc:
            if deadline.expired():
                raise UpstreamTimeout(f"{self._where} did not answer within {total:g} s") from None
            raise _translate(exc, self._where) from exc
        except Exception as exc:
            raise _translate(exc, self._where) from exc
        body = _clean(resp.model_dump())
        usage = usage_from_openai(body.get("usage")) or Usage()
        body["usage"] = usage.to_deepseek()
        out = EngineResponse(body=body, usage=usage, replica=None)
        out.provider_cost_usd = self._provider_cost(resp)
        return out

    async def stream(self, req: EngineRequest) -> LitellmStream:
        litellm = _litellm()
        try:
            it = await litellm.acompletion(**self._call_args(req, stream=True))
        except Exception as exc:
            raise _translate(exc, self._where) from exc
        include = bool((req.body.get("stream_options") or {}).get("include_usage"))
        stream = LitellmStream(it, include, self._where)
        if self._hosted is not None:
            await stream.wait_first_token(self._hosted.first_token_timeout_s)
        return stream

    async def health(self) -> bool:
        return self._loaded

    async def start(self) -> None:
        await asyncio.to_thread(_litellm)  # off the event loop, before the server listens
        self._loaded = True

    async def close(self) -> None:
        return None


class LitellmStream:
    def __init__(self, it: Any, include_usage: bool, where: str) -> None:
        self.replica: str | None = None
        self.outcome = StreamOutcome()
        self._it = it
        self._include = include_usage
        self._where = where
        self._created = int(time.time())
        self._first: Any = None  # the chunk read while waiting for the first token

    async def wait_first_token(self, timeout_s: float | None) -> None:
        """Read the first chunk within ``timeout_s`` (None: no deadline), as
        ``SSEStream.wait_first_token`` does for the direct client: keep-alive comments
        (which litellm drops) are no token and do not extend the deadline. On any failure
        the stream is closed and the error raised."""
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                self._first = await self._it.__anext__()
        except StopAsyncIteration:
            await self.aclose()
            raise UpstreamError(f"{self._where} ended the stream before any event") from None
        except TimeoutError as exc:
            await self.aclose()
            if deadline.expired():
                raise no_first_token(self._where, timeout_s) from None
            raise _translate(exc, self._where) from exc
        except Exception as exc:
            await self.aclose()
            raise _translate(exc, self._where) from exc
        except BaseException:
            await self.aclose()
            raise

    def _events(self, chunk: Any) -> list[bytes]:
        data = _clean(chunk.model_dump(exclude_none=True))
        usage = usage_from_openai(data.pop("usage", None))
        for choice in data.get("choices") or ():
            if choice.get("finish_reason"):
                self.outcome.finish_reason = str(choice["finish_reason"])
        if usage is not None:
            self.outcome.usage = usage
            if not self._include:
                return []
            tail = {**data, "choices": [], "usage": usage.to_deepseek()}
            return [b"data: " + orjson.dumps(tail) + b"\n\n"]
        payload = orjson.dumps(data)
        count_generated(self.outcome, payload)
        return [b"data: " + payload + b"\n\n"]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            if self._first is not None:
                first, self._first = self._first, None
                for event in self._events(first):
                    yield event
            async for chunk in self._it:
                for event in self._events(chunk):
                    yield event
        except Exception as exc:
            raise _translate(exc, self._where) from exc
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        close = getattr(self._it, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception:  # closing a finished litellm stream may raise; nothing to free
                return
