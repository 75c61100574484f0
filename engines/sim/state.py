"""Mutable simulator state: prefix cache, scheduler slots, vLLM-named metrics, counters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from engines.sim.config import SimConfig
from engines.sim.prefix_cache import PrefixCache

if TYPE_CHECKING:
    from engines.sim.behaviour import Generation

_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1,
    2.5,
    5,
    10,
    20,
    40,
    80,
)


class SimState:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.healthy = True
        self.last_user_id: str | None = None
        self.fail_rate = config.fail_rate
        self.fail_status = config.fail_status
        self.fail_mode = config.fail_mode
        self.cache = PrefixCache(config.cache_blocks)
        self.running = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(config.max_num_seqs)
        self.stats: dict[str, int] = {
            "requests": 0,
            "prompt_tokens": 0,
            "cached_tokens": 0,
            "generation_tokens": 0,
            "faults": 0,
        }
        self.registry = CollectorRegistry(auto_describe=True)
        label = ("model_name",)
        r = self.registry
        self._running = Gauge("vllm:num_requests_running", "Requests running.", label, registry=r)
        self._waiting = Gauge("vllm:num_requests_waiting", "Requests waiting.", label, registry=r)
        self._kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = full.", label, registry=r)
        self._pq = Counter(
            "vllm:prefix_cache_queries", "Prefix-cache queried tokens.", label, registry=r
        )
        self._ph = Counter("vllm:prefix_cache_hits", "Prefix-cache hit tokens.", label, registry=r)
        self._prompt = Counter("vllm:prompt_tokens", "Prefill tokens processed.", label, registry=r)
        self._gen = Counter("vllm:generation_tokens", "Generation tokens.", label, registry=r)
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds", "TTFT.", label, buckets=_BUCKETS, registry=r
        )
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "E2E latency.", label, buckets=_BUCKETS, registry=r
        )
        self._queue = Histogram(
            "vllm:request_queue_time_seconds", "Queue time.", label, buckets=_BUCKETS, registry=r
        )
        self._model = config.model

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Wait for a running slot (max_num_seqs); yields the time spent queued."""
        start = time.perf_counter()
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield time.perf_counter() - start
        finally:
            self.running -= 1
            self._slots.release()

    def observe(self, gen: Generation, queued_s: float) -> None:
        m = self._model
        self.stats["requests"] += 1
        self.stats["prompt_tokens"] += gen.prompt_tokens
        self.stats["cached_tokens"] += gen.cached_tokens
        self.stats["generation_tokens"] += gen.output_tokens
        self._pq.labels(m).inc(gen.prompt_tokens)
        self._ph.labels(m).inc(gen.cached_tokens)
        self._prompt.labels(m).inc(gen.prompt_tokens - gen.cached_tokens)
        self._gen.labels(m).inc(gen.output_tokens)
        self._ttft.labels(m).observe(queued_s + gen.prefill_s)
        self._e2e.labels(m).observe(time.perf_counter() - gen.started)
        self._queue.labels(m).observe(queued_s)

    def refresh_gauges(self) -> None:
        m = self._model
        self._running.labels(m).set(self.running)
        self._waiting.labels(m).set(self.waiting)
        self._kv.labels(m).set(self.cache.usage())

    def control(self, data: dict[str, Any]) -> None:
        if "healthy" in data:
            self.healthy = bool(data["healthy"])
        if "fail_rate" in data:
            self.fail_rate = float(data["fail_rate"])
        if "fail_status" in data:
            self.fail_status = int(data["fail_status"])
        if "fail_mode" in data:
            self.fail_mode = str(data["fail_mode"] or "")
        if isinstance(data.get("models"), list):
            self.config = replace(self.config, models=tuple(str(m) for m in data["models"]))
        if data.get("reset_cache"):
            self.cache.clear()
        latency = {
            k: float(data[k]) for k in ("ttft_base_s", "prefill_s_per_token", "itl_s") if k in data
        }
        if latency:
            self.config = replace(self.config, **latency)  # type: ignore[arg-type]

    def snapshot(self) -> dict[str, Any]:
        return {
            **self.stats,
            "running": self.running,
            "waiting": self.waiting,
            "cache_blocks": len(self.cache),
            "healthy": self.healthy,
            "fail_rate": self.fail_rate,
            "replica_id": self.config.replica_id,
            "last_user_id": self.last_user_id,
        }
