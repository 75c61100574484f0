"""What a request's tools, tool choice and response format must be, in each protocol:
checked before anything goes upstream, each refusal a 400 naming the field. Table-driven."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from gateway.parse import Call, parse_chat
from gateway.protocols.anthropic import parse_messages
from gateway.protocols.responses import parse_responses
from gateway.protocols.responses_stream import StreamTranslator
from gateway.tools import custom_tool_input_so_far
from policies.errors import InvalidRequest, UpstreamUnavailable

Protocol = str


def chat(**body: Any) -> Call:
    body = {"model": "deepseek-chat", **body}
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return parse_chat(orjson.dumps(body), max_bytes=1 << 20, max_messages=100)


def responses(**body: Any) -> Call:
    body = {"model": "deepseek-chat", **body}
    body.setdefault("input", "hi")
    return parse_responses(orjson.dumps(body), max_bytes=1 << 20, max_messages=100)


def anthropic(**body: Any) -> Call:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, **body}
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return parse_messages(orjson.dumps(body), max_bytes=1 << 20, max_messages=100)


PARSE = {"chat": chat, "responses": responses, "anthropic": anthropic}


def function(protocol: Protocol, name: str) -> dict[str, Any]:
    """A function tool named ``name`` in ``protocol``'s shape."""
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    if protocol == "chat":
        return {"type": "function", "function": {"name": name, "parameters": schema}}
    if protocol == "responses":
        return {"type": "function", "name": name, "parameters": schema}
    return {"name": name, "input_schema": schema}


def custom(protocol: Protocol, name: str, **fields: Any) -> dict[str, Any]:
    if protocol == "chat":
        return {"type": "custom", "custom": {"name": name, **fields}}
    return {"type": "custom", "name": name, **fields}


def refused(protocol: Protocol, **body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        PARSE[protocol](**body)
    return info.value


# ---- tool names ---------------------------------------------------------------------------

BAD_NAMES = [
    ("", "tools[1]", "must not be empty"),
    ("a" * 65, "tools[1]", "has 65 characters; a tool name has at most 64"),
    ("a" * 10000, "tools[1]", "has 10000 characters"),
    ("my tool", "tools[1]", "contains ' '"),
    ("tab\tname", "tools[1]", "contains '\\t'"),
    ("nl\n", "tools[1]", "contains '\\n'"),
    ("r\u00fcn\u202e", "tools[1]", "contains '\\u202e'"),
    ("zero\u200bwidth", "tools[1]", "contains '\\u200b'"),
    ("nb\u00a0sp", "tools[1]", "contains '\\xa0'"),
    ("line\u2028sep", "tools[1]", "contains '\\u2028'"),
    ("nul\x00", "tools[1]", "contains '\\x00'"),
]
GOOD_NAMES = ["a" * 64, "mcp.server:tool", "get-weather_2", "wetter_\u00fc\u4e2d", "x"]


@pytest.mark.parametrize("protocol", ["chat", "responses", "anthropic"])
@pytest.mark.parametrize(("name", "where", "fragment"), BAD_NAMES)
def test_a_tool_name_no_backend_takes_is_a_400_naming_its_tool(
    protocol: Protocol, name: str, where: str, fragment: str
) -> None:
    err = refused(protocol, tools=[function(protocol, "ok"), function(protocol, name)])
    assert err.param == "tools"
    assert where in err.message and fragment in err.message, err.message


@pytest.mark.parametrize("protocol", ["chat", "responses"])
def test_a_custom_tool_name_is_checked_too(protocol: Protocol) -> None:
    err = refused(protocol, tools=[custom(protocol, "r\u00fcn\u202e")])
    assert err.param == "tools" and "tools[0]" in err.message and "'\\u202e'" in err.message


def test_a_name_in_a_responses_namespace_names_its_place() -> None:
    ns = {"type": "namespace", "name": "n", "tools": [function("responses", "bad name")]}
    err = refused("responses", tools=[ns])
    assert "tools[0].tools[0].name contains ' '" in err.message and err.param == "tools"


@pytest.mark.parametrize("protocol", ["chat", "responses", "anthropic"])
@pytest.mark.parametrize("name", GOOD_NAMES)
def test_names_of_any_script_with_dots_and_colons_are_fine(protocol: Protocol, name: str) -> None:
    call = PARSE[protocol](tools=[function(protocol, name)])
    assert [t["function"]["name"] for t in call.body["tools"]] == [name]


# ---- duplicate names ---------------------------------------------------------------------


def _duplicates(protocol: Protocol) -> list[list[dict[str, Any]]]:
    cases = [[function(protocol, "a"), function(protocol, "b"), function(protocol, "a")]]
    if protocol != "anthropic":
        cases.append([function(protocol, "a"), custom(protocol, "a")])
        cases.append([custom(protocol, "a"), custom(protocol, "a")])
    if protocol == "responses":
        ns = {"type": "namespace", "name": "n", "tools": [function(protocol, "a")]}
        cases.append([function(protocol, "a"), ns])
    if protocol == "anthropic":
        server = {"type": "web_search_20250305", "name": "web_search"}
        cases.append([server, function(protocol, "web_search")])
    return cases


@pytest.mark.parametrize(
    ("protocol", "tools"),
    [(p, tools) for p in ("chat", "responses", "anthropic") for tools in _duplicates(p)],
)
def test_two_tools_of_one_name_are_a_400(protocol: Protocol, tools: list[Any]) -> None:
    err = refused(protocol, tools=tools)
    assert err.param == "tools"
    assert "is the name of an earlier tool" in err.message, err.message
    assert "must be unique" in err.message


# ---- named tool choices ------------------------------------------------------------------

CHOICES: list[tuple[Protocol, Any, str]] = [
    (
        "chat",
        {"type": "function", "function": {"name": "zzz"}},
        "'tool_choice.function.name' names the tool 'zzz', which is not in 'tools'",
    ),
    (
        "chat",
        {"type": "custom", "custom": {"name": "zzz"}},
        "'tool_choice.custom.name' names the tool 'zzz', which is not in 'tools'",
    ),
    (
        "chat",
        {"type": "custom", "custom": {"name": "f"}},
        "names 'f' as a custom tool, but it is a function tool",
    ),
    (
        "chat",
        {"type": "function", "function": {"name": "c"}},
        "names 'f' as a function tool, but it is a custom tool".replace("'f'", "'c'"),
    ),
    (
        "chat",
        {
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "auto",
                "tools": [{"type": "custom", "custom": {"name": "f"}}],
            },
        },
        "'tool_choice.allowed_tools.tools[0]' names 'f' as a custom tool",
    ),
    (
        "responses",
        {"type": "function", "name": "zzz"},
        "'tool_choice.name' names the tool 'zzz', which is not in 'tools'",
    ),
    ("responses", {"type": "custom", "name": "zzz"}, "which is not in 'tools'"),
    ("responses", {"type": "custom", "name": "f"}, "names 'f' as a custom tool, but it is a"),
    ("responses", {"type": "function", "name": "c"}, "names 'c' as a function tool, but it is"),
    (
        "responses",
        {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "c"}]},
        "'tool_choice.tools[0]' names 'c' as a function tool",
    ),
    (
        "anthropic",
        {"type": "tool", "name": "zzz"},
        "'tool_choice.name' names the tool 'zzz', which is not in 'tools'",
    ),
]


def _offered(protocol: Protocol) -> list[dict[str, Any]]:
    if protocol == "anthropic":
        return [function(protocol, "f")]
    return [function(protocol, "f"), custom(protocol, "c")]


@pytest.mark.parametrize(("protocol", "choice", "fragment"), CHOICES)
def test_a_choice_of_a_tool_not_offered_is_a_400(
    protocol: Protocol, choice: Any, fragment: str
) -> None:
    err = refused(protocol, tools=_offered(protocol), tool_choice=choice)
    assert err.param == "tool_choice"
    assert fragment in err.message, err.message


@pytest.mark.parametrize(
    ("protocol", "choice"),
    [
        ("chat", {"type": "function", "function": {"name": "f"}}),
        ("responses", {"type": "function", "name": "f"}),
        ("anthropic", {"type": "tool", "name": "f"}),
    ],
)
def test_a_choice_with_no_tools_at_all_is_a_400(protocol: Protocol, choice: Any) -> None:
    err = refused(protocol, tool_choice=choice)
    assert err.param == "tool_choice" and "which is not in 'tools'" in err.message


@pytest.mark.parametrize(
    ("protocol", "choice", "sent"),
    [
        ("chat", {"type": "function", "function": {"name": "f"}}, "f"),
        ("chat", {"type": "custom", "custom": {"name": "c"}}, "c"),
        ("responses", {"type": "function", "name": "f"}, "f"),
        ("responses", {"type": "custom", "name": "c"}, "c"),
        ("anthropic", {"type": "tool", "name": "f"}, "f"),
    ],
)
def test_a_choice_of_an_offered_tool_goes_upstream(
    protocol: Protocol, choice: Any, sent: str
) -> None:
    call = PARSE[protocol](tools=_offered(protocol), tool_choice=choice)
    assert call.body["tool_choice"] == {"type": "function", "function": {"name": sent}}


def test_an_anthropic_choice_of_a_server_tool_is_auto() -> None:
    server = {"type": "web_search_20250305", "name": "web_search"}
    call = anthropic(
        tools=[server, function("anthropic", "f")],
        tool_choice={"type": "tool", "name": "web_search"},
    )
    assert call.body["tool_choice"] == "auto"
    assert "tool-choice-downgraded=web_search" in call.notes


# ---- json_schema response formats --------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"x": {"type": "string"}}}
BAD_SCHEMAS: list[tuple[dict[str, Any], str, str]] = [
    ({"schema": SCHEMA}, "name", "is required"),
    ({"name": "", "schema": SCHEMA}, "name", "is required"),
    ({"name": "has space", "schema": SCHEMA}, "name", "not 'has space'"),
    ({"name": "a" * 65, "schema": SCHEMA}, "name", "at most 64"),
    ({"name": 5, "schema": SCHEMA}, "name", "not a number"),
    ({"name": "n", "schema": "object"}, "schema", "must be a JSON schema object, not a string"),
    ({"name": "n", "schema": [1]}, "schema", "must be a JSON schema object, not an array"),
    ({"name": "n", "schema": SCHEMA, "strict": "yes"}, "strict", "true or false, not a string"),
    ({"name": "n", "schema": SCHEMA, "strict": 1}, "strict", "true or false, not a number"),
    ({"name": "n", "schema": SCHEMA, "description": 3}, "description", "must be a string"),
]


@pytest.mark.parametrize(("spec", "field", "fragment"), BAD_SCHEMAS)
def test_a_malformed_chat_json_schema_is_a_400_naming_the_field(
    spec: dict[str, Any], field: str, fragment: str
) -> None:
    err = refused("chat", response_format={"type": "json_schema", "json_schema": spec})
    assert err.param == "response_format"
    assert f"'response_format.json_schema.{field}'" in err.message, err.message
    assert fragment in err.message, err.message


@pytest.mark.parametrize(("spec", "field", "fragment"), BAD_SCHEMAS)
def test_a_malformed_responses_json_schema_is_a_400_naming_the_field(
    spec: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        responses(text={"format": {"type": "json_schema", **spec}})
    err = info.value
    assert err.param == "text"
    if field == "schema":  # Responses needs the schema itself
        assert "json_schema (with 'schema')" in err.message, err.message
    else:
        assert f"'text.format.{field}'" in err.message and fragment in err.message, err.message


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "answer", "schema": SCHEMA},
        {"name": "a-b_C9", "schema": SCHEMA, "strict": True, "description": "d"},
        {"name": "a" * 64, "schema": SCHEMA, "strict": False},
    ],
)
def test_well_formed_json_schemas_are_taken(spec: dict[str, Any]) -> None:
    call = chat(response_format={"type": "json_schema", "json_schema": spec})
    assert call.body["response_format"]["json_schema"] == spec
    call = responses(text={"format": {"type": "json_schema", **spec}})
    assert call.body["response_format"] == {"type": "json_object"} and call.json_mode


# ---- custom tool formats -----------------------------------------------------------------


def _grammar(protocol: Protocol, **grammar: Any) -> dict[str, Any]:
    if protocol == "chat":
        return {"type": "grammar", "grammar": grammar}
    return {"type": "grammar", **grammar}


def _at(protocol: Protocol, field: str) -> str:
    """Where a custom tool's format field is, as the error names it."""
    if protocol == "chat":
        return f"tools[0].custom.format.grammar.{field}"
    return f"tools[0].format.{field}"


BAD_FORMATS: list[tuple[dict[str, Any], str, str]] = [
    ({"syntax": "ebnf", "definition": "x"}, "syntax", "must be lark or regex, not 'ebnf'"),
    ({"definition": "x"}, "syntax", "must be lark or regex, not null"),
    ({"syntax": "lark"}, "definition", "non-empty string, not null"),
    ({"syntax": "lark", "definition": 5}, "definition", "non-empty string, not a number"),
    ({"syntax": "regex", "definition": ""}, "definition", "not an empty string"),
]


@pytest.mark.parametrize("protocol", ["chat", "responses"])
@pytest.mark.parametrize(("grammar", "field", "fragment"), BAD_FORMATS)
def test_a_custom_tool_grammar_missing_a_part_is_a_400_naming_it(
    protocol: Protocol, grammar: dict[str, Any], field: str, fragment: str
) -> None:
    err = refused(protocol, tools=[custom(protocol, "g", format=_grammar(protocol, **grammar))])
    assert err.param == "tools"
    assert _at(protocol, field) in err.message and fragment in err.message, err.message


@pytest.mark.parametrize("protocol", ["chat", "responses"])
@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"format": "lark"}, 'format must be {"type": "text"} or'),
        ({"format": {"type": "bogus"}}, 'format must be {"type": "text"} or'),
        ({"description": 5}, "description must be a string, not a number"),
        ({"description": ["d"]}, "description must be a string, not an array"),
    ],
)
def test_a_custom_tool_of_another_shape_is_a_400(
    protocol: Protocol, fields: dict[str, Any], fragment: str
) -> None:
    err = refused(protocol, tools=[custom(protocol, "g", **fields)])
    assert err.param == "tools" and fragment in err.message, err.message


def test_chat_grammar_needs_its_nested_object() -> None:
    err = refused("chat", tools=[custom("chat", "g", format={"type": "grammar"})])
    assert "tools[0].custom.format.grammar must be an object" in err.message


@pytest.mark.parametrize("protocol", ["chat", "responses"])
@pytest.mark.parametrize(
    "fmt",
    [
        None,
        {"type": "text"},
        {"syntax": "lark", "definition": "start: /[a-z]+/"},
        {"syntax": "regex", "definition": "^[a-z]+$"},
    ],
)
def test_well_formed_custom_tools_are_offered_as_functions(
    protocol: Protocol, fmt: dict[str, Any] | None
) -> None:
    fields: dict[str, Any] = {"description": "Run it"}
    if fmt is not None:
        fields["format"] = fmt if fmt.get("type") == "text" else _grammar(protocol, **fmt)
    call = PARSE[protocol](tools=[custom(protocol, "g", **fields)])
    fn = call.body["tools"][0]["function"]
    assert fn["name"] == "g" and fn["parameters"]["required"] == ["input"]
    if fmt is not None and "definition" in fmt:
        assert fmt["definition"] in fn["description"]


# ---- chat history -------------------------------------------------------------------------


def _chat_call(call_id: Any, kind: str = "function") -> dict[str, Any]:
    call: dict[str, Any] = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    if kind == "custom":
        call = {"type": "custom", "custom": {"name": "run", "input": "ls"}}
    if call_id is not ...:
        call["id"] = call_id
    return call


def _chat_history(call: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "done", **answer},
        ]
    }


def _responses_history(call_id: Any, output_id: Any, kind: str = "function") -> dict[str, Any]:
    call: dict[str, Any] = {"type": f"{kind}_call", "name": "f"}
    call.update({"arguments": "{}"} if kind == "function" else {"input": "ls"})
    output: dict[str, Any] = {"type": f"{kind}_call_output", "output": "done"}
    for item, value in ((call, call_id), (output, output_id)):
        if value is not ...:
            item["call_id"] = value
    return {"input": [{"role": "user", "content": "hi"}, call, output]}


def _anthropic_history(use_id: Any, result_id: Any) -> dict[str, Any]:
    use: dict[str, Any] = {"type": "tool_use", "name": "f", "input": {}}
    result: dict[str, Any] = {"type": "tool_result", "content": "done"}
    for block, key, value in ((use, "id", use_id), (result, "tool_use_id", result_id)):
        if value is not ...:
            block[key] = value
    return {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [use]},
            {"role": "user", "content": [result]},
        ]
    }


# (protocol, body, the field named, what the message says); ``...`` leaves the field out.
MISSING_IDS = [
    (
        "chat",
        _chat_history(_chat_call(...), {"tool_call_id": "c"}),
        "messages[1].tool_calls[0].id",
        "is required",
    ),
    (
        "chat",
        _chat_history(_chat_call(""), {"tool_call_id": "c"}),
        "messages[1].tool_calls[0].id",
        "not an empty string",
    ),
    (
        "chat",
        _chat_history(_chat_call(5), {"tool_call_id": "c"}),
        "messages[1].tool_calls[0].id",
        "not a number",
    ),
    (
        "chat",
        _chat_history(_chat_call(None), {"tool_call_id": "c"}),
        "messages[1].tool_calls[0].id",
        "is required",
    ),
    (
        "chat",
        _chat_history(_chat_call(..., "custom"), {"tool_call_id": "c"}),
        "messages[1].tool_calls[0].id",
        "is required",
    ),
    (
        "chat",
        _chat_history(_chat_call(5, "custom"), {"tool_call_id": "c"}),
        "messages[1].tool_calls[0].id",
        "not a number",
    ),
    ("chat", _chat_history(_chat_call("c"), {}), "messages[2].tool_call_id", "is required"),
    (
        "chat",
        _chat_history(_chat_call("c"), {"tool_call_id": ""}),
        "messages[2].tool_call_id",
        "not an empty string",
    ),
    (
        "chat",
        _chat_history(_chat_call("c"), {"tool_call_id": ["c"]}),
        "messages[2].tool_call_id",
        "not an array",
    ),
    ("responses", _responses_history(..., "c"), "input[1].call_id", "is required"),
    ("responses", _responses_history("", "c"), "input[1].call_id", "not an empty string"),
    ("responses", _responses_history(7, "c"), "input[1].call_id", "not a number"),
    ("responses", _responses_history(..., "c", "custom_tool"), "input[1].call_id", "is required"),
    ("responses", _responses_history("c", ...), "input[2].call_id", "is required"),
    ("responses", _responses_history("c", ""), "input[2].call_id", "not an empty string"),
    ("responses", _responses_history("c", ..., "custom_tool"), "input[2].call_id", "is required"),
    ("anthropic", _anthropic_history("", "t"), "messages[1].content[0].id", "not an empty string"),
    (
        "anthropic",
        _anthropic_history("t", ...),
        "messages[2].content[0].tool_use_id",
        "is required",
    ),
    (
        "anthropic",
        _anthropic_history("t", ""),
        "messages[2].content[0].tool_use_id",
        "not an empty string",
    ),
]


@pytest.mark.parametrize(("protocol", "body", "field", "says"), MISSING_IDS)
def test_a_tool_call_or_result_without_its_id_is_a_400(
    protocol: Protocol, body: dict[str, Any], field: str, says: str
) -> None:
    """A history's tool call with no id, or a tool result naming no call: refused before
    anything goes upstream, naming the field, as OpenAI's and Anthropic's APIs do."""
    err = refused(protocol, **copy.deepcopy(body))
    assert err.param == field and err.message.startswith(field) and says in err.message


@pytest.mark.parametrize(
    ("protocol", "body"),
    [
        ("chat", _chat_history(_chat_call("c"), {"tool_call_id": "c"})),
        ("chat", _chat_history(_chat_call("c", "custom"), {"tool_call_id": "c"})),
        ("responses", _responses_history("c", "c")),
        ("responses", _responses_history("c", "c", "custom_tool")),
        ("anthropic", _anthropic_history("t", "t")),
    ],
)
def test_a_tool_call_and_result_with_their_ids_pass(
    protocol: Protocol, body: dict[str, Any]
) -> None:
    call = PARSE[protocol](**copy.deepcopy(body))
    messages = call.body["messages"]
    assert [m["role"] for m in messages][-2:] == ["assistant", "tool"]
    assert messages[-1]["tool_call_id"] == messages[-2]["tool_calls"][0]["id"]


def _chat_turns(*turns: tuple[list[str], list[str]]) -> dict[str, Any]:
    """A chat history of ``turns``: each the ids an assistant message calls, then the ids
    its tool messages answer, in order."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
    for calls, answers in turns:
        if calls:
            tool_calls = [_chat_call(c) for c in calls]
            messages.append({"role": "assistant", "content": None, "tool_calls": tool_calls})
        messages += [{"role": "tool", "tool_call_id": a, "content": "done"} for a in answers]
    return {"messages": messages}


def _responses_turns(*turns: tuple[list[str], list[str]]) -> dict[str, Any]:
    items: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
    for calls, answers in turns:
        items += [
            {"type": "function_call", "call_id": c, "name": "f", "arguments": "{}"} for c in calls
        ]
        items += [{"type": "function_call_output", "call_id": a, "output": "done"} for a in answers]
    return {"input": items}


def _anthropic_turns(*turns: tuple[list[str], list[str]]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
    for calls, answers in turns:
        if calls:
            uses = [{"type": "tool_use", "id": c, "name": "f", "input": {}} for c in calls]
            messages.append({"role": "assistant", "content": uses})
        results = [{"type": "tool_result", "tool_use_id": a, "content": "done"} for a in answers]
        messages.append({"role": "user", "content": results or "go on"})
    return {"messages": messages}


TURNS = {"chat": _chat_turns, "responses": _responses_turns, "anthropic": _anthropic_turns}

# (turns, the unknown id): a tool result whose id answers no call before it.
UNKNOWN_IDS = [
    ([(["c"], ["d"])], "d"),
    ([(["c"], ["C"])], "C"),  # ids are compared exactly
    ([(["c"], ["c ", "c"])], "c "),
    ([([], ["c"])], "c"),  # no call at all
    ([(["a", "b"], ["a", "b", "x"])], "x"),  # one of parallel results
    ([([], ["c"]), (["c"], [])], "c"),  # a call made only after its result
]
# (protocol, where its parser names the result): param, and the message's start.
UNKNOWN_FIELD = {
    "chat": lambda i, k: (f"messages[{i}].tool_call_id", f"messages[{i}].tool_call_id"),
    "responses": lambda i, k: ("input", f"input[{i}]: call_id"),
    "anthropic": lambda i, k: ("messages", f"messages[{i}].content[{k}]: tool_result"),
}


def _unknown_place(protocol: Protocol, body: dict[str, Any], unknown: str) -> tuple[int, int]:
    """The index of the result answering ``unknown`` (its message or item, its block)."""
    entries = body["messages"] if protocol != "responses" else body["input"]
    for i, entry in enumerate(entries):
        if protocol == "anthropic" and isinstance(entry["content"], list):
            for k, block in enumerate(entry["content"]):
                if block.get("tool_use_id") == unknown:
                    return i, k
        elif entry.get("tool_call_id", entry.get("call_id")) == unknown and (
            protocol == "chat" or entry["type"] == "function_call_output"
        ):
            return i, 0
    raise AssertionError(f"no result answers {unknown!r}")


@pytest.mark.parametrize("protocol", ["chat", "responses", "anthropic"])
@pytest.mark.parametrize(("turns", "unknown"), UNKNOWN_IDS)
def test_a_tool_result_answering_no_earlier_call_is_a_400_naming_it(
    protocol: Protocol, turns: list[tuple[list[str], list[str]]], unknown: str
) -> None:
    """Refused before anything goes upstream, naming the result's place and its id: the
    upstream would refuse it too (OpenAI: the tool_call_id is not found in the tool calls)."""
    body = TURNS[protocol](*turns)
    err = refused(protocol, **body)
    param, start = UNKNOWN_FIELD[protocol](*_unknown_place(protocol, body, unknown))
    assert err.status == 400 and err.param == param
    assert err.message.startswith(start) and repr(unknown) in err.message


# Tool results that do answer calls before them: none is refused.
KNOWN_IDS = [
    [(["c"], ["c"])],
    [(["a", "b", "c"], ["a", "b", "c"])],  # several calls in one turn, parallel results
    [(["a", "b"], ["b", "a"])],  # results in another order than the calls
    [(["a"], ["a"]), (["b"], ["b"])],  # one turn after another
    [(["a", "b"], ["a"]), (["c"], ["b", "c"])],  # a result after a later call
    [(["call_\u00e9-1"], ["call_\u00e9-1"])],
]


@pytest.mark.parametrize("protocol", ["chat", "responses", "anthropic"])
@pytest.mark.parametrize("turns", KNOWN_IDS)
def test_tool_results_answering_earlier_calls_pass(
    protocol: Protocol, turns: list[tuple[list[str], list[str]]]
) -> None:
    call = PARSE[protocol](**TURNS[protocol](*turns))
    messages = call.body["messages"]
    called = [c["id"] for m in messages for c in m.get("tool_calls") or ()]
    answered = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert called == [c for calls, _ in turns for c in calls]
    assert answered == [a for _, answers in turns for a in answers]


# ---- a Responses stream cut while a tool call is written ----------------------------------


def _cut_stream(tools: list[Any], name: str, pieces: list[str]) -> list[dict[str, Any]]:
    tr = StreamTranslator(responses(tools=tools).context, "deepseek-chat")
    out = tr.start()
    out += tr.feed({"choices": [{"delta": {"content": "let me"}}]})
    head = {"index": 0, "id": "call_1", "type": "function", "function": {"name": name}}
    out += tr.feed({"choices": [{"delta": {"tool_calls": [head]}}]})
    for piece in pieces:
        delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
        out += tr.feed({"choices": [{"delta": delta}]})
    out += tr.fail(UpstreamUnavailable("the upstream broke off its response mid-way"))
    return [orjson.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]


@pytest.mark.parametrize(
    ("tools", "name", "pieces", "field", "so_far"),
    [
        ([function("responses", "f")], "f", ['{"q": ', '"Par'], "arguments", '{"q": "Par'),
        ([function("responses", "f")], "f", [], "arguments", ""),
        ([custom("responses", "run")], "run", ['{"input": "l'], "input", "l"),
        ([custom("responses", "run")], "run", ['{"inp'], "input", ""),
        ([custom("responses", "run")], "run", ['{"input": "a\\', "u00"], "input", "a"),
        ([custom("responses", "run")], "run", ['{"input": "ls", "x'], "input", "ls"),
    ],
)
def test_a_call_the_stream_broke_off_is_incomplete_not_completed(
    tools: list[Any], name: str, pieces: list[str], field: str, so_far: str
) -> None:
    events = _cut_stream(tools, name, pieces)
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "response.failed"
    # The call's arguments or input are never announced as final.
    for final in ("response.function_call_arguments.done", "response.custom_tool_call_input."):
        assert not any(k.startswith(final) for k in kinds), kinds
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    message, cut = done
    assert message["type"] == "message" and message["status"] == "completed"
    assert cut["status"] == "incomplete" and cut[field] == so_far
    assert cut["name"] == name and cut["call_id"] == "call_1"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["output"][-1] == cut


@pytest.mark.parametrize("kind", ["content", "reasoning_content"])
def test_a_message_or_reasoning_the_stream_broke_off_is_incomplete(kind: str) -> None:
    tr = StreamTranslator(responses().context, "deepseek-chat")
    out = tr.start() + tr.feed({"choices": [{"delta": {kind: "half a"}}]})
    out += tr.fail(UpstreamUnavailable("broke off"))
    events = [orjson.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [a["status"] for a in added] == ["in_progress"]
    assert [d["status"] for d in done] == ["incomplete"]
    assert done[0]["content"][0]["text"] == "half a"
    assert events[-1]["response"]["output"] == done


@pytest.mark.parametrize(
    ("arguments", "so_far"),
    [
        ("", ""),
        ("{", ""),
        ('{"input"', ""),
        ('{"input": "', ""),
        ('{"input": "l', "l"),
        ('{ "input" : "ls -la', "ls -la"),
        ('{"input": "ls", "more', "ls"),
        ('{"input": "ok"}', "ok"),
        ('{"input": "a\\', "a"),
        ('{"input": "a\\u00', "a"),
        ('{"input": "a\\u00e9b\\n', "a\u00e9b\n"),
        ('{"input": "x\\"y', 'x"y'),
        ('{"input": "\\ud83d', ""),
        ('{"input": "\\ud83d\\ude00', "\U0001f600"),
        ('{"other": "x"}', ""),
        ("not json", ""),
    ],
)
def test_the_input_so_far_of_a_cut_custom_call(arguments: str, so_far: str) -> None:
    assert custom_tool_input_so_far(arguments) == so_far
