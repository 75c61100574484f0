"""Engine for the hosted DeepSeek API, spoken directly over pooled HTTP.

The hosted API is OpenAI-compatible, so this engine shares the SSE path of the vLLM pool:
the stream reaches the client byte-for-byte in DeepSeek's own shape (keep-alive comments,
``choices: []`` usage chunk) and usage is read once, at the end. Before the first byte,
429/503 and connection failures are retried with exponential backoff and jitter
(``Retry-After`` honoured up to a cap); 402 (balance) and 4xx are never retried.
Under overload the API answers 200 and then sends keep-alive comments (blank lines when
not streaming) until inference starts: a stream must reach its first token within
``first_token_timeout_s`` (comments do not count), a non-stream answer must be complete
within ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import os
import random

import aiohttp
import orjson

from engines.base import EngineRequest, EngineResponse
from engines.http import error_for_status, read_json_object, translate_errors
from engines.sse_stream import SSEStream
from engines.translate import hosted_body, normalize_response
from policies.catalog import HostedBackend
from policies.errors import UpstreamError, UpstreamNotConfigured

_MAX_BACKOFF_S = 8.0


def _is_prefix_completion(body: dict[str, object]) -> bool:
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        last = messages[-1]
        return isinstance(last, dict) and last.get("prefix") is True
    return False


class DeepSeekEngine:
    def __init__(
        self,
        name: str,
        spec: HostedBackend,
        session: aiohttp.ClientSession,
        *,
        api_key: str | None = None,
        backoff_base_s: float = 0.25,
    ) -> None:
        self.name = name
        self.spec = spec
        self._session = session
        self._base = spec.base_url.rstrip("/")
        self._api_key = api_key if api_key is not None else os.environ.get(spec.api_key_env, "")
        self._backoff = backoff_base_s
        self._timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=spec.timeout_s)
        # Non-stream: the API sends blank lines while a request is queued, and each would
        # restart a read timeout; the whole answer must come within timeout_s.
        self._total_timeout = aiohttp.ClientTimeout(total=spec.timeout_s, connect=10.0)

    def _url(self, req: EngineRequest) -> str:
        if req.endpoint == "completions":
            return self._base + "/beta/completions"
        if _is_prefix_completion(req.body):
            return self._base + "/beta/chat/completions"
        return self._base + "/chat/completions"

    async def _open(self, req: EngineRequest, stream: bool) -> aiohttp.ClientResponse:
        if not self._api_key:
            raise UpstreamNotConfigured(
                f"backend '{self.name}' has no API key: the gateway's operator must set the "
                f"{self.spec.api_key_env} environment variable (or secret)"
            )
        model = self.spec.models[req.option.tier].name
        data = orjson.dumps(hosted_body(req.body, req.option.mode, model, req.endpoint, stream))
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self._api_key}",
            "X-Request-Id": req.request_id,
        }
        url = self._url(req)
        where = f"hosted backend {self.name}"
        attempt = 0
        while True:
            try:
                async with translate_errors(where):
                    resp = await self._session.post(
                        url,
                        data=data,
                        headers=headers,
                        timeout=self._timeout if stream else self._total_timeout,
                    )
                    if resp.status == 200:
                        return resp
                    payload = await resp.read()
                    resp.release()
                    raise error_for_status(resp.status, payload, resp.headers, where)
            except UpstreamError as exc:
                if not exc.retryable or attempt >= self.spec.max_retries:
                    raise
                # Exponential backoff with jitter, but never sooner than Retry-After asks.
                delay = min(self._backoff * (2**attempt), _MAX_BACKOFF_S)
                delay *= 0.5 + random.random() / 2
                if exc.retry_after is not None:
                    delay = min(max(delay, exc.retry_after), _MAX_BACKOFF_S)
                attempt += 1
                await asyncio.sleep(delay)

    async def complete(self, req: EngineRequest) -> EngineResponse:
        resp = await self._open(req, stream=False)
        body = await read_json_object(resp, f"hosted backend {self.name}")
        usage = normalize_response(body)
        return EngineResponse(body=body, usage=usage, replica=None)

    async def stream(self, req: EngineRequest) -> SSEStream:
        resp = await self._open(req, stream=True)
        include = bool((req.body.get("stream_options") or {}).get("include_usage"))
        stream = SSEStream(resp, None, include, f"hosted backend {self.name}")
        await stream.wait_first_token(self.spec.first_token_timeout_s)
        return stream

    async def health(self) -> bool:
        return bool(self._api_key)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
