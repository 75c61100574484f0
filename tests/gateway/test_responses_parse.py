"""Responses API bodies -> the internal chat body, and answers back: table-driven."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.media import media_note
from gateway.parse import Call
from gateway.protocols.responses import parse_responses, to_response
from gateway.protocols.responses_stream import StreamTranslator
from policies.errors import InvalidRequest, UpstreamUnavailable


def parse(media: Any = "note", **body: Any) -> Call:
    body = {"model": "deepseek-chat", **body}
    body.setdefault("input", "hi")
    return parse_responses(orjson.dumps(body), max_bytes=1 << 20, max_messages=100, media=media)


def test_items_become_one_chat_conversation() -> None:
    call = parse(
        instructions="Be brief.",
        input=[
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "D"}],
            },
            {"role": "user", "content": "weather?"},
            {
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "R"}],
            },
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "P"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "custom_tool_call_output", "call_id": "c2", "output": "ok"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
            {"role": "user", "content": [{"type": "input_text", "text": "thanks"}]},
        ],
    )
    assert call.body["messages"] == [
        {"role": "system", "content": "Be brief.\n\nD"},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "R",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "apply_patch", "arguments": '{"input":"P"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "ok"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "thanks"},
    ]
    assert call.protocol == "responses" and call.last_user_text == "thanks"


def test_encrypted_reasoning_goes_back_as_reasoning_content() -> None:
    call = parse(
        input=[
            {"role": "user", "content": "x"},
            {"type": "reasoning", "summary": [], "encrypted_content": "thought"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        ]
    )
    assert call.body["messages"][-1]["reasoning_content"] == "thought"


def test_tools_custom_namespace_and_built_ins() -> None:
    call = parse(
        tools=[
            {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": False},
            {
                "type": "custom",
                "name": "apply_patch",
                "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"},
            },
            {
                "type": "namespace",
                "name": "agents",
                "tools": [{"type": "function", "name": "spawn"}],
            },
            {"type": "web_search", "external_web_access": False},
        ],
        tool_choice={"type": "function", "name": "f"},
    )
    names = [t["function"]["name"] for t in call.body["tools"]]
    assert names == ["f", "apply_patch", "spawn"]
    patch = call.body["tools"][1]["function"]
    assert patch["parameters"]["required"] == ["input"] and "start: x" in patch["description"]
    assert call.body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert call.notes == ["server-tool-dropped=web_search"]
    assert call.context.custom_tools == {"apply_patch"}
    assert call.context.namespaces == {"spawn": "agents"}


@pytest.mark.parametrize(
    ("reasoning", "fields"),
    [
        (None, {}),
        ({"summary": "auto"}, {}),
        ({"effort": "none"}, {"thinking": {"type": "disabled"}}),
        ({"effort": "low"}, {"reasoning_effort": "low"}),
        ({"effort": "max"}, {"reasoning_effort": "max"}),
    ],
)
def test_reasoning_effort(reasoning: Any, fields: dict[str, Any]) -> None:
    body = parse(**({"reasoning": reasoning} if reasoning else {})).body
    assert {k: body[k] for k in ("thinking", "reasoning_effort") if k in body} == fields


def test_text_formats_and_media() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    call = parse(text={"format": {"type": "json_schema", "name": "x", "schema": schema}})
    assert call.body["response_format"] == {"type": "json_object"} and call.json_mode
    assert '"properties"' in call.body["messages"][0]["content"]
    image = {"type": "input_image", "image_url": "data:image/png;base64,AA=="}
    noted = parse(
        input=[{"role": "user", "content": [{"type": "input_text", "text": "see"}, image]}]
    )
    assert noted.body["messages"][0]["content"] == "see\n" + media_note("image")
    assert noted.notes == ["image-as-text=1"]
    with pytest.raises(InvalidRequest, match="text only"):
        parse(media="reject", input=[{"role": "user", "content": [image]}])


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"previous_response_id": "resp_1"}, "stores no responses"),
        ({"input": []}, "'input'"),
        ({"input": [{"type": "function_call_output", "call_id": "x", "output": ""}]}, "'x'"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "item_reference"),
        (
            {"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]},
            "code_interpreter",
        ),
        ({"tools": [{"type": "function"}]}, "tools[0]"),
        ({"tool_choice": "sometimes", "tools": [{"type": "function", "name": "f"}]}, "tool_choice"),
        ({"text": {"format": {"type": "xml"}}}, "text.format"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"input": [{"role": "critic", "content": "x"}]}, "role"),
    ],
)
def test_bad_bodies_are_400s_that_say_why(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(**body)
    assert fragment in info.value.message


def _answer(finish: str, message: dict[str, Any]) -> dict[str, Any]:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "prompt_cache_hit_tokens": 4,
        "prompt_cache_miss_tokens": 6,
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    return {"choices": [{"message": message, "finish_reason": finish}], "usage": usage}


def test_answers_become_response_objects() -> None:
    call = parse(
        tools=[{"type": "custom", "name": "apply_patch"}], include=["reasoning.encrypted_content"]
    )
    tool_call = {
        "id": "c",
        "type": "function",
        "function": {"name": "apply_patch", "arguments": '{"input": "P"}'},
    }
    resp = to_response(
        _answer(
            "tool_calls", {"reasoning_content": "R", "content": None, "tool_calls": [tool_call]}
        ),
        call,
    )
    assert [o["type"] for o in resp["output"]] == ["reasoning", "custom_tool_call"]
    assert resp["output"][0]["encrypted_content"] == "R" and resp["output"][1]["input"] == "P"
    assert resp["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 15,
    }
    cut = to_response(_answer("length", {"content": "a"}), call)
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {
        "reason": "max_output_tokens"
    }
    with pytest.raises(UpstreamUnavailable):
        to_response(_answer("insufficient_system_resource", {"content": "a"}), call)


def test_stream_events_are_numbered_and_items_closed_in_order() -> None:
    tr = StreamTranslator(parse().context, "deepseek-chat")
    out = tr.start()
    for delta in ({"reasoning_content": "r"}, {"content": "a"}, {"content": "b"}):
        out += tr.feed({"choices": [{"delta": delta}]})
    out += tr.feed({"choices": [{"delta": {}, "finish_reason": "stop"}]}) + tr.end()
    events = [orjson.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["reasoning", "message"]
    assert final["output"][1]["content"][0]["text"] == "ab"
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [a["status"] for a in added] == ["in_progress", "in_progress"]
    assert [d["status"] for d in done] == ["completed", "completed"]
    assert [o["status"] for o in final["output"]] == ["completed", "completed"]


def test_a_reasoning_item_has_the_status_of_the_other_items() -> None:
    """OpenAI's reasoning items carry ``status`` (in_progress, completed, incomplete) like
    the message and call items, in the response and in its stream."""
    resp = to_response(_answer("stop", {"reasoning_content": "R", "content": "A"}), parse())
    assert [(o["type"], o["status"]) for o in resp["output"]] == [
        ("reasoning", "completed"),
        ("message", "completed"),
    ]


LENGTH_CUT = [
    ({"reasoning_content": "R", "content": "half a"}, ["completed", "incomplete"]),
    (
        {
            "content": "let me",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"q'}}
            ],
        },
        ["completed", "incomplete"],
    ),
    (
        {
            "reasoning_content": "R",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"q'}}
            ],
        },
        ["completed", "incomplete"],
    ),
    ({"reasoning_content": "R"}, ["incomplete"]),  # cut while reasoning
]


@pytest.mark.parametrize(("message", "statuses"), LENGTH_CUT)
def test_an_answer_cut_by_the_output_limit_is_incomplete(
    message: dict[str, Any], statuses: list[str | None]
) -> None:
    """``max_output_tokens`` reached: the response and the item it was writing are
    incomplete, as OpenAI's Responses API says."""
    call = parse(max_output_tokens=3, tools=[{"type": "function", "name": "f"}])
    resp = to_response(_answer("length", message), call)
    assert resp["status"] == "incomplete"
    assert resp["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [o.get("status") for o in resp["output"]] == statuses


@pytest.mark.parametrize(("message", "statuses"), LENGTH_CUT)
def test_a_stream_cut_by_the_output_limit_ends_incomplete(
    message: dict[str, Any], statuses: list[str | None]
) -> None:
    call = parse(max_output_tokens=3, tools=[{"type": "function", "name": "f"}])
    tr = StreamTranslator(call.context, "deepseek-chat")
    out = tr.start()
    for key in ("reasoning_content", "content"):
        if message.get(key):
            out += tr.feed({"choices": [{"delta": {key: message[key]}}]})
    for k, tc in enumerate(message.get("tool_calls") or ()):
        out += tr.feed({"choices": [{"delta": {"tool_calls": [{"index": k, **tc}]}}]})
    out += tr.feed({"choices": [{"delta": {}, "finish_reason": "length"}]}) + tr.end()
    events = [orjson.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "response.incomplete" and "response.completed" not in kinds
    final = events[-1]["response"]
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [d.get("status") for d in done] == statuses
    assert [o.get("status") for o in final["output"]] == statuses
    assert "response.function_call_arguments.done" not in kinds


R_TOOLS = [
    {"type": "function", "name": "a", "parameters": {"type": "object"}},
    {"type": "function", "name": "b", "parameters": {"type": "object"}},
    {"type": "custom", "name": "patch"},
    {"type": "web_search"},
]


@pytest.mark.parametrize(
    ("choice", "names", "sent", "notes"),
    [
        (
            {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "b"}],
            },
            ["b"],
            "required",
            ["server-tool-dropped=web_search", "allowed-tools-as-subset=1/3"],
        ),
        (
            {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "custom", "name": "patch"}, {"type": "function", "name": "a"}],
            },
            ["a", "patch"],
            "auto",
            ["server-tool-dropped=web_search", "allowed-tools-as-subset=2/3"],
        ),
        (
            {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "a"}, {"type": "web_search"}],
            },
            ["a"],
            "auto",
            ["server-tool-dropped=web_search", "allowed-tools-as-subset=1/3"],
        ),
        (
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "web_search"}]},
            ["a", "b", "patch"],
            "none",  # only a tool nobody here runs is allowed
            ["server-tool-dropped=web_search", "allowed-tools-as-subset=0"],
        ),
        (
            {"type": "web_search"},
            ["a", "b", "patch"],
            "auto",
            ["tool-choice-downgraded=web_search", "server-tool-dropped=web_search"],
        ),
        (
            {"type": "web_search_preview"},
            ["a", "b", "patch"],
            "auto",
            ["tool-choice-downgraded=web_search_preview", "server-tool-dropped=web_search"],
        ),
        (
            {"type": "file_search"},
            ["a", "b", "patch"],
            "auto",
            ["tool-choice-downgraded=file_search", "server-tool-dropped=web_search"],
        ),
        (
            {"type": "custom", "name": "patch"},
            ["a", "b", "patch"],
            {"type": "function", "function": {"name": "patch"}},
            ["server-tool-dropped=web_search"],
        ),
    ],
)
def test_tool_choices_reach_the_backend_in_its_terms(
    choice: Any, names: list[str], sent: Any, notes: list[str]
) -> None:
    call = parse(tools=R_TOOLS, tool_choice=choice)
    assert [t["function"]["name"] for t in call.body["tools"]] == names
    assert call.body["tool_choice"] == sent
    assert call.notes == notes
    assert call.context.echo["tool_choice"] == choice  # the client's own, echoed back


def test_a_server_tool_choice_without_tools_is_no_error() -> None:
    call = parse(tool_choice={"type": "web_search_preview"})
    assert "tools" not in call.body and "tool_choice" not in call.body
    assert call.notes == ["tool-choice-downgraded=web_search_preview"]


@pytest.mark.parametrize(
    ("choice", "fragment"),
    [
        ({"type": "allowed_tools", "mode": "auto"}, "'tool_choice.tools' must be a non-empty list"),
        ({"type": "allowed_tools", "mode": "auto", "tools": []}, "non-empty list"),
        (
            {"type": "allowed_tools", "mode": "any", "tools": [{"type": "function", "name": "a"}]},
            "'tool_choice.mode' must be auto or required, not 'any'",
        ),
        (
            {"type": "allowed_tools", "tools": [{"type": "function", "name": "a"}]},
            "'tool_choice.mode' must be auto or required, not null",
        ),
        (
            {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function"}]},
            "'tool_choice.tools[0]' must be",
        ),
        (
            {"type": "allowed_tools", "mode": "auto", "tools": ["a"]},
            "'tool_choice.tools[0]' must be",
        ),
        (
            {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "z"}]},
            "allows the tool 'z', which is not in 'tools'",
        ),
        ({"type": "function"}, "'tool_choice' must be auto, none, required"),
        ({"type": "telepathy"}, "'tool_choice' must be auto, none, required"),
        ([], "'tool_choice' must be auto, none, required"),
    ],
)
def test_bad_tool_choices_are_400s_naming_the_field(choice: Any, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(tools=R_TOOLS, tool_choice=choice)
    assert fragment in info.value.message and info.value.param == "tool_choice"


def test_allowed_tools_naming_a_tool_with_no_tools_is_a_400() -> None:
    choice = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "a"}]}
    with pytest.raises(InvalidRequest, match="which is not in 'tools'"):
        parse(tool_choice=choice)
