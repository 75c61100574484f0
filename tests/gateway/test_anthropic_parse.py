"""Anthropic Messages -> the internal chat body: the rules agents rely on, table-driven."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.media import media_note
from gateway.protocols.anthropic import parse_messages, signature_of, to_message
from policies.errors import InvalidRequest, UpstreamUnavailable


def parse(media: Any = "note", **body: Any) -> Any:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, **body}
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return parse_messages(orjson.dumps(body), max_bytes=1 << 20, max_messages=100, media=media)


def test_system_messages_are_merged_into_the_system_prompt_in_order() -> None:
    call = parse(
        system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "C"},
            {"role": "assistant", "content": "yo"},
            {"role": "system", "content": [{"type": "text", "text": "D"}]},
            {"role": "user", "content": "again"},
        ],
    )
    msgs = call.body["messages"]
    assert msgs[0] == {"role": "system", "content": "A\nB\n\nC\n\nD"}
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]


@pytest.mark.parametrize(
    ("thinking", "effort", "fields"),
    [
        (None, None, {"thinking": {"type": "disabled"}}),
        ({"type": "disabled"}, "high", {"thinking": {"type": "disabled"}}),
        ({"type": "enabled", "budget_tokens": 2048}, None, {"thinking": {"type": "enabled"}}),
        (
            {"type": "enabled", "budget_tokens": 32000},
            None,
            {"thinking": {"type": "enabled"}, "reasoning_effort": "max"},
        ),
        (
            {"type": "enabled", "budget_tokens": 2048},
            "max",
            {"thinking": {"type": "enabled"}, "reasoning_effort": "max"},
        ),
        # adaptive: the router decides, except where the effort settles it
        ({"type": "adaptive"}, None, {}),
        ({"type": "adaptive"}, "high", {}),
        ({"type": "adaptive"}, "medium", {}),
        ({"type": "adaptive"}, "low", {"thinking": {"type": "disabled"}}),
        ({"type": "adaptive"}, "max", {"reasoning_effort": "max"}),
    ],
)
def test_thinking_and_effort(thinking: Any, effort: str | None, fields: dict[str, Any]) -> None:
    extra: dict[str, Any] = {}
    if thinking is not None:
        extra["thinking"] = thinking
    if effort is not None:
        extra["output_config"] = {"effort": effort}
    body = parse(**extra).body
    assert {k: body[k] for k in ("thinking", "reasoning_effort") if k in body} == fields


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"thinking": {"type": "sometimes"}}, "adaptive"),
        ({"output_config": {"effort": "extreme"}}, "output_config.effort"),
        ({"tools": [{"type": "bash_unknown", "name": "x"}]}, None),
        ({"tools": [{"type": "frobnicate_1", "name": "x"}]}, "frobnicate_1"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
    ],
)
def test_bad_fields_are_400s_that_say_why(body: dict[str, Any], fragment: str | None) -> None:
    if fragment is None:  # an Anthropic-run tool type: dropped, not refused
        assert parse(**body).notes == ["server-tool-dropped=bash_unknown"]
        return
    with pytest.raises(InvalidRequest) as info:
        parse(**body)
    assert fragment in info.value.message


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
PDF = {
    "type": "document",
    "source": {"type": "base64", "media_type": "application/pdf", "data": ""},
}
TOOL_TURN = {
    "role": "assistant",
    "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "a.png"}}],
}


def test_images_and_documents_become_visible_notes_and_are_counted() -> None:
    call = parse(
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE, PDF]},
            TOOL_TURN,
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [IMAGE]}],
            },
        ]
    )
    msgs = call.body["messages"]
    assert msgs[0]["content"] == "\n".join(["look", media_note("image"), media_note("document")])
    assert msgs[-1] == {"role": "tool", "tool_call_id": "t1", "content": media_note("image")}
    assert sorted(call.notes) == ["document-as-text=1", "image-as-text=2"]


def test_plain_text_documents_are_text_whatever_the_policy() -> None:
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "T"}}
    call = parse(media="reject", messages=[{"role": "user", "content": [doc]}])
    assert call.body["messages"][-1]["content"] == "T" and not call.notes


def test_media_policy_reject_refuses_with_a_clear_message() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(media="reject", messages=[{"role": "user", "content": [IMAGE]}])
    assert "image" in info.value.message and "text only" in info.value.message


def test_server_tools_are_dropped_with_a_note_and_custom_tools_kept() -> None:
    call = parse(
        tools=[
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
            {"name": "Read", "input_schema": {"type": "object", "properties": {}}},
        ],
        tool_choice={"type": "auto"},
    )
    assert [t["function"]["name"] for t in call.body["tools"]] == ["Read"]
    assert call.notes == ["server-tool-dropped=web_search_20250305"]
    only_server = parse(tools=[{"type": "web_fetch_20250910", "name": "web_fetch"}])
    assert "tools" not in only_server.body and not only_server.has_tools


def _answer(finish: str, **choice: Any) -> dict[str, Any]:
    message = {"role": "assistant", "content": "ok", "reasoning_content": "think"}
    return {"choices": [{"message": message, "finish_reason": finish, **choice}]}


@pytest.mark.parametrize(
    ("answer", "stops", "stop_reason", "sequence"),
    [
        (_answer("stop"), [], "end_turn", None),
        (_answer("stop", stop_reason="END"), ["END"], "stop_sequence", "END"),
        (_answer("stop", stop_reason=None), ["END"], "end_turn", None),  # hosted: not told
        (_answer("stop", stop_reason=7), ["END"], "end_turn", None),  # a stop token id
        (_answer("length"), [], "max_tokens", None),
        (_answer("tool_calls"), [], "tool_use", None),
    ],
)
def test_stop_reasons(
    answer: dict[str, Any], stops: list[str], stop_reason: str, sequence: str | None
) -> None:
    msg = to_message(answer, "claude-x", stops)
    assert (msg["stop_reason"], msg["stop_sequence"]) == (stop_reason, sequence)
    assert msg["content"][0] == {
        "type": "thinking",
        "thinking": "think",
        "signature": signature_of("think"),
    }


def test_a_cut_answer_is_an_error_not_an_end_turn() -> None:
    with pytest.raises(UpstreamUnavailable) as info:
        to_message(_answer("insufficient_system_resource"), "claude-x", [])
    assert "insufficient_system_resource" in info.value.message


def _search_result(**fields: Any) -> dict[str, Any]:
    return {
        "type": "search_result",
        "source": "https://example.com/a",
        "title": "A page",
        "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
        "citations": {"enabled": True},
        **fields,
    }


SEARCH_TEXT = "Search result: A page\nSource: https://example.com/a\nfirst\nsecond"


@pytest.mark.parametrize(
    ("messages", "index", "expected"),
    [
        (
            [{"role": "user", "content": [_search_result(), {"type": "text", "text": "why?"}]}],
            -1,
            {"role": "user", "content": SEARCH_TEXT + "\nwhy?"},
        ),
        (
            [
                {"role": "user", "content": "search"},
                TOOL_TURN,
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [_search_result(), _search_result(title="B")],
                        }
                    ],
                },
            ],
            -1,
            {
                "role": "tool",
                "tool_call_id": "t1",
                "content": SEARCH_TEXT + "\n" + SEARCH_TEXT.replace("A page", "B"),
            },
        ),
        (
            [{"role": "user", "content": [_search_result(citations=None)]}],
            -1,
            {"role": "user", "content": SEARCH_TEXT},
        ),
    ],
)
def test_search_results_are_text_for_the_model(
    messages: list[Any], index: int, expected: dict[str, Any]
) -> None:
    call = parse(media="reject", messages=messages)
    assert call.body["messages"][index] == expected
    assert not call.notes


@pytest.mark.parametrize(
    ("block", "fragment"),
    [
        (_search_result(source=None), "needs a string 'source'"),
        (_search_result(title=3), "a string 'title'"),
        (_search_result(content="text"), "'content', a non-empty list of text blocks"),
        (_search_result(content=[]), "'content', a non-empty list of text blocks"),
        (_search_result(citations=True), ".citations must be an object"),
        (_search_result(citations=[]), ".citations must be an object"),
        (_search_result(citations={"enabled": "yes"}), ".citations.enabled must be true or"),
        (_search_result(content=[{"type": "image"}]), ".content[0] must be a text block"),
        (_search_result(content=[{"type": "text", "text": 1}]), ".content[0] must be a text block"),
    ],
)
def test_bad_search_results_are_400s_that_say_why(block: dict[str, Any], fragment: str) -> None:
    for messages in (
        [{"role": "user", "content": [block]}],
        [
            {"role": "user", "content": "x"},
            TOOL_TURN,
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [block]}],
            },
        ],
    ):
        with pytest.raises(InvalidRequest) as info:
            parse(messages=messages)
        assert fragment in info.value.message and info.value.param == "messages"
        assert "search_result" in info.value.message or "content[0]" in info.value.message
