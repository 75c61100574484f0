"""Prometheus metrics under vLLM's names, in a registry of their own (one per simulator).

Names and meanings follow vLLM's V1 engine: prefix-cache queries and hits count tokens,
``vllm:prompt_tokens_total`` counts every prompt token (cached or not), and
``vllm:kv_cache_usage_perc`` is the share of the cache in use (0..1), and the info gauge
``vllm:cache_config_info`` (value 1) carries the cache size in its ``num_gpu_blocks`` and
``block_size`` labels. Gauges are set when scraped, so the request path only touches
counters and histograms.
"""

from __future__ import annotations

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


class VllmMetrics:
    def __init__(self, model_name: str, *, block_size: int = 256, num_gpu_blocks: int = 0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, label, m = self.registry, ("model_name",), model_name

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, label, registry=r).labels(m)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, label, registry=r).labels(m)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, label, buckets=_LATENCY_BUCKETS, registry=r).labels(m)

        self.running = gauge("vllm:num_requests_running", "Requests in model execution.")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage; 1 means 100 percent.")
        self.cache_queries = counter(
            "vllm:prefix_cache_queries", "Prefix-cache queries, in tokens."
        )
        self.cache_hits = counter("vllm:prefix_cache_hits", "Prefix-cache hits, in tokens.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Generation tokens produced.")
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to first token.")
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.")
        self.queue = histogram("vllm:request_queue_time_seconds", "Time spent waiting.")
        self._success = Counter(
            "vllm:request_success",
            "Finished requests by finish reason.",
            ("model_name", "finished_reason"),
            registry=r,
        )
        self._model = model_name
        Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig.",
            ("block_size", "num_gpu_blocks", "enable_prefix_caching"),
            registry=r,
        ).labels(str(block_size), str(num_gpu_blocks), "True").set(1)

    def finished(
        self,
        *,
        prompt_tokens: int,
        cached_tokens: int,
        output_tokens: int,
        finish_reason: str,
        queued_s: float,
        ttft_s: float,
        e2e_s: float,
    ) -> None:
        self.cache_queries.inc(prompt_tokens)
        self.cache_hits.inc(cached_tokens)
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(output_tokens)
        self.queue.observe(queued_s)
        self.ttft.observe(ttft_s)
        self.e2e.observe(e2e_s)
        self._success.labels(self._model, finish_reason).inc()

    def exposition(self, *, running: int, waiting: int, kv_usage: float) -> bytes:
        self.running.set(running)
        self.waiting.set(waiting)
        self.kv_usage.set(kv_usage)
        return generate_latest(self.registry)
