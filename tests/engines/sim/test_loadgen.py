"""The load generator against a real simulator (small runs: correctness, not speed)."""

from __future__ import annotations

import asyncio

from engines.sim.loadgen import SIMPLE_CHAT, run_load
from engines.sim.runner import SimServer


def test_counts_requests_and_latencies(vllm: SimServer) -> None:
    url = vllm.base_url + "/v1/chat/completions"
    result = asyncio.run(run_load(url, SIMPLE_CHAT, requests=60, concurrency=4, warmup=10))
    assert result.requests == 60 and result.errors == 0
    assert result.rps > 0 and 0 < result.p50_ms <= result.p99_ms


def test_counts_errors(vllm: SimServer) -> None:
    url = vllm.base_url + "/v1/chat/completions"
    result = asyncio.run(
        run_load(url, SIMPLE_CHAT, requests=20, concurrency=2, headers={"x-sim-fail": "503"})
    )
    assert result.requests == 20 and result.errors == 20
