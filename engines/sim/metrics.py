"""Prometheus metrics under vLLM's names, in a registry of their own (one per simulator).

Names and meanings follow vLLM's V1 engine: prefix-cache queries and hits count tokens,
``vllm:prompt_tokens_total`` counts every prompt token (cached or not), and
``vllm:kv_cache_usage_perc`` is the share of the cache in use (0..1), and the info gauge
``vllm:cache_config_info`` (value 1) carries the cache size in its ``num_gpu_blocks`` and
``block_size`` labels. As in vLLM's V1 loggers every sample carries an ``engine`` label:
a data-parallel replica reports each engine separately (its own load, KV usage and
prefix cache). Gauges are set when scraped, so the request path only touches
counters and histograms.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (
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
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _EngineMetrics:
    """One engine's children of every family (label ``engine``, as vLLM's V1 loggers)."""

    def __init__(self, fams: dict[str, Any], model: str, engine: str) -> None:
        self.running = fams["running"].labels(model, engine)
        self.waiting = fams["waiting"].labels(model, engine)
        self.kv_usage = fams["kv_usage"].labels(model, engine)
        self.cache_queries = fams["cache_queries"].labels(model, engine)
        self.cache_hits = fams["cache_hits"].labels(model, engine)
        self.prompt_tokens = fams["prompt_tokens"].labels(model, engine)
        self.generation_tokens = fams["generation_tokens"].labels(model, engine)
        self.ttft = fams["ttft"].labels(model, engine)
        self.e2e = fams["e2e"].labels(model, engine)
        self.queue = fams["queue"].labels(model, engine)


class VllmMetrics:
    """vLLM's metrics for ``engines`` data-parallel engines, one sample per engine each."""

    def __init__(
        self, model_name: str, *, block_size: int = 256, num_gpu_blocks: int = 0, engines: int = 1
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, label = self.registry, ("model_name", "engine")

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, label, registry=r)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, label, registry=r)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, label, buckets=_LATENCY_BUCKETS, registry=r)

        fams: dict[str, Any] = {
            "running": gauge("vllm:num_requests_running", "Requests in model execution."),
            "waiting": gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled."),
            "kv_usage": gauge("vllm:kv_cache_usage_perc", "KV-cache usage; 1 means 100 percent."),
            "cache_queries": counter(
                "vllm:prefix_cache_queries", "Prefix-cache queries, in tokens."
            ),
            "cache_hits": counter("vllm:prefix_cache_hits", "Prefix-cache hits, in tokens."),
            "prompt_tokens": counter("vllm:prompt_tokens", "Prompt tokens processed."),
            "generation_tokens": counter("vllm:generation_tokens", "Generation tokens produced."),
            "ttft": histogram("vllm:time_to_first_token_seconds", "Time to first token."),
            "e2e": histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency."),
            "queue": histogram("vllm:request_queue_time_seconds", "Time spent waiting."),
        }
        self.engines = [_EngineMetrics(fams, model_name, str(i)) for i in range(engines)]
        self._success = Counter(
            "vllm:request_success",
            "Finished requests by finish reason.",
            ("model_name", "engine", "finished_reason"),
            registry=r,
        )
        self._model = model_name
        info = Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig.",
            ("block_size", "num_gpu_blocks", "enable_prefix_caching", "engine"),
            registry=r,
        )
        for i in range(engines):
            info.labels(str(block_size), str(num_gpu_blocks), "True", str(i)).set(1)

    def finished(
        self,
        *,
        engine: int = 0,
        prompt_tokens: int,
        cached_tokens: int,
        output_tokens: int,
        finish_reason: str,
        queued_s: float,
        ttft_s: float,
        e2e_s: float,
    ) -> None:
        e = self.engines[engine]
        e.cache_queries.inc(prompt_tokens)
        e.cache_hits.inc(cached_tokens)
        e.prompt_tokens.inc(prompt_tokens)
        e.generation_tokens.inc(output_tokens)
        e.queue.observe(queued_s)
        e.ttft.observe(ttft_s)
        e.e2e.observe(e2e_s)
        self._success.labels(self._model, str(engine), finish_reason).inc()

    def exposition(self, loads: list[tuple[int, int, float]]) -> bytes:
        """The text exposition; ``loads``: (running, waiting, kv usage) of each engine."""
        for e, (running, waiting, kv_usage) in zip(self.engines, loads, strict=True):
            e.running.set(running)
            e.waiting.set(waiting)
            e.kv_usage.set(kv_usage)
        return generate_latest(self.registry)
