"""Anthropic prefill (a final assistant turn) as DeepSeek's chat prefix completion."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from engines.deepseek import _is_prefix_completion
from engines.translate import hosted_body, vllm_body
from gateway.protocols.anthropic import parse_messages
from policies.errors import InvalidRequest
from policies.options import NON_THINKING

ASK = {"role": "user", "content": "Reply in JSON"}


def parse(**body: Any) -> Any:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, **body}
    return parse_messages(orjson.dumps(body), max_bytes=1 << 20, max_messages=100)


@pytest.mark.parametrize(
    "prefill", ['{"a":', [{"type": "text", "text": '{"a'}, {"type": "text", "text": '":'}]]
)
def test_a_final_assistant_turn_is_a_prefix_to_continue(prefill: Any) -> None:
    call = parse(messages=[ASK, {"role": "assistant", "content": prefill}])
    last = call.body["messages"][-1]
    assert last == {"role": "assistant", "content": '{"a":', "prefix": True}
    assert call.body["thinking"] == {"type": "disabled"}


def test_the_prefix_reaches_either_backend_as_a_continuation() -> None:
    body = parse(messages=[ASK, {"role": "assistant", "content": '{"a":'}]).body
    hosted = hosted_body(body, NON_THINKING, "deepseek-v4-flash", "chat", False)
    assert hosted["messages"][-1]["prefix"] is True and _is_prefix_completion(hosted)
    vllm = vllm_body(body, NON_THINKING, "deepseek-ai/DeepSeek-V4-Flash", "chat", False)
    assert vllm["continue_final_message"] is True and vllm["add_generation_prompt"] is False


def test_earlier_assistant_turns_and_a_final_user_turn_are_not_prefixes() -> None:
    call = parse(messages=[ASK, {"role": "assistant", "content": "{}"}, ASK])
    assert not any("prefix" in m for m in call.body["messages"])
    assert not _is_prefix_completion(call.body)


def test_a_prefill_drops_its_thinking_and_an_empty_final_turn_is_left_out() -> None:
    thought = {"type": "thinking", "thinking": "hm", "signature": "s"}
    call = parse(
        messages=[ASK, {"role": "assistant", "content": [thought, {"type": "text", "text": "{"}]}]
    )
    assert call.body["messages"][-1] == {"role": "assistant", "content": "{", "prefix": True}
    empty = parse(messages=[ASK, {"role": "assistant", "content": ""}])
    assert empty.body["messages"] == [ASK]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            {"messages": [ASK, {"role": "assistant", "content": "{\n"}]},
            "cannot end with trailing whitespace",
        ),
        (
            {
                "messages": [ASK, {"role": "assistant", "content": "{"}],
                "thinking": {"type": "enabled", "budget_tokens": 2048},
            },
            "not allowed with thinking",
        ),
        (
            {
                "messages": [ASK, {"role": "assistant", "content": "{"}],
                "thinking": {"type": "adaptive"},
            },
            "not allowed with thinking",
        ),
        (
            {
                "messages": [
                    ASK,
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                    },
                ]
            },
            "without tool_result",
        ),
    ],
)
def test_prefills_anthropic_refuses_are_400s(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(**body)
    assert fragment in info.value.message and info.value.param == "messages"
