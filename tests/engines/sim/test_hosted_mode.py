"""Hosted DeepSeek API mode over real HTTP, with the openai SDK and httpx as clients."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from engines.sim.runner import SimServer

from .conftest import AUTH, HOSTED_MODEL, MSG, post, sse_events

TOOL_TURN: list[dict[str, Any]] = [
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


def client(server: SimServer, base: str = "") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + base, api_key="sk-test", max_retries=0)


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}]
)
def test_a_key_is_required(hosted: SimServer, headers: dict[str, str]) -> None:
    r = post(hosted, "/chat/completions", {"model": HOSTED_MODEL, "messages": MSG}, headers)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(hosted.base_url + "/models", headers=headers).status_code == 401


def test_thinking_is_on_by_default_and_usage_splits_cache(hosted: SimServer) -> None:
    raw = client(hosted).chat.completions.with_raw_response.create(model=HOSTED_MODEL, messages=MSG)
    assert raw.headers["x-sim-replica"] == "h1"
    resp = raw.parse()
    msg = resp.choices[0].message
    assert (msg.model_extra or {})["reasoning_content"] and msg.tool_calls is None
    assert orjson.loads(raw.text)["choices"][0]["message"]["tool_calls"] is None
    u = resp.usage
    extra = u.model_extra or {}
    assert extra["prompt_cache_hit_tokens"] + extra["prompt_cache_miss_tokens"] == u.prompt_tokens
    reasoning = u.completion_tokens_details.reasoning_tokens
    assert reasoning == hosted.config.reasoning_tokens
    assert u.completion_tokens == reasoning + hosted.config.default_output_tokens


@pytest.mark.parametrize(
    ("extra", "reasoning"),
    [
        ({"thinking": {"type": "disabled"}}, 0),
        ({"thinking": {"type": "enabled"}, "reasoning_effort": "high"}, 16),
        ({"reasoning_effort": "max"}, 32),
        # the API's guide: minimal/low -> low, medium/xhigh -> high, max/ultra -> max
        ({"reasoning_effort": "minimal"}, 8),
        ({"reasoning_effort": "low"}, 8),
        ({"reasoning_effort": "medium"}, 16),
        ({"reasoning_effort": "xhigh"}, 16),
        ({"reasoning_effort": "ultra"}, 32),
    ],
)
def test_thinking_switch_and_effort(
    hosted: SimServer, extra: dict[str, Any], reasoning: int
) -> None:
    resp = client(hosted).chat.completions.create(
        model=HOSTED_MODEL, messages=MSG, extra_body=extra
    )
    assert resp.usage.completion_tokens_details.reasoning_tokens == reasoning
    has_field = "reasoning_content" in (resp.choices[0].message.model_extra or {})
    assert has_field == (reasoning > 0)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"thinking": {"type": "sometimes"}}, "thinking"),
        ({"thinking": True}, "thinking"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"reasoning_effort": "none"}, "reasoning_effort"),  # thinking off is `thinking`
        ({"n": 2}, "n"),
    ],
)
def test_bad_parameters_are_400(hosted: SimServer, extra: dict[str, Any], param: str) -> None:
    r = post(hosted, "/chat/completions", {"model": HOSTED_MODEL, "messages": MSG, **extra}, AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


@pytest.mark.parametrize(
    "path", ["/chat/completions", "/v1/chat/completions", "/beta/chat/completions"]
)
@pytest.mark.parametrize("model", ["deepseek-v4-flash", "deepseek-v4-pro", "deepseek-flash"])
def test_chat_paths_and_model_names(hosted: SimServer, path: str, model: str) -> None:
    r = post(hosted, path, {"model": model, "messages": MSG}, AUTH)
    assert r.status_code == 200 and r.json()["model"] == model


def test_unknown_model_is_400(hosted: SimServer) -> None:
    with pytest.raises(openai.BadRequestError, match="Model Not Exist"):
        client(hosted).chat.completions.create(model="deepseek-chat", messages=MSG)
    names = [m.id for m in client(hosted).models.list().data]
    assert names == list(hosted.config.models)


def test_stream_keepalive_reasoning_content_usage_done(hosted: SimServer) -> None:
    body = {
        "model": HOSTED_MODEL,
        "messages": MSG,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", hosted.base_url + "/chat/completions", json=body, headers=AUTH) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[0] == ": keep-alive"
    events = sse_events(lines)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    u = usage_chunk["usage"]
    assert u["prompt_cache_hit_tokens"] + u["prompt_cache_miss_tokens"] == u["prompt_tokens"]
    order = [
        "r" if d.get("reasoning_content") else "c"
        for c in chunks[:-1]
        for d in [c["choices"][0]["delta"]]
        if d.get("reasoning_content") or d.get("content")
    ]
    assert order == sorted(order, key=lambda k: k == "c") and "r" in order and "c" in order
    assert u["completion_tokens"] == len(order)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_stream_through_the_sdk(hosted: SimServer) -> None:
    stream = client(hosted).chat.completions.create(
        model=HOSTED_MODEL, messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    reasoning = content = ""
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            reasoning += (c.delta.model_extra or {}).get("reasoning_content") or ""
            content += c.delta.content or ""
    assert reasoning and "h1" in content and usage is not None


def test_tool_turn_in_thinking_mode_needs_reasoning_content_back(hosted: SimServer) -> None:
    body: dict[str, Any] = {"model": HOSTED_MODEL, "messages": TOOL_TURN}
    r = post(hosted, "/chat/completions", body, AUTH)
    assert r.status_code == 400 and "reasoning_content" in r.json()["error"]["message"]
    off = {**body, "thinking": {"type": "disabled"}}
    assert post(hosted, "/chat/completions", off, AUTH).status_code == 200
    fixed = [dict(m) for m in TOOL_TURN]
    fixed[1]["reasoning_content"] = "I should call f."
    assert post(hosted, "/chat/completions", {**body, "messages": fixed}, AUTH).status_code == 200


@pytest.mark.parametrize("path", ["/beta/completions", "/completions"])
def test_fim_is_non_thinking(hosted: SimServer, path: str) -> None:
    body = {"model": HOSTED_MODEL, "prompt": "def f(", "suffix": "):\n    pass", "max_tokens": 6}
    r = post(hosted, path, body, AUTH)
    data = r.json()
    assert r.status_code == 200 and data["object"] == "text_completion"
    assert data["choices"][0]["text"] and data["usage"]["completion_tokens"] == 6
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert (
        data["usage"]["prompt_cache_miss_tokens"] + data["usage"]["prompt_cache_hit_tokens"]
        == data["usage"]["prompt_tokens"]
    )
    thinking = post(hosted, path, {**body, "thinking": {"type": "enabled"}}, AUTH)
    assert thinking.status_code == 400


def test_fim_through_the_sdk_at_beta(hosted: SimServer) -> None:
    resp = client(hosted, "/beta").completions.create(
        model=HOSTED_MODEL, prompt="def fib(n):\n    ", suffix="\n    return a", max_tokens=16
    )
    assert resp.choices[0].text and resp.usage.completion_tokens <= 16


def test_prefix_completion_only_at_beta(hosted: SimServer) -> None:
    messages = [
        {"role": "user", "content": "Write python"},
        {"role": "assistant", "content": "```python\n", "prefix": True},
    ]
    body = {"model": HOSTED_MODEL, "messages": messages, "thinking": {"type": "disabled"}}
    assert post(hosted, "/chat/completions", body, AUTH).status_code == 400
    resp = client(hosted, "/beta").chat.completions.create(
        model=HOSTED_MODEL,
        messages=messages,
        stop=["```"],
        extra_body={"thinking": {"type": "disabled"}},  # type: ignore[arg-type]
    )
    content = resp.choices[0].message.content
    assert content and not content.startswith("```python")


def test_cache_units_of_64_tokens(hosted: SimServer) -> None:
    messages = [{"role": "user", "content": "context " * 150}]  # about 300 tokens
    body = {"model": HOSTED_MODEL, "messages": messages, "thinking": {"type": "disabled"}}
    first = post(hosted, "/chat/completions", body, AUTH).json()["usage"]
    second = post(hosted, "/chat/completions", body, AUTH).json()["usage"]
    hit = second["prompt_cache_hit_tokens"]
    assert first["prompt_cache_hit_tokens"] == 0 or first["prompt_cache_hit_tokens"] < hit
    assert hit > 0 and hit % 64 == 0 and second["prompt_tokens"] - hit < 64


def test_user_id_is_recorded(hosted: SimServer) -> None:
    body = {"model": HOSTED_MODEL, "messages": MSG, "user_id": "end-user-7"}
    assert post(hosted, "/chat/completions", body, AUTH).status_code == 200
    assert httpx.get(hosted.base_url + "/sim/stats").json()["last_user_id"] == "end-user-7"
