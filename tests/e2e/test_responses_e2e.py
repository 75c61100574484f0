"""The OpenAI Responses API through the official openai SDK and the gateway to the simulators.

The same pipeline as chat (routing, pricing, the ledger), rendered as response objects and
the Responses event stream; plus Codex CLI's captured requests replayed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .conftest import Gateway, Sims

DATA = Path(__file__).parent / "data"
WEATHER = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
ASK = 'use the get_weather tool with {"city": "Paris"}'


def test_plain_response_is_routed_priced_and_ledgered(gateway: Gateway) -> None:
    raw = gateway.client().responses.with_raw_response.create(
        model="deepseek-reasoner", input="hello", instructions="Be brief.", max_output_tokens=200
    )
    resp = raw.parse()
    assert raw.headers["x-tiergate-route"].startswith("flash/think-high/flash-local")
    assert resp.status == "completed" and resp.model == "deepseek-reasoner"
    assert [(o.type, o.status) for o in resp.output] == [
        ("reasoning", "completed"),
        ("message", "completed"),
    ]
    assert resp.output_text.startswith(" [deepseek-ai/DeepSeek-V4-Flash@")
    usage = resp.usage
    assert usage is not None and usage.input_tokens > 0
    assert 0 < usage.output_tokens_details.reasoning_tokens < usage.output_tokens
    s = gateway.settled()[-1]
    assert s.protocol == "responses" and s.requested_model == "deepseek-reasoner"
    assert s.cost_nanos > 0 and s.reasoning_tokens == usage.output_tokens_details.reasoning_tokens


def test_stream_event_sequence(gateway: Gateway) -> None:
    with gateway.client().responses.stream(
        model="deepseek-reasoner", input="hello", max_output_tokens=200
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = [e.item for e in events if e.type == "response.output_item.added"]
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert [(a.type, a.status) for a in added] == [
        ("reasoning", "in_progress"),
        ("message", "in_progress"),
    ]
    assert [(d.type, d.status) for d in done] == [
        ("reasoning", "completed"),
        ("message", "completed"),
    ]
    for kind in (
        "response.reasoning_text.delta",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.output_item.done",
    ):
        assert kind in kinds
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.content_part.added")
    assert final.status == "completed" and final.model == "deepseek-reasoner"
    assert final.output_text and final.usage is not None
    assert final.usage.output_tokens_details.reasoning_tokens > 0  # counted on a replica
    s = gateway.settled()[-1]
    assert s.protocol == "responses" and s.reasoning_tokens > 0


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
@pytest.mark.parametrize("stream", [False, True])
def test_function_call_round_trip(
    request: pytest.FixtureRequest, fixture: str, stream: bool
) -> None:
    gw: Gateway = request.getfixturevalue(fixture)
    c = gw.client()
    kwargs: dict[str, Any] = {
        "model": "deepseek-reasoner",
        "tools": WEATHER,
        "input": [{"role": "user", "content": ASK}],
        "include": ["reasoning.encrypted_content"],
    }
    if stream:
        with c.responses.stream(**kwargs) as s:
            kinds = [e.type for e in s]
            first = s.get_final_response()
        assert "response.function_call_arguments.delta" in kinds
        assert "response.function_call_arguments.done" in kinds
    else:
        first = c.responses.create(**kwargs)
    assert [o.type for o in first.output] == ["reasoning", "function_call"]
    call = first.output[1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    # Sent back as Codex does (store: false, the whole conversation): in thinking mode the
    # hosted API needs the reasoning again, which the reasoning item carries.
    history = [*kwargs["input"], *(o.model_dump(exclude_none=True) for o in first.output)]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny"})
    second = c.responses.create(model="deepseek-reasoner", tools=WEATHER, input=history)
    assert second.status == "completed" and second.output[-1].type == "message"


def test_custom_tools_come_back_as_custom_tool_calls(gateway: Gateway) -> None:
    tool = {
        "type": "custom",
        "name": "apply_patch",
        "description": "Apply a patch",
        "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"},
    }
    resp = gateway.client().responses.create(
        model="deepseek-chat",
        tools=[tool],  # type: ignore[list-item]
        input='use the apply_patch tool with {"input": "*** Begin Patch"}',
    )
    call = resp.output[-1]
    assert call.type == "custom_tool_call" and call.input == "*** Begin Patch"
    after = gateway.client().responses.create(
        model="deepseek-chat",
        tools=[tool],  # type: ignore[list-item]
        input=[
            call.model_dump(exclude_none=True),
            {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done"},
        ],
    )
    assert after.status == "completed"


@pytest.mark.parametrize(
    ("reasoning", "mode"),
    [
        ({"effort": "none"}, "non-thinking"),
        ({"effort": "medium"}, "think-high"),
        ({"effort": "max"}, "think-max"),
    ],
)
def test_reasoning_effort_picks_the_mode(gateway: Gateway, reasoning: Any, mode: str) -> None:
    raw = gateway.client().responses.with_raw_response.create(
        model="deepseek-v4-pro", input="hello", reasoning=reasoning, max_output_tokens=300
    )
    assert raw.headers["x-tiergate-route"].startswith(f"pro/{mode}/")


def test_json_schema_and_max_output_tokens(gateway: Gateway) -> None:
    c = gateway.client()
    resp = c.responses.create(
        model="deepseek-chat",
        input="Give me a json answer",
        text={"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}}},
    )
    assert isinstance(json.loads(resp.output_text), dict)
    cut = c.responses.create(model="deepseek-chat", input="hello", max_output_tokens=2)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "cut"), [("deepseek-chat", "message"), ("deepseek-reasoner", "reasoning")]
)
def test_an_answer_cut_by_max_output_tokens_is_incomplete(
    gateway: Gateway, stream: bool, model: str, cut: str
) -> None:
    """The output limit reached: the SDK reads an incomplete response whose last item (the
    message, or the reasoning when the limit came while the model reasoned) is incomplete
    too; a stream ends in ``response.incomplete``, never ``response.completed``."""
    c = gateway.client()
    kwargs: dict[str, Any] = {"model": model, "input": "hello", "max_output_tokens": 3}
    if stream:
        with c.responses.stream(**kwargs) as s:
            events = list(s)
        kinds = [e.type for e in events]
        assert kinds[-1] == "response.incomplete" and "response.completed" not in kinds, kinds
        last = events[-1]
        assert last.type == "response.incomplete"
        resp = last.response
        added = [e.item for e in events if e.type == "response.output_item.added"]
        done = [e.item for e in events if e.type == "response.output_item.done"]
        assert [(a.type, a.status) for a in added] == [(cut, "in_progress")]
        assert [(d.type, d.status) for d in done] == [(cut, "incomplete")]
    else:
        resp = c.responses.create(**kwargs)
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert [(o.type, o.status) for o in resp.output] == [(cut, "incomplete")]
    if cut == "message":
        assert resp.output_text
    assert resp.usage is not None and resp.usage.output_tokens <= 3


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "file_search"),
        ({"reasoning": {"effort": "huge"}}, "reasoning.effort"),
        ({"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}, "nope"),
        ({"model": "gpt-17"}, "gpt-17"),
    ],
)
def test_bad_requests_are_clear_errors(gateway: Gateway, kwargs: Any, fragment: str) -> None:
    args = {"model": "deepseek-chat", "input": "hello", **kwargs}
    with pytest.raises(openai.APIStatusError) as info:
        gateway.client().responses.create(**args)
    assert info.value.status_code in (400, 404) and fragment in info.value.message


def test_web_search_is_dropped_with_a_note(gateway: Gateway) -> None:
    raw = gateway.client().responses.with_raw_response.create(
        model="deepseek-chat", input="hello", tools=[{"type": "web_search"}, *WEATHER]
    )
    assert raw.parse().status == "completed"
    assert "server-tool-dropped=web_search" in raw.headers["x-tiergate-route"]


def test_stored_responses_and_models(gateway: Gateway) -> None:
    c = gateway.client()
    with pytest.raises(openai.NotFoundError) as info:
        c.responses.retrieve("resp_abc")
    assert "does not store responses" in info.value.message
    assert c.models.retrieve("deepseek-reasoner").id == "deepseek-reasoner"
    assert c.models.retrieve("claude-sonnet-4-5").id == "claude-sonnet-4-5"  # a catalog glob
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-17")


def test_a_cut_answer_fails_the_stream(hosted_first: Gateway, sims: Sims) -> None:
    sims.control(sims.hosted, fail_rate=1.0, fail_mode="insufficient")
    with hosted_first.client().responses.stream(model="deepseek-chat", input="hello") as s:
        kinds = [e.type for e in s]
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds


@pytest.mark.parametrize("name", ["codex_say_hi.json", "codex_tool_result.json"])
def test_captured_codex_requests_replay(gateway: Gateway, name: str) -> None:
    captured = json.loads((DATA / name).read_text())
    with httpx.stream(
        "POST",
        gateway.url + "/v1/responses",
        json=captured["body"],
        headers={**captured["headers"], "authorization": "Bearer test"},
        timeout=30,
    ) as r:
        assert r.status_code == 200, r.read()
        route = r.headers["x-tiergate-route"]
        datas = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert "server-tool-dropped=web_search" in route
    assert datas[0]["type"] == "response.created" and datas[-1]["type"] == "response.completed"
    done = [d["item"]["type"] for d in datas if d["type"] == "response.output_item.done"]
    assert done[-1] == "message"
    reasoning = next(d["item"] for d in datas if d["type"] == "response.output_item.done")
    assert reasoning["type"] == "reasoning" and reasoning["encrypted_content"]  # Codex asks


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
def test_langchain_with_the_responses_api(request: pytest.FixtureRequest, fixture: str) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="deepseek-reasoner",
        base_url=request.getfixturevalue(fixture).url + "/v1",
        api_key="test",  # type: ignore[arg-type]
        use_responses_api=True,
        max_retries=0,
    )
    plain = llm.invoke("hello")
    assert plain.text and plain.response_metadata["model_name"] == "deepseek-reasoner"
    tools = llm.bind_tools([WEATHER[0]])
    ask = HumanMessage(ASK)
    call = tools.invoke([ask])
    assert call.tool_calls and call.tool_calls[0]["args"] == {"city": "Paris"}
    result = ToolMessage("sunny", tool_call_id=call.tool_calls[0]["id"])
    answer = tools.invoke([ask, call, result])
    assert answer.text and not answer.tool_calls


SEARCH = {**WEATHER[0], "name": "search"}


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
def test_allowed_tools_narrow_the_tools_offered(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    gw: Gateway = request.getfixturevalue(fixture)
    raw = gw.client().responses.with_raw_response.create(
        model="deepseek-chat",
        input="look it up",
        tools=[*WEATHER, SEARCH, {"type": "web_search"}],  # type: ignore[list-item]
        tool_choice={
            "type": "allowed_tools",
            "mode": "required",
            "tools": [{"type": "function", "name": "search"}],
        },
    )
    resp = raw.parse()
    # The simulator calls the first tool offered when one is required: only 'search' was.
    (call,) = [o for o in resp.output if o.type == "function_call"]
    assert call.name == "search"
    route = raw.headers["x-tiergate-route"]
    assert "allowed-tools-as-subset=1/2" in route and "server-tool-dropped=web_search" in route
    assert resp.tool_choice.type == "allowed_tools"  # type: ignore[union-attr]


@pytest.mark.parametrize("choice", ["web_search", "web_search_preview", "file_search"])
def test_a_server_tool_choice_is_downgraded_to_auto(gateway: Gateway, choice: str) -> None:
    raw = gateway.client().responses.with_raw_response.create(
        model="deepseek-chat",
        input="hello",
        tools=[{"type": "web_search"}, *WEATHER],  # type: ignore[list-item]
        tool_choice={"type": choice},  # type: ignore[arg-type, misc]
    )
    assert raw.parse().status == "completed"
    assert f"tool-choice-downgraded={choice}" in raw.headers["x-tiergate-route"]


@pytest.mark.parametrize(
    ("tool_choice", "fragment"),
    [
        ({"type": "allowed_tools", "mode": "auto", "tools": []}, "non-empty list"),
        (
            {"type": "allowed_tools", "mode": "any", "tools": [{"type": "function", "name": "x"}]},
            "'tool_choice.mode' must be auto or required",
        ),
        (
            {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function"}]},
            "'tool_choice.tools[0]' must be",
        ),
        (
            {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "x"}]},
            "'x', which is not in 'tools'",
        ),
        ({"type": "telepathy"}, "'tool_choice' must be"),
    ],
)
def test_malformed_tool_choices_are_400s_naming_the_field(
    gateway: Gateway, tool_choice: Any, fragment: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().responses.create(
            model="deepseek-chat", input="hi", tools=WEATHER, tool_choice=tool_choice
        )
    assert fragment in info.value.body["message"]  # type: ignore[index]
    assert info.value.body["param"] == "tool_choice"  # type: ignore[index]


def test_an_output_limit_over_the_tiers_names_max_output_tokens(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().responses.create(
            model="deepseek-chat", input="hi", max_output_tokens=10**6
        )
    assert info.value.body["param"] == "max_output_tokens"  # type: ignore[index]
    assert info.value.body["message"].startswith("max_output_tokens 1000000 is over")  # type: ignore[index]


PATCH_TOOL = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Apply a patch",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"},
}


@pytest.mark.parametrize(
    ("tools", "ask", "kind"),
    [
        (WEATHER, ASK, "function_call"),
        (
            [PATCH_TOOL],
            'use the apply_patch tool with {"input": "*** Begin Patch"}',
            "custom_tool_call",
        ),
    ],
)
def test_a_call_cut_off_by_a_broken_stream_is_incomplete(
    gateway: Gateway, sims: Sims, tools: list[Any], ask: str, kind: str
) -> None:
    """The upstream stream breaks while the call's arguments are written: the call is not
    reported completed, a custom call's input is never the raw ``{"input": ...`` wrapper,
    and the response fails; the SDK's stream helper has no final response to give."""
    for url in sims.flash:
        sims.control(url, fail_rate=1.0, fail_mode="midstream")
    with gateway.client().responses.stream(
        model="deepseek-chat",
        tools=tools,  # type: ignore[arg-type]
        input=ask,
    ) as stream:
        events = list(stream)
        with pytest.raises(RuntimeError, match="response.completed"):
            stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[-1] == "response.failed", kinds
    assert "response.function_call_arguments.done" not in kinds
    assert "response.custom_tool_call_input.done" not in kinds
    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert added[-1].type == kind and added[-1].status == "in_progress"
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert done and done[-1].type == kind, done
    cut = done[-1]
    assert cut.status == "incomplete"
    if kind == "custom_tool_call":
        assert cut.type == "custom_tool_call"
        assert "{" not in cut.input and "input" not in cut.input, cut.input
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed" and failed.response.error is not None
    last = failed.response.output[-1]
    assert last.type == kind and last.status == "incomplete"


FN_A = {"type": "function", "name": "a", "parameters": {"type": "object"}}


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"tools": [FN_A, {"type": "custom", "name": "a"}]}, "tools", "must be unique"),
        ({"tools": [{**FN_A, "name": "a b"}]}, "tools", "tools[0].name contains ' '"),
        (
            {"tools": [FN_A], "tool_choice": {"type": "function", "name": "zzz"}},
            "tool_choice",
            "names the tool 'zzz', which is not in 'tools'",
        ),
        (
            {"tools": [FN_A], "tool_choice": {"type": "custom", "name": "a"}},
            "tool_choice",
            "names 'a' as a custom tool, but it is a function tool",
        ),
        (
            {"tools": [{"type": "custom", "name": "g", "format": {"type": "grammar"}}]},
            "tools",
            "tools[0].format.syntax must be lark or regex",
        ),
        (
            {"text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
            "text",
            "'text.format.name' is required",
        ),
        (
            {"text": {"format": {"type": "json_schema", "name": "a", "schema": {}, "strict": 1}}},
            "text",
            "'text.format.strict' must be true or false",
        ),
    ],
)
def test_malformed_tools_choices_and_formats_are_400s(
    gateway: Gateway, fields: dict[str, Any], param: str, fragment: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().responses.create(model="deepseek-chat", input="use the a tool", **fields)
    body: Any = info.value.body
    assert body["param"] == param and fragment in body["message"], body


def test_parallel_tool_calls_interleaved_upstream_arrive_whole(
    gateway: Gateway, sims: Sims
) -> None:
    """Three parallel calls whose argument fragments come in turns from the Flash replicas:
    each function_call item is whole in its done events and in the final response, items
    one after another, as Codex reads them."""
    for url in sims.flash:
        sims.control(url, parallel_tool_calls=3, interleave_tool_calls=True)
    with gateway.client().responses.stream(
        model="deepseek-chat", tools=WEATHER, input="use the get_weather tool"
    ) as s:
        events = list(s)
        final = s.get_final_response()
    done = [e.arguments for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 3 and all(set(json.loads(a)) == {"query"} for a in done)
    items = [e.output_index for e in events if e.type == "response.output_item.added"]
    closed = [e.output_index for e in events if e.type == "response.output_item.done"]
    assert items == closed  # one after another
    calls = [o for o in final.output if o.type == "function_call"]
    assert [json.loads(c.arguments) for c in calls] == [json.loads(a) for a in done]
    assert len({c.call_id for c in calls}) == 3
