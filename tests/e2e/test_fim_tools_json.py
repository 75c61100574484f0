"""FIM, prefix completion, tools, JSON mode and user_id through the OpenAI route."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from .conftest import Gateway, Sims

TOOLS = [
    {
        "type": "function",
        "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
    }
]


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
def test_fim_is_non_thinking_and_billed(request: pytest.FixtureRequest, fixture: str) -> None:
    gw: Gateway = request.getfixturevalue(fixture)
    raw = gw.client().completions.with_raw_response.create(
        model="deepseek-reasoner",
        prompt="def fib(n):\n    ",
        suffix="\n    return a",
        max_tokens=16,
    )
    resp = raw.parse()
    assert resp.choices[0].text
    assert (
        "/non-thinking/" in raw.headers["x-tiergate-route"]
        and "fim-non-thinking" in raw.headers["x-tiergate-route"]
    )
    s = gw.settled()[-1]
    assert s.cost_nanos > 0 and s.output_tokens == resp.usage.completion_tokens


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
def test_tool_calls_pass_through_with_null_not_empty_list(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    gw: Gateway = request.getfixturevalue(fixture)
    c = gw.client()
    call = c.chat.completions.create(
        model="deepseek-chat",
        messages=[{"role": "user", "content": "look it up"}],
        tools=TOOLS,
        tool_choice="required",
    )
    tc = call.choices[0].message.tool_calls
    assert call.choices[0].finish_reason == "tool_calls" and tc and tc[0].function.name == "lookup"
    plain = c.chat.completions.with_raw_response.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert json.loads(plain.text)["choices"][0]["message"]["tool_calls"] is None


def test_json_mode_and_prefix_completion(hosted_first: Gateway) -> None:
    c = hosted_first.client()
    js = c.chat.completions.create(
        model="deepseek-chat",
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Reply in json with an answer field."}],
    )
    assert isinstance(json.loads(js.choices[0].message.content), dict)
    prefix = c.chat.completions.create(
        model="deepseek-chat",
        messages=[
            {"role": "user", "content": "Write python"},
            {"role": "assistant", "content": "```python\n", "prefix": True},
        ],
        stop=["```"],
    )
    assert prefix.choices[0].message.content


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
def test_prefix_completion_continues_the_message_on_either_backend(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    """The hosted API continues a `prefix` message at /beta; vLLM knows no `prefix` and is
    asked with continue_final_message instead (a new turn would not continue it)."""
    gw: Gateway = request.getfixturevalue(fixture)
    opened = [
        {"role": "user", "content": "Write python"},
        {"role": "assistant", "content": "```python\n", "prefix": True},
    ]
    c = gw.client()
    cont = c.chat.completions.with_raw_response.create(model="deepseek-chat", messages=opened)
    turn = c.chat.completions.create(
        model="deepseek-chat", messages=[opened[0], {**opened[1], "prefix": False}]
    )
    backend = "flash-local" if fixture == "gateway" else "hosted"
    assert cont.headers["x-tiergate-route"].startswith(f"flash/non-thinking/{backend}")
    usage, plain = cont.parse().usage, turn.usage
    assert usage is not None and plain is not None
    # the continued message has no new assistant turn opened after it
    assert usage.prompt_tokens < plain.prompt_tokens


def test_thinking_tool_turn_round_trips_reasoning_content(hosted_first: Gateway) -> None:
    c = hosted_first.client()
    first = c.chat.completions.create(
        model="deepseek-reasoner",
        messages=[{"role": "user", "content": "look it up"}],
        tools=TOOLS,
        tool_choice="required",
    )
    msg = first.choices[0].message
    reasoning = (msg.model_extra or {})["reasoning_content"]
    history = [
        {"role": "user", "content": "look it up"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": reasoning,
            "tool_calls": [t.model_dump() for t in msg.tool_calls],
        },
        {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "42"},
    ]
    ok = c.chat.completions.create(model="deepseek-reasoner", messages=history, tools=TOOLS)
    assert ok.choices[0].message.content
    assert hosted_first.settled()[-1].backend == "hosted"
    # Without it the hosted API would refuse the turn (400): a replica thinks on instead.
    del history[1]["reasoning_content"]
    raw = c.chat.completions.with_raw_response.create(
        model="deepseek-reasoner", messages=history, tools=TOOLS
    )
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-tiergate-route"].startswith("flash/think-high/flash-local")


def test_user_id_reaches_the_hosted_api(hosted_first: Gateway, sims: Sims) -> None:
    resp = hosted_first.client().chat.completions.create(
        model="deepseek-chat",
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"user_id": "end-user-7"},
    )
    assert resp.choices[0].message.content
    assert httpx.get(sims.hosted + "/sim/stats").json()["last_user_id"] == "end-user-7"


def _fn(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
def test_allowed_tools_narrow_the_tools_offered(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    gw: Gateway = request.getfixturevalue(fixture)
    raw = gw.client().chat.completions.with_raw_response.create(
        model="deepseek-chat",
        messages=[{"role": "user", "content": "look it up"}],
        tools=[_fn("lookup"), _fn("search"), _fn("fetch")],  # type: ignore[list-item]
        tool_choice={
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "required",
                "tools": [{"type": "function", "function": {"name": "search"}}],
            },
        },
    )
    # The simulator calls the first tool offered when one is required: only 'search' was.
    (call,) = raw.parse().choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "search"
    assert "allowed-tools-as-subset=1/3" in raw.headers["x-tiergate-route"]


@pytest.mark.parametrize(
    ("tool_choice", "fragment"),
    [
        ({"type": "allowed_tools", "allowed_tools": {"mode": "any", "tools": []}}, "non-empty"),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "any",
                    "tools": [{"type": "function", "function": {"name": "lookup"}}],
                },
            },
            "'tool_choice.allowed_tools.mode' must be auto or required",
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "auto",
                    "tools": [{"type": "function", "function": {"name": "nope"}}],
                },
            },
            "'nope', which is not in 'tools'",
        ),
        ({"type": "custom", "custom": {"name": 5}}, "'tool_choice' must be"),
    ],
)
def test_malformed_tool_choices_are_400s_naming_the_field(
    gateway: Gateway, tool_choice: dict, fragment: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().chat.completions.create(
            model="deepseek-chat",
            messages=[{"role": "user", "content": "hi"}],
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice=tool_choice,  # type: ignore[arg-type]
        )
    assert fragment in info.value.body["message"]  # type: ignore[index]
    assert info.value.body["param"] == "tool_choice"  # type: ignore[index]


PATCH_TOOL = {
    "type": "custom",
    "custom": {
        "name": "apply_patch",
        "description": "Apply a patch",
        "format": {"type": "grammar", "grammar": {"syntax": "lark", "definition": "start: /.+/"}},
    },
}
ASK_PATCH = 'use the apply_patch tool with {"input": "*** Begin Patch"}'


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
def test_custom_tools_come_back_as_custom_tool_calls(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    gw: Gateway = request.getfixturevalue(fixture)
    c = gw.client()
    messages: list = [{"role": "user", "content": ASK_PATCH}]
    first = c.chat.completions.create(
        model="deepseek-chat",
        messages=messages,
        tools=[PATCH_TOOL, *TOOLS],  # type: ignore[list-item]
    )
    choice = first.choices[0]
    (call,) = choice.message.tool_calls or []
    assert choice.finish_reason == "tool_calls" and call.type == "custom"
    assert call.custom.name == "apply_patch" and call.custom.input == "*** Begin Patch"
    # The custom call goes back in the history, with its result.
    after = c.chat.completions.create(
        model="deepseek-chat",
        messages=[
            *messages,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Done"},
        ],
        tools=[PATCH_TOOL],  # type: ignore[list-item]
    )
    assert after.choices[0].finish_reason == "stop" and after.choices[0].message.content
    # Streamed: the call comes whole, as a custom call, and the stream is billed as usual.
    chunks = list(
        c.chat.completions.create(
            model="deepseek-chat",
            messages=messages,
            tools=[PATCH_TOOL],  # type: ignore[list-item]
            stream=True,
        )
    )
    sent = [tc for ch in chunks for choice in ch.choices for tc in choice.delta.tool_calls or ()]
    assert [tc.model_dump(exclude_none=True, exclude={"id"}) for tc in sent] == [
        {
            "index": 0,
            "type": "custom",
            "custom": {"name": "apply_patch", "input": "*** Begin Patch"},
        }
    ]
    assert chunks[-1].usage is None and gw.settled()[-1].output_tokens > 0


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_on_every_backend(
    request: pytest.FixtureRequest, fixture: str, stream: bool
) -> None:
    gw: Gateway = request.getfixturevalue(fixture)
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    args = {
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": "Answer the question."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    }
    if stream:
        chunks = gw.client().chat.completions.create(**args, stream=True)  # type: ignore[call-overload]
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    else:
        raw = gw.client().chat.completions.with_raw_response.create(**args)
        text = raw.parse().choices[0].message.content
        route = raw.headers["x-tiergate-route"]
        assert ("/hosted;" in route) is (fixture == "hosted_first")
        # The hosted API has JSON mode only: the schema went in the prompt, as the route says.
        assert ("json-schema-as-json-object" in route) is (fixture == "hosted_first")
    assert isinstance(json.loads(text), dict)


FN_TOOL = {"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}}
CUSTOM_A = {"type": "custom", "custom": {"name": "a"}}


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"tools": [FN_TOOL, CUSTOM_A]}, "tools", "must be unique"),
        ({"tools": [FN_TOOL, FN_TOOL]}, "tools", "tools[1].function.name 'a' is the name"),
        (
            {"tools": [{"type": "function", "function": {"name": "r\u00fcn\u202e"}}]},
            "tools",
            "tools[0].function.name contains '\\u202e'",
        ),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools", "must not be empty"),
        (
            {"tools": [{"type": "function", "function": {"name": "x" * 65}}]},
            "tools",
            "at most 64",
        ),
        (
            {"tools": [FN_TOOL], "tool_choice": {"type": "function", "function": {"name": "z"}}},
            "tool_choice",
            "names the tool 'z', which is not in 'tools'",
        ),
        (
            {"tools": [FN_TOOL], "tool_choice": {"type": "custom", "custom": {"name": "a"}}},
            "tool_choice",
            "names 'a' as a custom tool, but it is a function tool",
        ),
        (
            {
                "tools": [
                    {
                        "type": "custom",
                        "custom": {
                            "name": "g",
                            "format": {"type": "grammar", "grammar": {"syntax": "ebnf"}},
                        },
                    }
                ]
            },
            "tools",
            "tools[0].custom.format.grammar.syntax must be lark or regex",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format",
            "'response_format.json_schema.name' is required",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {}, "strict": "yes"},
                }
            },
            "response_format",
            "'response_format.json_schema.strict' must be true or false",
        ),
    ],
)
def test_malformed_tools_and_formats_are_400s_before_any_backend(
    gateway: Gateway, fields: dict[str, Any], param: str, fragment: str
) -> None:
    before = len(gateway.settled())
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().chat.completions.create(
            model="deepseek-chat",
            messages=[{"role": "user", "content": "use the a tool"}],
            **fields,
        )
    body: Any = info.value.body
    assert body["param"] == param and fragment in body["message"], body
    assert len(gateway.settled()) == before


def test_the_hosted_api_refuses_json_schema_as_the_real_one_does(sims: Sims) -> None:
    r = httpx.post(
        sims.hosted + "/chat/completions",
        json={
            "model": "deepseek-v4-flash",
            "messages": [{"role": "user", "content": "json"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a"}},
        },
        headers={"Authorization": "Bearer sim-key"},
    )
    assert r.status_code == 400 and "response_format" in r.text


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"max_completion_tokens": 10**6}, "max_completion_tokens"),
    ],
)
def test_an_output_limit_over_the_tiers_names_the_field_sent(
    gateway: Gateway, limits: dict, field: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "hi"}], **limits
        )
    assert info.value.body["param"] == field  # type: ignore[index]
    assert info.value.body["message"].startswith(f"{field} 1000000 is over")  # type: ignore[index]


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_without_an_id_gets_one(
    request: pytest.FixtureRequest, sims: Sims, fixture: str, stream: bool
) -> None:
    gw: Gateway = request.getfixturevalue(fixture)
    urls = [*sims.flash, *sims.pro, sims.hosted]
    for url in urls:
        sims.control(url, tool_call_ids=False)
    ask: list[Any] = [{"role": "user", "content": "look it up"}]
    try:
        c = gw.client()
        kwargs: dict[str, Any] = {"model": "deepseek-chat", "tools": TOOLS}
        if stream:
            with c.chat.completions.create(
                messages=ask, tool_choice="required", stream=True, **kwargs
            ) as s:
                deltas = [
                    tc
                    for chunk in s
                    if chunk.choices
                    for tc in chunk.choices[0].delta.tool_calls or ()
                ]
            call_id, name = deltas[0].id, deltas[0].function.name
            assert all(d.id is None for d in deltas[1:])  # the fragments after the first
            args = "".join(d.function.arguments or "" for d in deltas)
        else:
            raw = c.chat.completions.with_raw_response.create(
                messages=ask, tool_choice="required", **kwargs
            )
            tc = json.loads(raw.text)["choices"][0]["message"]["tool_calls"][0]
            call_id, name, args = tc["id"], tc["function"]["name"], tc["function"]["arguments"]
        assert isinstance(call_id, str) and call_id.startswith("call_")
        answered = c.chat.completions.create(
            messages=[
                *ask,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": args},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call_id, "content": "found"},
            ],
            **kwargs,
        )
        assert answered.choices[0].message.content
    finally:
        for url in urls:
            sims.control(url, tool_call_ids=True)
