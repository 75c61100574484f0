"""Tools, JSON mode, prefix completion, max_tokens, stop and the x-sim-* request headers."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from engines.sim.runner import SimServer

from .conftest import AUTH, chat_body, chat_path, post, sse_events

TOOLS = [
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}},
]
MODES = ["vllm", "hosted"]


@pytest.fixture(params=MODES)
def server(request: pytest.FixtureRequest) -> SimServer:
    sim: SimServer = request.getfixturevalue(request.param)
    return sim


def ask(server: SimServer, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    return post(server, chat_path(server), chat_body(server, **extra), {**AUTH, **(headers or {})})


@pytest.mark.parametrize(
    ("extra", "headers", "name"),
    [
        ({"tools": TOOLS, "tool_choice": "required"}, {}, "lookup"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "weather"}}},
            {},
            "weather",
        ),
        ({"tools": TOOLS}, {"x-sim-tool-call": "weather"}, "weather"),
        ({}, {"x-sim-tool-call": "anything"}, "anything"),
        ({"tools": TOOLS}, {}, None),  # auto: the simulated model answers in text
        ({"tools": TOOLS, "tool_choice": "none"}, {"x-sim-tool-call": "weather"}, None),
    ],
)
def test_tool_calls(
    server: SimServer, extra: dict[str, Any], headers: dict[str, str], name: str | None
) -> None:
    choice = ask(server, headers, **extra).json()["choices"][0]
    calls = choice["message"]["tool_calls"]
    if name is None:
        assert choice["finish_reason"] == "stop" and not calls and choice["message"]["content"]
        return
    # vLLM ends a call forced by a named tool_choice with "stop"; the hosted API does not
    named = isinstance(extra.get("tool_choice"), dict) and server.config.mode == "vllm"
    assert choice["finish_reason"] == ("stop" if named else "tool_calls")
    assert calls[0]["function"]["name"] == name
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert isinstance(orjson.loads(calls[0]["function"]["arguments"]), dict)


def test_streamed_tool_call(server: SimServer) -> None:
    body = chat_body(server, tools=TOOLS, tool_choice="required", stream=True)
    with httpx.stream("POST", server.base_url + chat_path(server), json=body, headers=AUTH) as r:
        chunks = [orjson.loads(e) for e in sse_events(list(r.iter_lines()))[:-1]]
    calls = [
        c["choices"][0]["delta"]["tool_calls"]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert calls and calls[0][0]["function"]["name"] == "lookup" and calls[0][0]["index"] == 0
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    args = "".join(c[0]["function"].get("arguments", "") for c in calls)
    assert isinstance(orjson.loads(args), dict)
    if server.config.mode == "vllm":  # a header chunk, then the arguments in fragments
        assert calls[0][0]["function"]["arguments"] == "" and calls[0][0]["id"]
        assert len(calls) > 2 and all("name" not in c[0]["function"] for c in calls[1:])
    else:
        assert len(calls) == 1


@pytest.mark.parametrize("interleave", ["0", "1"])
def test_parallel_tool_calls_stream_in_turns_when_interleaved(
    server: SimServer, interleave: str
) -> None:
    headers = {**AUTH, "x-sim-tool-calls": "3", "x-sim-interleave-tool-calls": interleave}
    body = chat_body(server, tools=TOOLS, tool_choice="required")
    whole = post(server, chat_path(server), body, headers).json()["choices"][0]["message"]
    assert len(whole["tool_calls"]) == 3 and len({c["id"] for c in whole["tool_calls"]}) == 3
    with httpx.stream(
        "POST", server.base_url + chat_path(server), json={**body, "stream": True}, headers=headers
    ) as r:
        chunks = [orjson.loads(e) for e in sse_events(list(r.iter_lines()))[:-1]]
    pieces = [
        p for c in chunks if c["choices"] for p in c["choices"][0]["delta"].get("tool_calls") or ()
    ]
    order = [p["index"] for p in pieces]
    args = {
        k: "".join(p["function"].get("arguments", "") for p in pieces if p["index"] == k)
        for k in range(3)
    }
    assert [orjson.loads(args[k]) for k in range(3)] == [
        orjson.loads(c["function"]["arguments"]) for c in whole["tool_calls"]
    ]
    # vLLM streams fragments (in turns when interleaved); the hosted API each call whole
    if server.config.mode == "hosted":
        assert order == [0, 1, 2]
    elif interleave == "1":
        assert order[:3] == [0, 1, 2] and order.index(2) < len(order) - order[::-1].index(0) - 1
    else:
        assert order == sorted(order)


def test_json_mode_gives_a_json_object(server: SimServer) -> None:
    r = ask(server, response_format={"type": "json_object"})
    doc = orjson.loads(r.json()["choices"][0]["message"]["content"])
    assert isinstance(doc, dict) and doc["replica"] == server.config.replica_id


def test_max_tokens_caps_the_answer(server: SimServer) -> None:
    r = ask(server, max_tokens=3).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 3


def test_stop_ends_the_answer_before_the_stop_string(server: SimServer) -> None:
    full = ask(server).json()["choices"][0]["message"]["content"]
    stop = full.split()[3]  # a word well inside the answer
    r = ask(server, stop=[stop]).json()
    content = r["choices"][0]["message"]["content"]
    assert full.startswith(content) and stop not in content and len(content) < len(full)
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"]["completion_tokens"] < ask(server).json()["usage"]["completion_tokens"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 0}, "n"),  # vLLM samples n >= 1 choices; the hosted API answers only n=1
        ({"stop": 5}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"tools": "x"}, "tools"),
    ],
)
def test_invalid_parameters(server: SimServer, extra: dict[str, Any], param: str) -> None:
    r = ask(server, **extra)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_output_length_headers(server: SimServer) -> None:
    headers = {"x-sim-output-tokens": "7", "x-sim-reasoning-tokens": "5"}
    thinking = {"chat_template_kwargs": {"thinking": True}} if server.config.mode == "vllm" else {}
    r = ask(server, headers, **thinking).json()
    assert r["usage"]["completion_tokens"] == 12
    assert ask(server, {"x-sim-output-tokens": "lots"}).status_code == 400


OPEN = [{"role": "user", "content": "Write python"}, {"role": "assistant", "content": "```py"}]


def test_vllm_prefix_completion_continues_the_message(vllm: SimServer) -> None:
    plain = ask(vllm, messages=[{"role": "user", "content": "Write python"}]).json()
    cont = ask(vllm, messages=OPEN, continue_final_message=True, add_generation_prompt=False).json()
    content = cont["choices"][0]["message"]["content"]
    assert content and not content.startswith("```python")
    # the open assistant message is part of the prompt
    assert cont["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]


def test_prefix_needs_an_assistant_message_last(vllm: SimServer) -> None:
    bad = [{"role": "user", "content": "hi"}]
    r = ask(vllm, messages=bad, continue_final_message=True, add_generation_prompt=False)
    assert r.status_code == 400


def test_vllm_will_not_continue_a_message_and_open_a_turn(vllm: SimServer) -> None:
    """vLLM knows no `prefix` on a message; asked to continue one, it refuses a generation
    prompt with it (the default)."""
    r = ask(vllm, messages=OPEN, continue_final_message=True)
    assert r.status_code == 400 and "add_generation_prompt" in r.text
    with_prefix = [OPEN[0], {**OPEN[1], "prefix": True}]
    turn = ask(vllm, messages=with_prefix).json()
    plain = ask(vllm, messages=OPEN).json()
    assert turn["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
def test_malformed_bodies_are_400(server: SimServer, body: bytes) -> None:
    r = httpx.post(server.base_url + chat_path(server), content=body, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["message"]
