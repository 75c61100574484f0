"""The simulator's harder behaviours, each as the real server shows it (docs/upstreams.md)."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from engines.sim.config import SimConfig
from engines.sim.runner import SimServer

from .conftest import AUTH, FLASH, HOSTED_MODEL, MSG, post, sse_events


def started(preset: str, **cfg: Any) -> SimServer:
    return SimServer(SimConfig.preset(preset, **cfg).zero_latency()).start()


@pytest.fixture
def servers() -> Iterator[list[SimServer]]:
    made: list[SimServer] = []
    yield made
    for s in made:
        s.stop()


def test_v4_encoder_refusals(servers: list[SimServer]) -> None:
    sim = started("flash")
    servers.append(sim)
    r = post(sim, "/v1/chat/completions", {"messages": [{"role": "function", "content": "x"}]})
    assert r.status_code == 501 and r.json()["error"]["type"] == "NotImplementedError"
    r = post(sim, "/v1/chat/completions", {"messages": [{"role": "developer", "content": ""}]})
    assert r.status_code == 500 and "AssertionError" in r.json()["error"]["message"]
    sim.state.control({"strict_encoder": False})
    r = post(sim, "/v1/chat/completions", {"messages": [{"role": "function", "content": "x"}]})
    assert r.status_code == 200


def test_idle_close_drops_a_request_on_a_stale_connection(servers: list[SimServer]) -> None:
    sim = started("flash", idle_close_s=0.3)
    servers.append(sim)
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
    body = orjson.dumps({"messages": MSG})
    headers = {"Content-Type": "application/json"}
    for _ in range(2):  # reused at once: fine
        conn.request("POST", "/v1/chat/completions", body, headers)
        assert conn.getresponse().read()
    time.sleep(0.5)
    conn.request("POST", "/v1/chat/completions", body, headers)
    with pytest.raises(http.client.RemoteDisconnected):
        conn.getresponse()  # closed unanswered
    conn.close()
    assert sim.state.stats["idle_closes"] == 1


def test_queued_hosted_stream_sends_comments_then_answers(servers: list[SimServer]) -> None:
    sim = started("hosted", queue_s=0.3, keepalive_every_s=0.05)
    servers.append(sim)
    body = {"model": HOSTED_MODEL, "messages": MSG, "stream": True}
    start = time.monotonic()
    with httpx.stream("POST", sim.base_url + "/chat/completions", json=body, headers=AUTH) as r:
        assert r.status_code == 200  # at once
        lines = [line for line in r.iter_lines() if line]
    assert time.monotonic() - start >= 0.3
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert first_data >= 5 and all(line == ": keep-alive" for line in lines[:first_data])
    assert lines[-1] == "data: [DONE]"


def test_queued_hosted_non_stream_sends_blank_lines_then_the_body(
    servers: list[SimServer],
) -> None:
    sim = started("hosted", queue_s=0.2, keepalive_every_s=0.05)
    servers.append(sim)
    r = post(sim, "/chat/completions", {"model": HOSTED_MODEL, "messages": MSG}, AUTH)
    assert r.status_code == 200 and r.content.startswith(b"\n\n\n")
    assert orjson.loads(r.content)["choices"][0]["message"]["content"]


def test_a_request_still_queued_at_the_close_is_dropped(servers: list[SimServer]) -> None:
    sim = started("hosted", queue_s=5, queue_close_s=0.2, keepalive_every_s=0.05)
    servers.append(sim)
    body = {"model": HOSTED_MODEL, "messages": MSG, "stream": True}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", sim.base_url + "/chat/completions", json=body, headers=AUTH) as r,
    ):
        lines = list(r.iter_lines())
        assert not any(line.startswith("data:") for line in lines)


def test_hosted_concurrency_limit_is_a_429(servers: list[SimServer]) -> None:
    sim = SimServer(SimConfig.preset("hosted", concurrency_limit=1, itl_s=0.05)).start()
    servers.append(sim)
    body = {"model": HOSTED_MODEL, "messages": MSG}
    first = threading.Thread(target=post, args=(sim, "/chat/completions", body, AUTH))
    first.start()
    time.sleep(0.25)
    r = post(sim, "/chat/completions", body, AUTH)
    first.join()
    assert r.status_code == 429 and r.headers["retry-after"] == "1"


def test_error_event_then_done(servers: list[SimServer]) -> None:
    sim = started("flash")
    servers.append(sim)
    body = {"messages": MSG, "stream": True}
    headers = {"x-sim-fail": "error_event"}
    with httpx.stream(
        "POST", sim.base_url + "/v1/chat/completions", json=body, headers=headers
    ) as r:
        events = sse_events(list(r.iter_lines()))
    assert events[-1] == "[DONE]"
    error = orjson.loads(events[-2])["error"]
    assert error["code"] == 500 and "EngineGenerateError" in error["message"]


def test_data_parallel_engines_report_one_sample_each(servers: list[SimServer]) -> None:
    sim = started("flash", data_parallel_size=3)
    servers.append(sim)
    for i in range(6):
        post(sim, "/v1/chat/completions", {"messages": [{"role": "user", "content": f"q{i}"}]})
    text = httpx.get(sim.base_url + "/metrics").text
    for e in range(3):
        assert f'vllm:num_requests_running{{engine="{e}",model_name="{FLASH}"}} 0.0' in text
        hits = f'vllm:prompt_tokens_total{{engine="{e}",model_name="{FLASH}"}}'
        assert hits in text and f"{hits} 0.0" not in text  # each engine served some


def test_the_data_parallel_rank_header_picks_the_engine(servers: list[SimServer]) -> None:
    sim = started("flash", data_parallel_size=3, block_size=16)
    servers.append(sim)
    long = {"messages": [{"role": "user", "content": "a long shared document " * 40}]}
    cached = []
    for _ in range(4):  # the same engine each time: cached from the second request on
        r = post(sim, "/v1/chat/completions", long, {"X-data-parallel-rank": "2"})
        cached.append(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
    assert cached[0] == 0 and all(c > 0 for c in cached[1:])
    text = httpx.get(sim.base_url + "/metrics").text
    served = f'vllm:prompt_tokens_total{{engine="2",model_name="{FLASH}"}}'
    assert served in text and all(
        f'vllm:prompt_tokens_total{{engine="{e}",model_name="{FLASH}"}} 0.0' in text for e in (0, 1)
    )
    # vLLM: a rank outside 0..N-1 is a validation error (400); one that is no integer is
    # ignored (the least-loaded engine serves)
    r = post(sim, "/v1/chat/completions", {"messages": MSG}, {"X-data-parallel-rank": "3"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
    assert r.json()["error"]["message"] == "data_parallel_rank 3 is out of range [0, 3)."
    r = post(sim, "/v1/chat/completions", {"messages": MSG}, {"X-data-parallel-rank": "-1"})
    assert r.status_code == 400
    r = post(sim, "/v1/chat/completions", {"messages": MSG}, {"X-data-parallel-rank": "x"})
    assert r.status_code == 200
    one = started("flash")  # no data parallelism: rank 0 only
    servers.append(one)
    assert post(one, "/v1/chat/completions", long, {"X-data-parallel-rank": "0"}).is_success
    r = post(one, "/v1/chat/completions", long, {"X-data-parallel-rank": "1"})
    assert r.status_code == 400


def test_slow_polls(servers: list[SimServer]) -> None:
    sim = started("flash", poll_delay_s=0.3)
    servers.append(sim)
    start = time.monotonic()
    assert httpx.get(sim.base_url + "/health").status_code == 200
    assert time.monotonic() - start >= 0.3


def test_vllm_prefers_max_completion_tokens(servers: list[SimServer]) -> None:
    vllm, hosted = started("flash"), started("hosted")
    servers += [vllm, hosted]
    both = {"messages": MSG, "max_tokens": 5, "max_completion_tokens": 3}
    r = post(vllm, "/v1/chat/completions", both).json()
    assert r["usage"]["completion_tokens"] == 3
    r = post(hosted, "/chat/completions", {"model": HOSTED_MODEL, **both}, AUTH).json()
    assert r["usage"]["completion_tokens"] == 5


def test_hosted_fim_stops_at_4k_output_tokens(servers: list[SimServer]) -> None:
    hosted = started("hosted")
    servers.append(hosted)
    body = {"model": HOSTED_MODEL, "prompt": "def f(", "suffix": ")", "max_tokens": 8000}
    r = post(hosted, "/beta/completions", body, {**AUTH, "x-sim-output-tokens": "5000"})
    assert r.json()["usage"]["completion_tokens"] == 4096
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_vllm_samples_n_choices(servers: list[SimServer]) -> None:
    sim = started("flash")
    servers.append(sim)
    one = post(sim, "/v1/chat/completions", {"messages": MSG}).json()
    three = post(sim, "/v1/chat/completions", {"messages": MSG, "n": 3}).json()
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in three["choices"]}) == 3
    assert three["usage"]["completion_tokens"] == 3 * one["usage"]["completion_tokens"]
    body = {"messages": MSG, "n": 2, "stream": True}
    with httpx.stream("POST", sim.base_url + "/v1/chat/completions", json=body) as r:
        chunks = [orjson.loads(e) for e in sse_events(list(r.iter_lines()))[:-1]]
    finishes = {c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]}
    assert finishes == {0, 1}
