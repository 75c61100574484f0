"""The official anthropic SDK through the gateway, to self-hosted and hosted simulators."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import httpx
import pytest

from .conftest import Gateway

TOOLS = [
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


def client(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="test", max_retries=0)


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
def test_plain_message(request: pytest.FixtureRequest, fixture: str) -> None:
    gw: Gateway = request.getfixturevalue(fixture)
    raw = client(gw).messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Write a two-line thank-you note."}],
    )
    msg = raw.parse()
    assert msg.role == "assistant" and msg.stop_reason == "end_turn"
    assert [b.type for b in msg.content] == ["text"]  # no thinking unless asked, as Anthropic does
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    assert raw.headers["x-tiergate-route"].startswith("flash/non-thinking/")
    s = gw.settled()[-1]
    assert s.protocol == "anthropic" and s.requested_model == "claude-sonnet-4-5"


def test_opus_goes_to_pro_and_thinking_blocks_come_back(gateway: Gateway) -> None:
    raw = client(gateway).messages.with_raw_response.create(
        model="claude-opus-4-1",
        max_tokens=128,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[{"role": "user", "content": "Think about it: is 91 prime?"}],
    )
    msg = raw.parse()
    assert raw.headers["x-tiergate-route"].startswith("pro/think-high/pro-local")
    assert [b.type for b in msg.content] == ["thinking", "text"] and msg.content[0].thinking


def test_stream_event_sequence_with_thinking(gateway: Gateway) -> None:
    with client(gateway).messages.stream(
        model="claude-opus-4-1",
        max_tokens=128,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[{"role": "user", "content": "hello"}],
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "message_delta" in kinds
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.usage.output_tokens > 0 and final.stop_reason == "end_turn"


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
def test_tool_use_round_trip(request: pytest.FixtureRequest, fixture: str) -> None:
    gw: Gateway = request.getfixturevalue(fixture)
    c = client(gw)
    thinking = {"type": "enabled", "budget_tokens": 1024}
    first = c.messages.create(
        model="claude-opus-4-1",
        max_tokens=256,
        tools=TOOLS,
        thinking=thinking,
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input, dict)
    # The next turn sends the thinking block back; the hosted API needs it as reasoning_content.
    second = c.messages.create(
        model="claude-opus-4-1",
        max_tokens=256,
        tools=TOOLS,
        thinking=thinking,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "18C, sunny"}
                ],
            },
        ],
    )
    assert second.stop_reason == "end_turn" and any(b.type == "text" for b in second.content)


def test_streamed_tool_call(gateway: Gateway) -> None:
    with client(gateway).messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=128,
        tools=TOOLS,
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Rome?"}],
    ) as stream:
        final = stream.get_final_message()
    use = next(b for b in final.content if b.type == "tool_use")
    assert final.stop_reason == "tool_use" and use.name == "get_weather" and "query" in use.input


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
            "max_tokens",
        ),
        (
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": [{"type": "video"}]}],
            },
            "unsupported or malformed block type 'video'",
        ),
        (
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 10,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "toolu_nope", "content": "x"}
                        ],
                    }
                ],
            },
            "toolu_nope",
        ),
        (
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 10,
                "messages": [{"role": "tool", "content": "x"}],
            },
            "role",
        ),
        ({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []}, "messages"),
    ],
)
def test_bad_input_is_an_anthropic_400(gateway: Gateway, body: dict, fragment: str) -> None:
    # Raw HTTP: the SDK would refuse some of these before sending them.
    r = httpx.post(gateway.url + "/v1/messages", json=body, headers={"x-api-key": "test"})
    assert r.status_code == 400
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert fragment in err["error"]["message"]


def test_unknown_model_and_count_tokens(gateway: Gateway) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client(gateway).messages.create(
            model="gpt-17", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["error"]["type"] == "not_found_error"
    n = client(gateway).messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hello " * 100}]
    )
    assert n.input_tokens > 100


def test_recorded_claude_code_request_replays_as_a_well_formed_stream(gateway: Gateway) -> None:
    body = json.loads((Path(__file__).parent / "data" / "claude_code_request.json").read_text())
    with httpx.stream(
        "POST",
        gateway.url + "/anthropic/v1/messages",
        json=body,
        headers={
            "x-api-key": "test",
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "interleaved-thinking-2025-05-14",
        },
        timeout=30,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    events = [line[7:] for line in lines if line.startswith("event: ")]
    datas = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert [d["type"] for d in datas] == events
    opened = [d["index"] for d in datas if d["type"] == "content_block_start"]
    closed = [d["index"] for d in datas if d["type"] == "content_block_stop"]
    assert opened == closed == sorted(opened) and opened
    delta = next(d for d in datas if d["type"] == "message_delta")
    assert delta["usage"]["output_tokens"] > 0 and "cache_read_input_tokens" in delta["usage"]


def _search_result(text: str) -> dict:
    return {
        "type": "search_result",
        "source": "https://example.com/weather",
        "title": "Weather tools",
        "content": [{"type": "text", "text": text}],
        "citations": {"enabled": True},
    }


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
def test_search_results_reach_the_model_as_text(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    gw: Gateway = request.getfixturevalue(fixture)
    c = client(gw)
    # The simulator calls a tool the last user turn asks for: the search result's text did.
    ask = 'use the get_weather tool with {"city": "Paris"}'
    first = c.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=256,
        tools=TOOLS,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": [_search_result(ask)]}],  # type: ignore[list-item]
    )
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    # A tool may answer with search results too.
    second = c.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=256,
        tools=TOOLS,  # type: ignore[arg-type]
        messages=[
            {"role": "user", "content": [_search_result(ask)]},  # type: ignore[list-item]
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": use.id,
                        "content": [_search_result("18C, sunny")],  # type: ignore[list-item]
                    }
                ],
            },
        ],
    )
    assert second.stop_reason == "end_turn" and any(b.type == "text" for b in second.content)


@pytest.mark.parametrize(
    ("block", "fragment"),
    [
        ({**_search_result("x"), "source": 5}, "needs a string 'source'"),
        ({**_search_result("x"), "content": [{"type": "image"}]}, "must be a text block"),
        ({**_search_result("x"), "content": []}, "a non-empty list of text blocks"),
        ({**_search_result("x"), "citations": True}, ".citations must be an object"),
    ],
)
def test_a_malformed_search_result_is_an_anthropic_400(
    gateway: Gateway, block: dict, fragment: str
) -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [block]}],
    }
    r = httpx.post(gateway.url + "/v1/messages", json=body, headers={"x-api-key": "test"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and fragment in err["message"]
    assert "messages[0].content[0]" in err["message"]


WEATHER_TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "tools[1].name 'get_weather' is the name"),
        ({"tools": [{**WEATHER_TOOL, "name": "get weather"}]}, "tools[0].name contains ' '"),
        ({"tools": [{**WEATHER_TOOL, "name": "w\u202e"}]}, "tools[0].name contains '\\u202e'"),
        ({"tools": [{**WEATHER_TOOL, "name": "w" * 65}]}, "at most 64"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "tool", "name": "zzz"}},
            "'tool_choice.name' names the tool 'zzz', which is not in 'tools'",
        ),
    ],
)
def test_malformed_tools_and_choices_are_anthropic_400s(
    gateway: Gateway, fields: dict, fragment: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client(gateway).messages.create(
            model="claude-sonnet-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "use the get_weather tool"}],
            **fields,
        )
    err = info.value.body["error"]  # type: ignore[index]
    assert err["type"] == "invalid_request_error" and fragment in err["message"], err
