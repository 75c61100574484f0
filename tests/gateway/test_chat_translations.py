"""Chat requests the backends do not take as sent: json_schema on the hosted API, and
custom tool calls coming back; table-driven."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from engines.translate import hosted_body, json_schema_instruction, vllm_body
from gateway.parse import Call, parse_chat
from gateway.protocols.chat import _CallIds, _CustomCalls, _restore_custom_calls, _tool_event
from gateway.protocols.responses import parse_responses
from policies.options import NON_THINKING, Mode

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}


def chat(**body: Any) -> Call:
    body = {"model": "deepseek-chat", **body}
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return parse_chat(orjson.dumps(body), max_bytes=1 << 20, max_messages=100)


@pytest.mark.parametrize(
    ("messages", "fmt", "expected"),
    [
        (
            [{"role": "user", "content": "hi"}],
            JSON_SCHEMA,
            [{"role": "system", "content": json_schema_instruction(SCHEMA)}],
        ),
        (
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
            JSON_SCHEMA,
            [{"role": "system", "content": "Be brief.\n\n" + json_schema_instruction(SCHEMA)}],
        ),
        (
            [
                {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": "hi"},
            ],
            JSON_SCHEMA,
            [
                {
                    "role": "developer",
                    "content": [
                        {"type": "text", "text": "Be brief."},
                        {"type": "text", "text": json_schema_instruction(SCHEMA)},
                    ],
                }
            ],
        ),
        (
            [{"role": "user", "content": "hi"}],
            {"type": "json_schema", "json_schema": {"name": "x"}},  # no schema: JSON only
            [{"role": "system", "content": "Answer with one JSON object only."}],
        ),
    ],
)
@pytest.mark.parametrize("mode", [NON_THINKING, Mode(True, "high")])
def test_json_schema_is_json_mode_with_the_schema_in_the_prompt_on_the_hosted_api(
    messages: list[dict[str, Any]], fmt: dict[str, Any], expected: list[Any], mode: Mode
) -> None:
    call = chat(messages=messages, response_format=fmt)
    before = copy.deepcopy(call.body)
    hosted = hosted_body(call.body, mode, "deepseek-v4-flash", "chat", stream=False)
    assert hosted["response_format"] == {"type": "json_object"}
    assert hosted["messages"][: len(expected)] == expected
    assert hosted["messages"][len(expected) :] == messages[len(messages) - 1 :]
    assert "json" in orjson.dumps(hosted["messages"]).decode().lower()  # JSON mode needs it
    # vLLM decodes to the schema itself; the body, reused on a failover, is untouched.
    assert vllm_body(call.body, mode, "m", "chat", stream=False)["response_format"] == fmt
    assert call.body == before


@pytest.mark.parametrize("fmt", [None, {"type": "text"}, {"type": "json_object"}])
def test_other_formats_reach_the_hosted_api_as_sent(fmt: Any) -> None:
    call = chat(response_format=fmt)
    hosted = hosted_body(call.body, NON_THINKING, "deepseek-v4-flash", "chat", stream=False)
    assert hosted.get("response_format") == fmt
    assert hosted["messages"] == call.body["messages"]


def test_the_responses_json_schema_prompt_is_the_same_instruction() -> None:
    body = {
        "model": "deepseek-chat",
        "input": "hi",
        "text": {"format": {"type": "json_schema", "name": "x", "schema": SCHEMA}},
    }
    call = parse_responses(orjson.dumps(body), max_bytes=1 << 20, max_messages=10)
    assert call.body["messages"][0]["content"] == json_schema_instruction(SCHEMA)


# ---- custom tool calls go back as custom calls --------------------------------------------------


def _fn_call(call_id: str, name: str, args: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ('{"input": "*** Begin Patch"}', "*** Begin Patch"),
        ('{"input": ""}', ""),
        ('{"query": "x"}', '{"query": "x"}'),  # not the asked shape: the arguments as written
        ("not json", "not json"),
        ("", ""),
    ],
)
def test_a_custom_tools_call_goes_back_as_a_custom_call(args: str, expected: str) -> None:
    body = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [_fn_call("c1", "patch", args), _fn_call("c2", "f", "{}")],
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    _restore_custom_calls(body, frozenset({"patch"}))
    calls = body["choices"][0]["message"]["tool_calls"]
    assert calls[0] == {
        "id": "c1",
        "type": "custom",
        "custom": {"name": "patch", "input": expected},
    }
    assert calls[1] == _fn_call("c2", "f", "{}")


def _chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    body = {"id": "x", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _tool_delta(k: int, args: str, name: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": k, "function": {"arguments": args}}
    if name is not None:
        call.update(id=f"c{k}", type="function")
        call["function"]["name"] = name
    return {"tool_calls": [call]}


def _deltas(events: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for event in events:
        for line in event.split(b"\n\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                out.extend(c["delta"] for c in orjson.loads(line[6:])["choices"])
    return out


@pytest.mark.parametrize("finished", [True, False])
def test_a_streamed_custom_call_is_sent_whole_when_its_choice_finishes(finished: bool) -> None:
    calls = _CustomCalls(frozenset({"patch"}))
    upstream = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk(_tool_delta(0, "", "f")),
        _chunk(_tool_delta(0, "{}")),
        _chunk(_tool_delta(1, '{"inp', "patch")),
        _chunk(_tool_delta(1, 'ut": "a\\nb"}')),
    ]
    if finished:
        upstream.append(_chunk({}, "tool_calls"))
    upstream.append(b"data: [DONE]\n\n")
    ids = _CallIds()
    deltas = _deltas([_tool_event(ids, calls, e) for e in upstream])
    sent = [c for d in deltas for c in d.get("tool_calls", ())]
    assert [c.get("type") for c in sent] == ["function", None, "custom"]
    assert sent[-1] == {
        "index": 1,
        "id": "c1",
        "type": "custom",
        "custom": {"name": "patch", "input": "a\nb"},
    }
    assert all("tool_calls" not in d for d in deltas[3:5])  # its fragments were held back
