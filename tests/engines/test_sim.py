"""The simulator against its published contracts, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engines.sim.config import SimConfig
from engines.sim.prefix_cache import PrefixCache
from engines.sim.runner import SimServer
from engines.sim.tokens import block_hashes, count_tokens, render_chat

FLASH = "deepseek-ai/DeepSeek-V4-Flash"
MSG = [{"role": "user", "content": "hello there"}]


# ---- pure parts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "requests", "hits"),
    [
        (10, [[b"a", b"b"], [b"a", b"b", b"c"]], [0, 2]),
        (10, [[b"a", b"b"], [b"x", b"b"]], [0, 0]),  # chained: a different first block misses all
        (2, [[b"a", b"b"], [b"c", b"d"], [b"a", b"b"]], [0, 0, 0]),  # evicted
        (
            3,
            [[b"a", b"b"], [b"a"], [b"c", b"d"], [b"a"]],
            [0, 1, 0, 1],
        ),  # LRU keeps recently used a
    ],
)
def test_prefix_cache_lru(capacity: int, requests: list[list[bytes]], hits: list[int]) -> None:
    cache = PrefixCache(capacity)
    assert [cache.match_and_insert(r) for r in requests] == hits
    assert len(cache) <= capacity


def test_rendering_is_prefix_stable_and_mode_specific() -> None:
    short = render_chat(MSG, thinking=False)
    longer = render_chat([*MSG, {"role": "assistant", "content": "hi"}, *MSG], thinking=False)
    assert longer.startswith(short)
    assert not render_chat(MSG, thinking=True).startswith(short[:10])
    assert render_chat(MSG, thinking=True, effort="max") != render_chat(MSG, thinking=True)
    text = "x" * (256 * 4 * 3 + 10)
    assert len(block_hashes(text, 256)) == 3 and count_tokens(text) == 256 * 3 + 3
    assert block_hashes(text, 256)[:2] == block_hashes(text[: 256 * 4 * 2], 256)


# ---- vLLM mode ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm() -> Iterator[SimServer]:
    with SimServer(SimConfig.preset("flash", replica_id="r1", cache_blocks=8).zero_latency()) as s:
        yield s


@pytest.fixture(scope="module")
def hosted() -> Iterator[SimServer]:
    with SimServer(SimConfig.preset("hosted").zero_latency()) as s:
        yield s


def post(server: SimServer, path: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, headers=headers, timeout=10)


def test_vllm_non_stream_shape(vllm: SimServer) -> None:
    r = post(vllm, "/v1/chat/completions", {"model": FLASH, "messages": MSG})
    assert r.status_code == 200 and r.headers["x-sim-replica"] == "r1"
    msg = r.json()["choices"][0]["message"]
    assert msg["tool_calls"] == [] and msg["reasoning"] is None  # thinking is off by default
    assert "r1" in msg["content"] and FLASH in msg["content"]
    usage = r.json()["usage"]
    assert "cached_tokens" in usage["prompt_tokens_details"]
    r = post(
        vllm,
        "/v1/chat/completions",
        {"model": FLASH, "messages": MSG, "chat_template_kwargs": {"thinking": True}},
    )
    assert r.json()["choices"][0]["message"]["reasoning"]


def test_vllm_rejects_other_models_and_long_prompts(vllm: SimServer) -> None:
    assert (
        post(vllm, "/v1/chat/completions", {"model": "gpt-4", "messages": MSG}).status_code == 404
    )
    with SimServer(SimConfig.preset("flash", max_model_len=100).zero_latency()) as small:
        r = post(
            small,
            "/v1/chat/completions",
            {"model": FLASH, "messages": [{"role": "user", "content": "y" * 1000}]},
        )
        assert (
            r.status_code == 400 and "maximum context length is 100" in r.json()["error"]["message"]
        )


def test_vllm_prefix_cache_hits_on_block_boundaries_and_metrics(vllm: SimServer) -> None:
    httpx.post(vllm.base_url + "/sim/control", json={"reset_cache": True})
    long = [{"role": "system", "content": "policy " * 700}, *MSG]
    first = post(vllm, "/v1/chat/completions", {"model": FLASH, "messages": long}).json()["usage"]
    second = post(vllm, "/v1/chat/completions", {"model": FLASH, "messages": long}).json()["usage"]
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0 and cached % 256 == 0 and cached <= second["prompt_tokens"]
    text = httpx.get(vllm.base_url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
    ):
        assert name in families, name
    hits = [
        s.value for s in families["vllm:prefix_cache_hits"].samples if s.name.endswith("_total")
    ]
    assert hits and hits[0] >= cached


def test_vllm_stream_order_and_usage(vllm: SimServer) -> None:
    client = openai.OpenAI(base_url=vllm.base_url + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model=FLASH,
        messages=MSG,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"chat_template_kwargs": {"thinking": True}},
    )
    kinds, usage = [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            extra = c.delta.model_extra or {}
            if extra.get("reasoning"):
                kinds.append("r")
            if c.delta.content:
                kinds.append("c")
    assert kinds and kinds == sorted(kinds, key=lambda k: k == "c")
    assert usage is not None and usage.completion_tokens == len(kinds)


# ---- hosted mode ---------------------------------------------------------------------


def test_hosted_requires_a_key(hosted: SimServer) -> None:
    r = post(hosted, "/chat/completions", {"model": "deepseek-v4-flash", "messages": MSG})
    assert r.status_code == 401


def test_hosted_defaults_to_thinking_and_reports_cache_usage(hosted: SimServer) -> None:
    client = openai.OpenAI(base_url=hosted.base_url, api_key="k", max_retries=0)
    resp = client.chat.completions.create(model="deepseek-v4-flash", messages=MSG)
    msg = resp.choices[0].message.model_extra or {}
    assert msg["reasoning_content"]
    assert resp.choices[0].message.tool_calls is None
    u = resp.usage.model_extra or {}
    assert u["prompt_cache_hit_tokens"] + u["prompt_cache_miss_tokens"] == resp.usage.prompt_tokens
    assert resp.usage.completion_tokens_details.reasoning_tokens > 0
    off = client.chat.completions.create(
        model="deepseek-v4-flash", messages=MSG, extra_body={"thinking": {"type": "disabled"}}
    )
    assert not (off.choices[0].message.model_extra or {}).get("reasoning_content")


def test_hosted_stream_has_keepalive_and_usage_chunk(hosted: SimServer) -> None:
    body = {
        "model": "deepseek-v4-flash",
        "messages": MSG,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST",
        hosted.base_url + "/chat/completions",
        json=body,
        headers={"Authorization": "Bearer k"},
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert ": keep-alive" in lines and lines[-1] == "data: [DONE]"
    usage_chunk = orjson.loads(lines[-2][6:])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["prompt_cache_miss_tokens"] > 0


def test_hosted_thinking_tool_turn_without_reasoning_is_400(hosted: SimServer) -> None:
    messages = [
        *MSG,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    r = post(
        hosted,
        "/chat/completions",
        {"model": "deepseek-v4-flash", "messages": messages},
        Authorization="Bearer k",
    )
    assert r.status_code == 400 and "reasoning_content" in r.json()["error"]["message"]
    messages[1]["reasoning_content"] = "I should call f."
    r = post(
        hosted,
        "/chat/completions",
        {"model": "deepseek-v4-flash", "messages": messages},
        Authorization="Bearer k",
    )
    assert r.status_code == 200


# ---- features and faults -------------------------------------------------------------


def test_fim_tools_json_and_length(hosted: SimServer) -> None:
    auth = {"Authorization": "Bearer k"}
    fim = post(
        hosted,
        "/beta/completions",
        {"model": "deepseek-v4-flash", "prompt": "def f(", "suffix": "):"},
        **auth,
    )
    assert fim.json()["object"] == "text_completion" and fim.json()["choices"][0]["text"]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    tc = post(
        hosted,
        "/chat/completions",
        {"model": "deepseek-v4-flash", "messages": MSG, "tools": tools, "tool_choice": "required"},
        **auth,
    ).json()["choices"][0]
    assert tc["finish_reason"] == "tool_calls"
    assert orjson.loads(tc["message"]["tool_calls"][0]["function"]["arguments"])
    js = post(
        hosted,
        "/chat/completions",
        {"model": "deepseek-v4-flash", "messages": MSG, "response_format": {"type": "json_object"}},
        **auth,
    ).json()
    assert isinstance(orjson.loads(js["choices"][0]["message"]["content"]), dict)
    short = post(
        hosted,
        "/chat/completions",
        {
            "model": "deepseek-v4-flash",
            "messages": MSG,
            "max_tokens": 3,
            "thinking": {"type": "disabled"},
        },
        **auth,
    ).json()
    assert (
        short["choices"][0]["finish_reason"] == "length"
        and short["usage"]["completion_tokens"] == 3
    )


@pytest.mark.parametrize("status", [402, 429, 503, 500])
def test_status_faults_by_header(hosted: SimServer, status: int) -> None:
    r = post(
        hosted,
        "/chat/completions",
        {"model": "deepseek-v4-flash", "messages": MSG},
        Authorization="Bearer k",
        **{"x-sim-fail": str(status)},
    )
    assert r.status_code == status and r.json()["error"]["message"]
    if status == 429:
        assert r.headers["retry-after"] == "1"


def test_midstream_drop_and_insufficient_resource(vllm: SimServer) -> None:
    body = {"model": FLASH, "messages": MSG, "stream": True}
    with (
        pytest.raises(httpx.HTTPError),
        httpx.stream(
            "POST",
            vllm.base_url + "/v1/chat/completions",
            json=body,
            headers={"x-sim-fail": "midstream"},
        ) as r,
    ):
        list(r.iter_lines())
    r = post(
        vllm,
        "/v1/chat/completions",
        {"model": FLASH, "messages": MSG},
        **{"x-sim-fail": "insufficient"},
    )
    assert r.json()["choices"][0]["finish_reason"] == "insufficient_system_resource"


def test_control_health_and_fail_rate(vllm: SimServer) -> None:
    base = vllm.base_url
    try:
        httpx.post(
            base + "/sim/control", json={"healthy": False, "fail_rate": 1.0, "fail_status": 503}
        )
        assert httpx.get(base + "/health").status_code == 503
        assert (
            post(vllm, "/v1/chat/completions", {"model": FLASH, "messages": MSG}).status_code == 503
        )
    finally:
        httpx.post(base + "/sim/control", json={"healthy": True, "fail_rate": 0.0})
    assert httpx.get(base + "/health").status_code == 200
    stats = httpx.get(base + "/sim/stats").json()
    assert stats["requests"] > 0 and stats["faults"] >= 1
