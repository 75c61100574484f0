"""The latency model (queue, prefill per uncached token, inter-token latency) and the
zero-latency mode, which must not sleep at all."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from engines.sim.config import SimConfig
from engines.sim.runner import SimServer

from .conftest import AUTH, FLASH, MSG, chat_body, chat_path, post


@pytest.fixture
def sim_sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Every ``asyncio.sleep`` called from simulator code, with its delay."""
    calls: list[float] = []
    real_sleep = asyncio.sleep

    def spy(delay: float, *args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("engines.sim"):
            calls.append(delay)
        return real_sleep(delay, *args, **kwargs)

    monkeypatch.setattr(asyncio, "sleep", spy)
    yield calls


def _exercise(server: SimServer) -> None:
    path = chat_path(server)
    completions = "/v1/completions" if server.config.mode == "vllm" else "/beta/completions"
    for stream in (False, True):
        assert post(server, path, chat_body(server, stream=stream), AUTH).status_code == 200
        fim = {"model": chat_body(server)["model"], "prompt": "a", "suffix": "b", "stream": stream}
        assert post(server, completions, fim, AUTH).status_code == 200


@pytest.mark.parametrize("mode", ["vllm", "hosted"])
def test_zero_latency_mode_never_sleeps(
    request: pytest.FixtureRequest, sim_sleeps: list[float], mode: str
) -> None:
    server: SimServer = request.getfixturevalue(mode)
    _exercise(server)
    assert sim_sleeps == []


def test_latency_mode_does_sleep(sim_sleeps: list[float]) -> None:
    with SimServer(SimConfig.preset("flash", itl_s=0.001, ttft_base_s=0.001)) as server:
        _exercise(server)
    assert len(sim_sleeps) > 10 and all(d > 0 for d in sim_sleeps)


def test_non_stream_takes_ttft_plus_itl_per_token() -> None:
    cfg = SimConfig.preset("flash", ttft_base_s=0.1, itl_s=0.01, prefill_s_per_token=0.0)
    with SimServer(cfg) as server:
        start = time.perf_counter()
        r = post(server, "/v1/chat/completions", chat_body(server), {"x-sim-output-tokens": "11"})
        elapsed = time.perf_counter() - start
    assert r.json()["usage"]["completion_tokens"] == 11
    assert elapsed >= 0.1 + 10 * 0.01


def test_stream_paces_tokens() -> None:
    cfg = SimConfig.preset("flash", ttft_base_s=0.1, itl_s=0.02, prefill_s_per_token=0.0)
    body = {"model": FLASH, "messages": MSG, "stream": True}
    with SimServer(cfg) as server:
        start = time.perf_counter()
        arrivals: list[float] = []
        headers = {"x-sim-output-tokens": "6"}
        with httpx.stream(
            "POST", server.base_url + "/v1/chat/completions", json=body, headers=headers
        ) as r:
            for line in r.iter_lines():
                if '"content":" ' in line:  # a token (the role chunk has "content":"")
                    arrivals.append(time.perf_counter() - start)
    assert len(arrivals) == 6
    assert arrivals[0] >= 0.1  # time to first token
    assert arrivals[-1] - arrivals[0] >= 5 * 0.02 * 0.9  # paced, allowing for timer slack


def test_prefill_costs_only_uncached_tokens() -> None:
    cfg = SimConfig.preset("flash", ttft_base_s=0.0, itl_s=0.0, prefill_s_per_token=0.0002)
    long = [{"role": "user", "content": "p" * 8000}]  # 2000 tokens: 0.4 s uncached
    with SimServer(cfg) as server:
        times = []
        for _ in range(2):
            start = time.perf_counter()
            post(server, "/v1/chat/completions", {"model": FLASH, "messages": long})
            times.append(time.perf_counter() - start)
    assert times[0] >= 0.4 and times[1] < times[0] - 0.25  # 1792 tokens hit the cache


def test_requests_beyond_max_num_seqs_wait_in_the_queue() -> None:
    # Long enough that both requests are in flight together even on a busy machine; the
    # test waits for that state instead of sleeping a fixed time.
    ttft = 1.5
    cfg = SimConfig.preset(
        "flash", max_num_seqs=1, ttft_base_s=ttft, itl_s=0.0, prefill_s_per_token=0.0
    )
    with SimServer(cfg) as server:
        done: list[float] = []
        start = time.perf_counter()

        def call() -> None:
            post(server, "/v1/chat/completions", chat_body(server))
            done.append(time.perf_counter() - start)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + ttft
        while True:
            during = httpx.get(server.base_url + "/sim/stats").json()
            if during["in_flight"] == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        metrics = httpx.get(server.base_url + "/metrics").text
        for t in threads:
            t.join()
        after = httpx.get(server.base_url + "/metrics").text
    assert (during["running"], during["waiting"], during["in_flight"]) == (1, 1, 2)
    assert f'vllm:num_requests_waiting{{engine="0",model_name="{FLASH}"}} 1.0' in metrics
    assert sorted(done)[1] >= 2 * ttft  # the second waited for the first
    queue_sum = next(
        float(line.split()[-1])
        for line in after.splitlines()
        if line.startswith("vllm:request_queue_time_seconds_sum")
    )
    assert queue_sum > 0  # it queued; how long depends on when it arrived


def test_several_simulators_in_one_process() -> None:
    servers = [
        SimServer(SimConfig.preset("flash", replica_id=f"p{i}").zero_latency()) for i in range(3)
    ]
    try:
        for s in servers:
            s.start()
        assert len({s.base_url for s in servers}) == 3
        for i, s in enumerate(servers):
            r = post(s, "/v1/chat/completions", chat_body(s))
            assert (
                r.headers["x-sim-replica"] == f"p{i}"
                and f"@p{i}]" in r.json()["choices"][0]["message"]["content"]
            )
    finally:
        for s in servers:
            s.stop()


def test_a_client_leaving_a_stream_frees_its_slot() -> None:
    cfg = SimConfig.preset("flash", itl_s=0.05, ttft_base_s=0.0)
    body = {"model": FLASH, "messages": MSG, "stream": True}
    with SimServer(cfg) as server:
        with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            for _ in range(4):
                next(lines)
            assert httpx.get(server.base_url + "/sim/stats").json()["running"] == 1
        deadline = time.monotonic() + 2
        while (
            httpx.get(server.base_url + "/sim/stats").json()["running"]
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        stats = httpx.get(server.base_url + "/sim/stats").json()
    assert stats["running"] == 0 and stats["completed"] == 0
