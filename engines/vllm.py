"""Engine for a pool of self-hosted vLLM replicas (OpenAI-compatible HTTP).

Picks a replica (fewest in flight; replicas that just failed sit out a cool-down), retries
connection errors and 5xx on another replica before the first byte, and streams SSE
through with minimal parsing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp
import orjson

from engines.base import EngineRequest, EngineResponse
from engines.http import error_for_status, read_json_object, translate_errors
from engines.sse_stream import SSEStream
from engines.translate import normalize_response, vllm_body
from policies.catalog import VllmBackend
from policies.errors import UpstreamError, UpstreamUnavailable

_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@dataclass(slots=True)
class Replica:
    url: str
    in_flight: int = 0
    failures: int = 0
    down_until: float = 0.0

    def usable(self, now: float) -> bool:
        return now >= self.down_until

    def record_failure(self, now: float, cooldown_s: float, threshold: int) -> None:
        self.failures += 1
        if self.failures >= threshold:
            self.down_until = now + cooldown_s

    def record_success(self) -> None:
        self.failures = 0
        self.down_until = 0.0


class VllmEngine:
    """All replicas of one self-hosted backend."""

    def __init__(
        self,
        name: str,
        spec: VllmBackend,
        session: aiohttp.ClientSession,
        *,
        failure_threshold: int = 2,
        cooldown_s: float = 5.0,
    ) -> None:
        self.name = name
        self.spec = spec
        self._session = session
        self._replicas = [Replica(u.rstrip("/")) for u in spec.replicas]
        self._rr = 0
        self._threshold = failure_threshold
        self._cooldown = cooldown_s
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=spec.connect_timeout_s, sock_read=spec.timeout_s
        )

    # ---- replica choice ------------------------------------------------------------

    def _order(self) -> list[Replica]:
        now = time.monotonic()
        self._rr = (self._rr + 1) % len(self._replicas)
        rotated = self._replicas[self._rr :] + self._replicas[: self._rr]
        usable = sorted((r for r in rotated if r.usable(now)), key=lambda r: r.in_flight)
        resting = [r for r in rotated if not r.usable(now)]
        return usable + resting

    def available(self) -> bool:
        now = time.monotonic()
        return any(r.usable(now) for r in self._replicas)

    async def _open(
        self, req: EngineRequest, stream: bool
    ) -> tuple[aiohttp.ClientResponse, Replica]:
        body = vllm_body(req.body, req.option.mode, self.spec.served_model, req.endpoint, stream)
        data = orjson.dumps(body)
        headers = {"Content-Type": "application/json", "X-Request-Id": req.request_id}
        last: UpstreamError | None = None
        for replica in self._order():
            where = f"replica {replica.url} of {self.name}"
            replica.in_flight += 1
            try:
                async with translate_errors(where):
                    resp = await self._session.post(
                        replica.url + _PATHS[req.endpoint],
                        data=data,
                        headers=headers,
                        timeout=self._timeout,
                    )
                    if resp.status != 200:
                        payload = await resp.read()
                        resp.release()
                        raise error_for_status(resp.status, payload, resp.headers, where)
            except UpstreamError as exc:
                replica.in_flight -= 1
                if not exc.retryable:
                    raise
                replica.record_failure(time.monotonic(), self._cooldown, self._threshold)
                last = exc
                continue
            replica.record_success()
            return resp, replica
        raise last or UpstreamUnavailable(f"backend {self.name} has no replicas")

    # ---- Engine interface ------------------------------------------------------------

    async def complete(self, req: EngineRequest) -> EngineResponse:
        resp, replica = await self._open(req, stream=False)
        try:
            body = await read_json_object(resp, f"replica {replica.url} of {self.name}")
        finally:
            replica.in_flight -= 1
        usage = normalize_response(body)
        return EngineResponse(body=body, usage=usage, replica=replica.url)

    async def stream(self, req: EngineRequest) -> SSEStream:
        resp, replica = await self._open(req, stream=True)
        include = bool((req.body.get("stream_options") or {}).get("include_usage"))
        where = f"replica {replica.url} of {self.name}"

        def done() -> None:
            replica.in_flight -= 1

        return SSEStream(resp, replica.url, include, where, on_close=done)

    async def health(self) -> bool:
        return self.available()

    async def close(self) -> None:
        return None
