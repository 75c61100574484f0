"""vLLM replica mode over real HTTP, with the openai SDK and httpx as clients."""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engines.sim.config import SimConfig
from engines.sim.runner import SimServer

from .conftest import FLASH, MSG, control, post, sse_events


def client(server: SimServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


def test_non_stream_answer_names_model_and_replica(vllm: SimServer) -> None:
    raw = client(vllm).chat.completions.with_raw_response.create(model=FLASH, messages=MSG)
    assert raw.headers["x-sim-replica"] == "r1"
    resp = raw.parse()
    msg = resp.choices[0].message
    assert FLASH in msg.content and "r1" in msg.content
    extra = msg.model_extra or {}
    assert extra["reasoning"] is None  # thinking is off by default on vLLM
    body = orjson.loads(raw.text)
    assert body["choices"][0]["message"]["tool_calls"] == []  # vLLM's empty list, not null
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens_details is not None
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


@pytest.mark.parametrize(("effort", "factor"), [("high", 1), ("max", 2)])
def test_thinking_via_chat_template_kwargs(vllm: SimServer, effort: str, factor: int) -> None:
    resp = client(vllm).chat.completions.create(
        model=FLASH,
        messages=MSG,
        extra_body={"chat_template_kwargs": {"thinking": True, "reasoning_effort": effort}},
    )
    reasoning = (resp.choices[0].message.model_extra or {})["reasoning"]
    n_reasoning = len(reasoning.split())
    assert n_reasoning == vllm.config.reasoning_tokens * factor
    assert resp.usage.completion_tokens == n_reasoning + vllm.config.default_output_tokens


def test_older_reasoning_field_and_no_prompt_details() -> None:
    cfg = SimConfig.preset(
        "flash", reasoning_field="reasoning_content", enable_prompt_tokens_details=False
    ).zero_latency()
    with SimServer(cfg) as server:
        body = post(
            server,
            "/v1/chat/completions",
            {"model": FLASH, "messages": MSG, "chat_template_kwargs": {"thinking": True}},
        ).json()
    assert body["choices"][0]["message"]["reasoning_content"]
    assert "reasoning" not in body["choices"][0]["message"]
    assert "prompt_tokens_details" not in body["usage"]


def test_other_model_is_404_and_missing_model_means_the_served_one(vllm: SimServer) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(vllm).chat.completions.create(model="gpt-4o", messages=MSG)
    err = info.value.body
    assert isinstance(err, dict) and "does not exist" in err["message"] and err["code"] == 404
    r = post(vllm, "/v1/chat/completions", {"messages": MSG})
    assert r.status_code == 200 and r.json()["model"] == FLASH


def test_prompt_longer_than_max_model_len_is_400() -> None:
    with SimServer(SimConfig.preset("flash", max_model_len=100).zero_latency()) as small:
        long = [{"role": "user", "content": "y" * 1000}]
        with pytest.raises(openai.BadRequestError, match="maximum context length is 100"):
            client(small).chat.completions.create(model=FLASH, messages=long)
        fits = client(small).chat.completions.create(model=FLASH, messages=MSG, max_tokens=10)
        assert fits.choices[0].message.content


def test_stream_reasoning_then_content_then_usage(vllm: SimServer) -> None:
    stream = client(vllm).chat.completions.create(
        model=FLASH,
        messages=MSG,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"chat_template_kwargs": {"thinking": True}},
    )
    kinds, usage, finish = [], None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            finish = c.finish_reason or finish
            if (c.delta.model_extra or {}).get("reasoning"):
                kinds.append("r")
            if c.delta.content:
                kinds.append("c")
    assert kinds == ["r"] * vllm.config.reasoning_tokens + ["c"] * vllm.config.default_output_tokens
    assert usage is not None and usage.completion_tokens == len(kinds) and finish == "stop"


def test_stream_ends_with_done_and_no_usage_unless_asked(vllm: SimServer) -> None:
    with httpx.stream(
        "POST",
        vllm.base_url + "/v1/chat/completions",
        json={"model": FLASH, "messages": MSG, "stream": True},
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(list(r.iter_lines()))
    assert events[-1] == "[DONE]"
    assert all("usage" not in orjson.loads(e) for e in events[:-1])


def test_models_health_and_routes(vllm: SimServer) -> None:
    models = client(vllm).models.list()
    assert [m.id for m in models.data] == [FLASH]
    assert (models.data[0].model_extra or {})["max_model_len"] == vllm.config.max_model_len
    health = httpx.get(vllm.base_url + "/health")
    assert health.status_code == 200 and health.headers["x-sim-replica"] == "r1"
    assert post(vllm, "/beta/completions", {"model": FLASH, "prompt": "x"}).status_code == 404


@pytest.mark.parametrize("suffix", [None, "\n    return a"])
def test_completions_plain_and_fim(vllm: SimServer, suffix: str | None) -> None:
    resp = client(vllm).completions.create(
        model=FLASH, prompt="def fib(n):\n    ", suffix=suffix, max_tokens=8
    )
    assert resp.object == "text_completion" and resp.choices[0].text
    assert resp.usage.completion_tokens == 8 and resp.choices[0].finish_reason == "length"


def test_prefix_cache_hits_land_on_256_token_blocks() -> None:
    long = [{"role": "system", "content": "policy " * 700}, *MSG]  # about 1230 tokens
    with SimServer(SimConfig.preset("flash", cache_blocks=64).zero_latency()) as server:
        c = client(server)

        def cached(messages: list[dict[str, str]], **kw: object) -> tuple[int, int]:
            u = c.chat.completions.create(model=FLASH, messages=messages, **kw).usage  # type: ignore[call-overload]
            return u.prompt_tokens_details.cached_tokens, u.prompt_tokens

        first, prompt = cached(long)
        again, _ = cached(long)
        extended, longer = cached([*long, {"role": "assistant", "content": "ok"}, *MSG])
        thinking, _ = cached(long, extra_body={"chat_template_kwargs": {"thinking": True}})
    assert first == 0
    assert again == (prompt // 256) * 256 == 1024
    assert extended % 256 == 0 and again <= extended <= longer
    assert thinking == 0  # thinking renders differently: no shared blocks


def test_lru_eviction_over_http() -> None:
    a = [{"role": "user", "content": "a" * 4200}]  # 4 full blocks each
    b = [{"role": "user", "content": "b" * 4200}]
    with SimServer(SimConfig.preset("flash", cache_blocks=4).zero_latency()) as server:
        c = client(server)

        def cached(messages: list[dict[str, str]]) -> int:
            u = c.chat.completions.create(model=FLASH, messages=messages).usage
            return u.prompt_tokens_details.cached_tokens

        assert [cached(a), cached(a), cached(b), cached(a)] == [0, 1024, 0, 0]


def _families(server: SimServer) -> dict[str, object]:
    text = httpx.get(server.base_url + "/metrics").text
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict[str, object], family: str, sample: str) -> float:
    return next(s.value for s in families[family].samples if s.name == sample)  # type: ignore[attr-defined]


def test_metrics_use_vllm_names_and_add_up() -> None:
    long = [{"role": "system", "content": "policy " * 700}, *MSG]
    with SimServer(SimConfig.preset("flash", cache_blocks=10).zero_latency()) as server:
        usages = [
            post(server, "/v1/chat/completions", {"model": FLASH, "messages": long}).json()["usage"]
            for _ in range(3)
        ]
        fam = _families(server)
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
    ):
        assert name in fam, name
        assert all(s.labels.get("model_name") == FLASH for s in fam[name].samples)  # type: ignore[attr-defined]
    prompt = sum(u["prompt_tokens"] for u in usages)
    hits = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    assert hits == 2048
    assert _value(fam, "vllm:prefix_cache_queries", "vllm:prefix_cache_queries_total") == prompt
    assert _value(fam, "vllm:prefix_cache_hits", "vllm:prefix_cache_hits_total") == hits
    assert _value(fam, "vllm:prompt_tokens", "vllm:prompt_tokens_total") == prompt
    generated = sum(u["completion_tokens"] for u in usages)
    assert _value(fam, "vllm:generation_tokens", "vllm:generation_tokens_total") == generated
    assert _value(fam, "vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_perc") == 0.4  # 4 of 10
    ttft_count = "vllm:time_to_first_token_seconds_count"
    assert _value(fam, "vllm:time_to_first_token_seconds", ttft_count) == 3
    assert _value(fam, "vllm:num_requests_running", "vllm:num_requests_running") == 0


def test_control_reset_cache(vllm: SimServer) -> None:
    long = [{"role": "user", "content": "z" * 2100}]
    post(vllm, "/v1/chat/completions", {"model": FLASH, "messages": long})
    assert control(vllm, reset_cache=True).json()["cache_blocks"] == 0
    usage = post(vllm, "/v1/chat/completions", {"model": FLASH, "messages": long}).json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
