"""Failure injection (per request and by config) and the runtime control endpoints."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from engines.sim.config import SimConfig
from engines.sim.runner import SimServer

from .conftest import AUTH, chat_body, chat_path, control, post, sse_events

MODES = ["vllm", "hosted"]


@pytest.fixture(params=MODES)
def server(request: pytest.FixtureRequest) -> SimServer:
    sim: SimServer = request.getfixturevalue(request.param)
    return sim


def fail(server: SimServer, fault: str, **extra: Any) -> httpx.Response:
    return post(
        server, chat_path(server), chat_body(server, **extra), {**AUTH, "x-sim-fail": fault}
    )


def stream_lines(server: SimServer, fault: str) -> list[str]:
    body = chat_body(server, stream=True)
    headers = {**AUTH, "x-sim-fail": fault}
    lines: list[str] = []
    with httpx.stream("POST", server.base_url + chat_path(server), json=body, headers=headers) as r:
        for line in r.iter_lines():
            lines.append(line)
    return lines


@pytest.mark.parametrize("status", [400, 402, 429, 500, 503])
def test_status_faults(server: SimServer, status: int) -> None:
    r = fail(server, str(status))
    assert r.status_code == status and r.headers["x-sim-replica"] == server.config.replica_id
    if status == 500 and server.config.mode == "vllm":
        assert r.content == b""  # vLLM's dead-engine handler: an empty 500
        return
    err = r.json()["error"]
    assert err["message"] and set(err) == {"message", "type", "param", "code"}
    assert (r.headers.get("retry-after") == "1") == (status == 429)


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (402, openai.APIStatusError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_status_faults_through_the_sdk(
    hosted: SimServer, status: int, exc: type[Exception]
) -> None:
    c = openai.OpenAI(base_url=hosted.base_url, api_key="k", max_retries=0)
    with pytest.raises(exc) as info:
        c.chat.completions.create(
            model="deepseek-v4-flash",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-sim-fail": str(status)},
        )
    assert getattr(info.value, "status_code", None) == status
    if status == 402:
        assert "Insufficient Balance" in str(info.value)


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_closes_without_a_response(server: SimServer, stream: bool) -> None:
    with pytest.raises(httpx.RemoteProtocolError, match="without sending"):
        if stream:
            stream_lines(server, "disconnect")
        else:
            fail(server, "disconnect")
    assert post(server, chat_path(server), chat_body(server), AUTH).status_code == 200


def test_midstream_stream_breaks_off_without_done(server: SimServer) -> None:
    got: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        body = chat_body(server, stream=True)
        headers = {**AUTH, "x-sim-fail": "midstream"}
        with httpx.stream(
            "POST", server.base_url + chat_path(server), json=body, headers=headers
        ) as r:
            assert r.status_code == 200
            got.extend(r.iter_lines())
    events = sse_events(got)
    assert len(events) == 3 and "[DONE]" not in events
    assert all(orjson.loads(e)["choices"] for e in events)


def test_midstream_non_stream_sends_half_a_body(server: SimServer) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        fail(server, "midstream")


def test_insufficient_system_resource(server: SimServer) -> None:
    choice = fail(server, "insufficient").json()["choices"][0]
    assert (
        choice["finish_reason"] == "insufficient_system_resource" and choice["message"]["content"]
    )
    events = sse_events(stream_lines(server, "insufficient"))
    finishes = [
        c["choices"][0]["finish_reason"] for c in map(orjson.loads, events[:-1]) if c["choices"]
    ]
    assert finishes[-1] == "insufficient_system_resource" and events[-1] == "[DONE]"


def test_stall_holds_until_the_client_gives_up(server: SimServer) -> None:
    start = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        post(
            server,
            chat_path(server),
            chat_body(server),
            {**AUTH, "x-sim-fail": "stall"},
            timeout=0.5,
        )
    assert time.perf_counter() - start >= 0.5
    assert post(server, chat_path(server), chat_body(server), AUTH).status_code == 200


def test_stall_is_bounded() -> None:
    cfg = SimConfig.preset("flash", stall_s=0.2).zero_latency()
    with SimServer(cfg) as sim, pytest.raises(httpx.RemoteProtocolError):
        post(sim, "/v1/chat/completions", chat_body(sim), {"x-sim-fail": "stall"}, timeout=5)


def test_unknown_fault_is_400(server: SimServer) -> None:
    r = fail(server, "explode")
    assert r.status_code == 400 and "x-sim-fail" in r.json()["error"]["message"]


@pytest.fixture
def flaky() -> Iterator[SimServer]:
    cfg = SimConfig.preset("flash", fail_rate=0.5, fail_status=503, seed=7).zero_latency()
    with SimServer(cfg) as sim:
        yield sim


def test_fail_rate_from_config_is_seeded(flaky: SimServer) -> None:
    statuses = [
        post(flaky, "/v1/chat/completions", chat_body(flaky)).status_code for _ in range(40)
    ]
    assert set(statuses) == {200, 503} and 10 <= statuses.count(503) <= 30
    assert httpx.get(flaky.base_url + "/sim/stats").json()["faults"] == statuses.count(503)


def test_control_switches_faults_and_health(flaky: SimServer) -> None:
    base = flaky.base_url
    snapshot = control(flaky, healthy=False, fail_rate=1.0, fail_mode="429").json()
    assert snapshot["ok"] and snapshot["fail_mode"] == "429"
    assert httpx.get(base + "/health").status_code == 503
    assert post(flaky, "/v1/chat/completions", chat_body(flaky)).status_code == 429
    control(flaky, fail_mode="", fail_status=500)
    assert post(flaky, "/v1/chat/completions", chat_body(flaky)).status_code == 500
    control(flaky, fail_mode="disconnect")
    with pytest.raises(httpx.RemoteProtocolError):
        post(flaky, "/v1/chat/completions", chat_body(flaky))
    control(flaky, healthy=True, fail_rate=0.0, fail_mode="")
    assert httpx.get(base + "/health").status_code == 200
    assert post(flaky, "/v1/chat/completions", chat_body(flaky)).status_code == 200


@pytest.mark.parametrize(
    "changes",
    [
        {"fail_rate": 2.0},
        {"fail_mode": "sometimes"},
        {"itl_s": "fast"},
        {"volume": 11},
        {"models": "deepseek-v4-flash"},
    ],
)
def test_invalid_control_changes_nothing(vllm: SimServer, changes: dict[str, Any]) -> None:
    before = httpx.get(vllm.base_url + "/sim/stats").json()
    r = control(vllm, healthy=False, **changes)
    assert r.status_code == 400 and r.json()["error"]["message"]
    after = httpx.get(vllm.base_url + "/sim/stats").json()
    assert after["healthy"] and after["fail_rate"] == before["fail_rate"]


def test_control_body_must_be_an_object(vllm: SimServer) -> None:
    r = httpx.post(vllm.base_url + "/sim/control", content=b"[1]")
    assert r.status_code == 400


def test_stats_count_requests_tokens_and_flight() -> None:
    with SimServer(SimConfig.preset("flash").zero_latency()) as sim:
        long = chat_body(sim, messages=[{"role": "user", "content": "q" * 2100}])
        usages = [post(sim, "/v1/chat/completions", long).json()["usage"] for _ in range(2)]
        post(sim, "/v1/chat/completions", chat_body(sim), {"x-sim-fail": "503"})
        stats = httpx.get(sim.base_url + "/sim/stats").json()
    assert stats["requests"] == 3 and stats["completed"] == 2 and stats["errors"] == 1
    assert stats["prompt_tokens"] == sum(u["prompt_tokens"] for u in usages)
    assert stats["cached_tokens"] == usages[1]["prompt_tokens_details"]["cached_tokens"] == 512
    assert stats["generation_tokens"] == sum(u["completion_tokens"] for u in usages)
    assert stats["in_flight"] == 0 and stats["replica_id"] == "sim-0"
