"""Parallel tool calls whose pieces interleave (an OpenAI-shaped stream may go on with call
0's arguments after call 1 began): each protocol that writes its items one after another
(Anthropic content blocks, Responses output items) gets every call whole, in order."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.protocols.anthropic import StreamTranslator as AnthropicStream
from gateway.protocols.responses import parse_responses
from gateway.protocols.responses_stream import StreamTranslator as ResponsesStream
from gateway.protocols.tool_order import Args, Begin, CallOrder, End


def piece(k: int, args: str = "", name: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": k, "function": {"arguments": args}}
    if name is not None:
        call["id"] = f"call_{k}"
        call["function"]["name"] = name
    return call


INTERLEAVED = [
    piece(0, "", "read"),
    piece(0, '{"p":'),
    piece(1, "", "read"),
    piece(1, '{"p":"b"}'),
    piece(0, '"a"}'),
    piece(2, '{"p":', "grep"),
    piece(2, '"c"}'),
]
SEQUENTIAL = [
    piece(0, "", "read"),
    piece(0, '{"p":'),
    piece(0, '"a"}'),
    piece(1, '{"p":"b"}', "read"),
    piece(2, "", "grep"),
    piece(2, '{"p":"c"}'),
]
WHOLE = {0: ("read", {"p": "a"}), 1: ("read", {"p": "b"}), 2: ("grep", {"p": "c"})}


def replay(pieces: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    order = CallOrder()
    live = [s for p in pieces for s in order.feed(p)]
    return live, live + order.finish()


@pytest.mark.parametrize("pieces", [INTERLEAVED, SEQUENTIAL], ids=["interleaved", "sequential"])
def test_every_call_is_written_whole_in_order(pieces: list[dict[str, Any]]) -> None:
    _, steps = replay(pieces)
    calls: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    open_: int | None = None
    for s in steps:
        if isinstance(s, Begin):
            assert open_ is None  # one call open at a time
            open_, names[s.index] = s.index, s.name
            calls[s.index] = []
        elif isinstance(s, Args):
            assert s.index == open_
            calls[s.index].append(s.text)
        else:
            assert s.index == open_
            open_ = None
    assert open_ is None and list(calls) == [0, 1, 2]
    assert {k: (names[k], orjson.loads("".join(v))) for k, v in calls.items()} == WHOLE


def test_a_sequential_stream_is_written_as_it_comes() -> None:
    live, _ = replay(SEQUENTIAL)
    assert live == [
        Begin(0, "call_0", "read"),
        Args(0, '{"p":'),
        Args(0, '"a"}'),
        End(0),
        Begin(1, "call_1", "read"),
        Args(1, '{"p":"b"}'),
        End(1),
        Begin(2, "call_2", "grep"),
        Args(2, '{"p":"c"}'),
    ]


def test_a_later_call_waits_until_the_one_written_is_complete() -> None:
    live, _ = replay(INTERLEAVED[:4])
    assert live == [Begin(0, "call_0", "read"), Args(0, '{"p":')]  # call 1 waits
    order = CallOrder()
    for p in INTERLEAVED[:4]:
        order.feed(p)
    assert order.feed(INTERLEAVED[4]) == [
        Args(0, '"a"}'),
        End(0),
        Begin(1, "call_1", "read"),
        Args(1, '{"p":"b"}'),
    ]


def _events(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]


def _chunks(pieces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"choices": [{"delta": {"content": "Reading."}}]}]
    out += [{"choices": [{"delta": {"tool_calls": [p]}}]} for p in pieces]
    out.append({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
    return out


@pytest.mark.parametrize("pieces", [INTERLEAVED, SEQUENTIAL], ids=["interleaved", "sequential"])
def test_anthropic_blocks_are_whole_and_never_written_after_their_stop(
    pieces: list[dict[str, Any]],
) -> None:
    tr = AnthropicStream("claude-sonnet-4-5")
    raw = tr.start() + b"".join(tr.feed(c) for c in _chunks(pieces)) + tr.end()
    events = _events(raw)
    stopped: set[int] = set()
    blocks: dict[int, dict[str, Any]] = {}
    inputs: dict[int, str] = {}
    for e in events:
        if e["type"] == "content_block_start":
            assert all(i in stopped for i in blocks)  # the one before is stopped
            blocks[e["index"]] = e["content_block"]
            inputs[e["index"]] = ""
        elif e["type"] == "content_block_delta":
            assert e["index"] not in stopped
            inputs[e["index"]] += e["delta"].get("partial_json", "")
        elif e["type"] == "content_block_stop":
            stopped.add(e["index"])
    assert set(stopped) == set(blocks) == {0, 1, 2, 3}
    tools = [(blocks[i]["name"], orjson.loads(inputs[i])) for i in (1, 2, 3)]
    assert tools == [WHOLE[0], WHOLE[1], WHOLE[2]]
    assert [blocks[i]["id"] for i in (1, 2, 3)] == ["call_0", "call_1", "call_2"]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize("pieces", [INTERLEAVED, SEQUENTIAL], ids=["interleaved", "sequential"])
def test_responses_function_calls_are_whole_in_their_done_events_and_the_response(
    pieces: list[dict[str, Any]],
) -> None:
    body = {"model": "deepseek-chat", "input": "hi"}
    call = parse_responses(orjson.dumps(body), max_bytes=1 << 20, max_messages=100, media="note")
    tr = ResponsesStream(call.context, "deepseek-chat")
    raw = tr.start() + b"".join(tr.feed(c) for c in _chunks(pieces)) + tr.end()
    events = _events(raw)
    done_args = [e["arguments"] for e in events if e["type"].endswith("arguments.done")]
    assert [orjson.loads(a) for a in done_args] == [WHOLE[k][1] for k in (0, 1, 2)]
    deltas: dict[int, str] = {}
    open_: set[int] = set()
    for e in events:
        if e["type"] == "response.output_item.added":
            assert not open_  # items one after another
            open_.add(e["output_index"])
        elif e["type"] == "response.function_call_arguments.delta":
            assert e["output_index"] in open_
            deltas[e["output_index"]] = deltas.get(e["output_index"], "") + e["delta"]
        elif e["type"] == "response.output_item.done":
            open_.discard(e["output_index"])
    assert [orjson.loads(deltas[i]) for i in (1, 2, 3)] == [WHOLE[k][1] for k in (0, 1, 2)]
    final = events[-1]
    assert final["type"] == "response.completed"
    out = final["response"]["output"]
    assert [(o["name"], orjson.loads(o["arguments"])) for o in out[1:]] == [
        WHOLE[0],
        WHOLE[1],
        WHOLE[2],
    ]
    assert [o["call_id"] for o in out[1:]] == ["call_0", "call_1", "call_2"]


def _stream(*deltas: dict[str, Any], finish: str = "tool_calls") -> list[dict[str, Any]]:
    out = [{"choices": [{"delta": d}]} for d in deltas]
    out.append({"choices": [{"delta": {}, "finish_reason": finish}]})
    return out


def call(k: int, args: str = "", name: str | None = None) -> dict[str, Any]:
    return {"tool_calls": [piece(k, args, name)]}


# Text and reasoning between the pieces of unfinished calls: they wait for the calls.
MIXED = _stream(
    {"reasoning_content": "think "},
    call(0, '{"city":', "weather"),
    call(1, "", "weather"),
    {"content": "Hello "},
    call(1, '{"city":"B"}'),
    {"reasoning_content": "more"},
    call(0, '"A"}'),
    {"content": "world"},
)
# Cut by the output limit with two calls unfinished.
CUT = _stream(
    call(0, '{"city":"A', "weather"),
    call(1, '{"city":"B"}', "weather"),
    call(2, '{"ci', "weather"),
    finish="length",
)
# A call whose name comes in a later piece.
NAME_LATE = _stream(
    {"tool_calls": [{"index": 0, "id": "call_0", "function": {"arguments": ""}}]},
    call(0, '{"city":"A"}', "weather"),
)


def _anthropic_blocks(chunks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    tr = AnthropicStream("claude-sonnet-4-5")
    events = _events(tr.start() + b"".join(tr.feed(c) for c in chunks) + tr.end())
    blocks: list[dict[str, Any]] = []
    stopped: set[int] = set()
    for e in events:
        if e["type"] == "content_block_start":
            assert len(stopped) == len(blocks)  # the one before is stopped
            blocks.append(dict(e["content_block"], text="", thinking="", partial=""))
        elif e["type"] == "content_block_delta":
            assert e["index"] == len(blocks) - 1 and e["index"] not in stopped
            d = e["delta"]
            key = {"text_delta": "text", "thinking_delta": "thinking"}.get(d["type"], "partial")
            blocks[-1][key] += d.get("text") or d.get("thinking") or d.get("partial_json") or ""
        elif e["type"] == "content_block_stop":
            stopped.add(e["index"])
    assert len(stopped) == len(blocks)
    return blocks, events[-2]


def test_text_between_unfinished_calls_waits_for_them_in_anthropic_blocks() -> None:
    blocks, end = _anthropic_blocks(MIXED)
    tools = [b for b in blocks if b["type"] == "tool_use"]
    assert [orjson.loads(b["partial"]) for b in tools] == [{"city": "A"}, {"city": "B"}]
    assert "".join(b["text"] for b in blocks if b["type"] == "text") == "Hello world"
    assert "".join(b["thinking"] for b in blocks if b["type"] == "thinking") == "think more"
    assert end["delta"]["stop_reason"] == "tool_use"


def _responses(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    body = {"model": "deepseek-chat", "input": "hi"}
    c = parse_responses(orjson.dumps(body), max_bytes=1 << 20, max_messages=100, media="note")
    tr = ResponsesStream(c.context, "deepseek-chat")
    events = _events(tr.start() + b"".join(tr.feed(x) for x in chunks) + tr.end())
    open_: set[int] = set()
    for e in events:
        if e["type"] == "response.output_item.added":
            assert not open_  # items one after another
            open_.add(e["output_index"])
        elif e["type"].endswith(".delta"):
            assert e["output_index"] in open_
        elif e["type"] == "response.output_item.done":
            open_.remove(e["output_index"])
    assert not open_
    return events


def test_text_between_unfinished_calls_waits_for_them_in_responses_items() -> None:
    events = _responses(MIXED)
    out = events[-1]["response"]["output"]
    calls = [o for o in out if o["type"] == "function_call"]
    assert [orjson.loads(o["arguments"]) for o in calls] == [{"city": "A"}, {"city": "B"}]
    text = "".join(p["text"] for o in out if o["type"] == "message" for p in o["content"])
    assert text == "Hello world"


def test_a_cut_answer_leaves_every_unfinished_call_incomplete() -> None:
    out = _responses(CUT)[-1]
    assert out["type"] == "response.incomplete"
    calls = out["response"]["output"]
    assert [(o["arguments"], o["status"]) for o in calls] == [
        ('{"city":"A', "incomplete"),
        ('{"city":"B"}', "completed"),
        ('{"ci', "incomplete"),
    ]


def test_a_call_is_begun_once_its_name_is_known() -> None:
    blocks, _ = _anthropic_blocks(NAME_LATE)
    assert [(b["name"], b["id"]) for b in blocks] == [("weather", "call_0")]
    out = _responses(NAME_LATE)[-1]["response"]["output"]
    assert [(o["name"], o["call_id"]) for o in out] == [("weather", "call_0")]
