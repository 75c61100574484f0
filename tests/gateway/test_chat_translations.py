"""Chat requests the backends do not take as sent: json_schema on the hosted API;
table-driven."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from engines.translate import hosted_body, json_schema_instruction, vllm_body
from gateway.parse import Call, parse_chat
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
