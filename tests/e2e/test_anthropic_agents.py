"""What coding agents send, through the official anthropic SDK and the gateway to the simulators.

Covers the shapes Claude Code uses: system messages inside ``messages``, adaptive thinking
with ``output_config.effort``, stop sequences, a thinking block before a tool call (its
signature), images in a user turn and in a tool result, server tools, a cut answer, and a
captured first request of Claude Code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from .conftest import Gateway, Sims, demo_catalog, start_gateway

DATA = Path(__file__).parent / "data"
WEATHER = [
    {
        "name": "get_weather",
        "description": "Current weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}


def client(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="test", max_retries=0)


def test_system_messages_inside_messages_are_accepted(gateway: Gateway) -> None:
    raw = client(gateway).messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=32,
        system="Be brief.",
        messages=[
            {"role": "user", "content": "hello"},
            {"role": "system", "content": "The user prefers French."},  # type: ignore[misc,list-item]
            {"role": "user", "content": "say hi"},
        ],
    )
    assert raw.parse().stop_reason in ("end_turn", "max_tokens")


@pytest.mark.parametrize(
    ("effort", "mode"),
    [("low", "non-thinking"), ("max", "think-max")],
)
def test_adaptive_thinking_follows_the_effort(gateway: Gateway, effort: str, mode: str) -> None:
    raw = client(gateway).messages.with_raw_response.create(
        model="claude-opus-4-1",
        max_tokens=64,
        thinking={"type": "adaptive"},  # type: ignore[typeddict-item]
        extra_body={"output_config": {"effort": effort}},
        messages=[{"role": "user", "content": "hello"}],
    )
    assert raw.headers["x-tiergate-route"].startswith(f"pro/{mode}/")


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence_hit_is_reported(gateway: Gateway, stream: bool) -> None:
    # The simulator's answer begins " [<model>@<replica>]": "@" is always hit.
    kwargs: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stop_sequences": ["@", "never-there"],
        "messages": [{"role": "user", "content": "hello"}],
        "extra_headers": {"x-tiergate-tier": "flash"},
    }
    if stream:
        with client(gateway).messages.stream(**kwargs) as s:
            msg = s.get_final_message()
    else:
        msg = client(gateway).messages.create(**kwargs)
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "@"
    assert msg.content[0].type == "text" and "@" not in msg.content[0].text


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
def test_streamed_thinking_before_a_tool_call_is_signed(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    gw: Gateway = request.getfixturevalue(fixture)
    c = client(gw)
    thinking: Any = {"type": "enabled", "budget_tokens": 2048}
    ask = 'use the get_weather tool with {"city": "Paris"}'
    with c.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=256,
        thinking=thinking,
        tools=WEATHER,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": ask}],
    ) as s:
        events = [e for e in s if e.type in ("content_block_start", "content_block_delta")]
        first = s.get_final_message()
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts == ["thinking", "tool_use"]
    assert deltas.index("signature_delta") < len(deltas) and deltas[-1] == "input_json_delta"
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    block, call = first.content[0], first.content[1]
    assert block.type == "thinking" and block.signature.startswith("tg1.")
    assert call.type == "tool_use" and call.input == {"city": "Paris"}
    assert first.stop_reason == "tool_use"
    # The signed block goes back as it came: the hosted API gets its reasoning_content.
    second = c.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        thinking=thinking,
        tools=WEATHER,  # type: ignore[arg-type]
        messages=[
            {"role": "user", "content": ask},
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
            },
        ],
    )
    assert second.stop_reason == "end_turn" and second.content[-1].type == "text"


def test_images_in_a_user_turn_and_a_tool_result_become_notes(gateway: Gateway) -> None:
    raw = client(gateway).messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=32,
        tools=WEATHER,  # type: ignore[arg-type]
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "what is this?"}, IMAGE]},  # type: ignore[list-item]
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [IMAGE]}],  # type: ignore[list-item]
            },
        ],
    )
    assert raw.parse().stop_reason == "end_turn"
    assert "image-as-text=2" in raw.headers["x-tiergate-route"]
    metrics = gateway.app.state.tiergate.metrics
    assert metrics.adaptations.labels("anthropic", "image-as-text")._value.get() >= 1


@pytest.fixture(scope="module")
def strict_media(sims: Sims, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Gateway]:
    server, gw = start_gateway(demo_catalog(sims), media_policy="reject")
    yield gw
    server.stop()


def test_media_policy_reject_is_a_clear_400(strict_media: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client(strict_media).messages.create(
            model="claude-sonnet-4-5",
            max_tokens=32,
            messages=[{"role": "user", "content": [IMAGE]}],  # type: ignore[list-item]
        )
    assert "text only" in info.value.message


def test_server_tools_are_dropped_and_named_in_the_route(gateway: Gateway) -> None:
    raw = client(gateway).messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=32,
        tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}, *WEATHER],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "what is new today?"}],
    )
    assert raw.parse().stop_reason == "end_turn"
    assert "server-tool-dropped=web_search_20250305" in raw.headers["x-tiergate-route"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_cut_answer_is_an_error_not_a_complete_message(
    hosted_first: Gateway, sims: Sims, stream: bool
) -> None:
    sims.control(sims.hosted, fail_rate=1.0, fail_mode="insufficient")
    kwargs: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hello"}],
    }
    with pytest.raises(anthropic.APIStatusError) as info:
        if stream:
            with client(hosted_first).messages.stream(**kwargs) as s:
                s.get_final_message()
        else:
            client(hosted_first).messages.create(**kwargs)
    assert "insufficient_system_resource" in str(info.value)
    assert hosted_first.settled()[-1].output_tokens > 0  # what was generated is still billed


def test_captured_claude_code_first_request(gateway: Gateway) -> None:
    captured = json.loads((DATA / "claude_code_say_hi.json").read_text())
    body = captured["body"]
    assert any(m["role"] == "system" for m in body["messages"])  # what broke it before
    assert body["thinking"] == {"type": "adaptive"}
    with httpx.stream(
        "POST",
        gateway.url + "/v1/messages",
        json=body,
        headers={**captured["headers"], "x-api-key": "test"},
        timeout=30,
    ) as r:
        assert r.status_code == 200, r.read()
        datas = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    kinds = [d["type"] for d in datas]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert datas[0]["message"]["model"] == body["model"]


def test_parallel_tool_calls_interleaved_upstream_arrive_whole(
    gateway: Gateway, sims: Sims
) -> None:
    """The Flash replicas stream three parallel calls with their argument fragments in turns
    (call 0 goes on after call 1 began): each tool_use block is whole, its deltas before its
    stop, as Claude Code reads them."""
    for url in sims.flash:
        sims.control(url, parallel_tool_calls=3, interleave_tool_calls=True)
    with client(gateway).messages.stream(
        model="deepseek-chat",
        max_tokens=256,
        tools=WEATHER,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "use the get_weather tool"}],
    ) as s:
        events = list(s)
        final = s.get_final_message()
    stopped: set[int] = set()
    for e in events:
        if e.type == "content_block_delta":
            assert e.index not in stopped
        elif e.type == "content_block_stop":
            stopped.add(e.index)
    calls = [b for b in final.content if b.type == "tool_use"]
    assert len(calls) == 3 and len({c.id for c in calls}) == 3
    assert all(c.name == "get_weather" and set(c.input) == {"query"} for c in calls)
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
def test_a_tool_call_without_an_id_gets_one(
    request: pytest.FixtureRequest, sims: Sims, fixture: str
) -> None:
    gw: Gateway = request.getfixturevalue(fixture)
    urls = [*sims.flash, *sims.pro, sims.hosted]
    for url in urls:
        sims.control(url, tool_call_ids=False)
    ask = 'use the get_weather tool with {"city": "Paris"}'
    try:
        raw = client(gw).messages.with_raw_response.create(
            model="claude-sonnet-4-5",
            max_tokens=256,
            tools=WEATHER,  # type: ignore[arg-type]
            tool_choice={"type": "any"},
            messages=[{"role": "user", "content": ask}],
        )
    finally:
        for url in urls:
            sims.control(url, tool_call_ids=True)
    call = json.loads(raw.http_response.text)["content"][-1]
    assert call["type"] == "tool_use" and call["id"].startswith("toolu_")
