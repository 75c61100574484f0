"""Refused requests are visible (a log line, a counted reason) and errors name no internal URL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import Gateway, Sims, demo_catalog, start_gateway


class Lines:
    """Stands in for the pipeline's logger (the test gateway logs only warnings)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, **fields})

    warning = error = info


@pytest.fixture
def logs(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    recorder = Lines()
    monkeypatch.setattr(gateway.app.state.tiergate.pipeline, "log", recorder)
    return recorder.lines


def _count(gw: Gateway, protocol: str, code: str) -> float:
    metrics = gw.app.state.tiergate.metrics
    value: float = metrics.rejections.labels(protocol, code)._value.get()
    return value


@pytest.mark.parametrize(
    ("path", "body", "protocol", "status", "code"),
    [
        ("/v1/chat/completions", b"{not json", "openai", 400, "invalid_request"),
        (
            "/v1/chat/completions",
            {"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]},
            "openai",
            404,
            "model_not_found",
        ),
        (
            "/v1/messages",
            {"model": "claude-x", "messages": []},
            "anthropic",
            400,
            "invalid_request",
        ),
        ("/v1/responses", {"model": "deepseek-chat"}, "responses", 400, "invalid_request"),
        ("/v1/responses", {"model": "nope", "input": "x"}, "responses", 404, "model_not_found"),
        ("/v1/no/such/route", {}, "openai", 404, "not_found"),
    ],
)
def test_every_rejection_is_logged_and_counted(
    gateway: Gateway,
    logs: list[dict[str, Any]],
    path: str,
    body: Any,
    protocol: str,
    status: int,
    code: str,
) -> None:
    before = _count(gateway, protocol, code)
    content = body if isinstance(body, bytes) else None
    r = httpx.post(
        gateway.url + path,
        content=content,
        json=None if content else body,
        headers={"authorization": "Bearer test", "content-type": "application/json"},
    )
    assert r.status_code == status
    assert _count(gateway, protocol, code) == before + 1
    lines = [entry for entry in logs if entry.get("rejected") == code]
    assert lines and lines[-1]["status"] == status and lines[-1]["protocol"] == protocol


@pytest.fixture(scope="module")
def replicas_only(sims: Sims, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Gateway]:
    server, gw = start_gateway(demo_catalog(sims, backend_preference=["self_hosted"]))
    yield gw
    server.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors_do_not_show_replica_urls(
    replicas_only: Gateway, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    recorder = Lines()
    monkeypatch.setattr(replicas_only.app.state.tiergate.pipeline, "log", recorder)
    # 17 stop strings: the replica (vLLM, like the hosted API) refuses more than 16.
    body = {
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": "x"}],
        "stop": [f"s{i}" for i in range(17)],
        "stream": stream,
    }
    r = httpx.post(
        replicas_only.url + "/v1/chat/completions", json=body, headers={"authorization": "Bearer t"}
    )
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "16" in message and "http://" not in message and "flash-local" in message
    logged = [e for e in recorder.lines if e.get("event") == "request" and e.get("status") == 400]
    assert logged and "http://" in logged[-1]["error"]  # the log keeps the address


def test_the_base_url_answers_a_probe(gateway: Gateway, logs: list[dict[str, Any]]) -> None:
    assert httpx.head(gateway.url + "/").status_code == 200  # Claude Code's first request
    assert not [entry for entry in logs if entry.get("rejected")]


def test_a_body_over_the_limit_is_counted_too(sims: Sims) -> None:
    server, gw = start_gateway(demo_catalog(sims), max_body_bytes=1000)
    try:
        r = httpx.post(
            gw.url + "/v1/responses",
            json={"model": "deepseek-chat", "input": "x" * 2000},
            headers={"authorization": "Bearer t"},
        )
        assert r.status_code == 413
        assert _count(gw, "responses", "body_too_large") == 1
    finally:
        server.stop()


# ---- standard parameters of the wrong type ---------------------------------------------------

CHAT = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}]}
MESSAGES = {
    "model": "deepseek-chat",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "x"}],
}
RESPONSES = {"model": "deepseek-chat", "input": "x"}
WRONG = {
    "openai": (
        "/v1/chat/completions",
        CHAT,
        [
            ("temperature", "hot"),
            ("temperature", "0.7"),
            ("top_p", "x"),
            ("max_tokens", "many"),
            ("max_tokens", "16"),
            ("max_completion_tokens", 1.5),
            ("n", "two"),
            ("presence_penalty", "0"),
            ("frequency_penalty", [1]),
            ("seed", "42"),
            ("seed", 4.2),
            ("stop", 5),
            ("stop", ["a", 1]),
            ("stream", "true"),
        ],
    ),
    "anthropic": (
        "/v1/messages",
        MESSAGES,
        [
            ("temperature", "hot"),
            ("top_p", "0.9"),
            ("top_k", "5"),
            ("top_k", 2.5),
            ("max_tokens", "5"),
            ("stop_sequences", "END"),
            ("stream", 1),
        ],
    ),
    "responses": (
        "/v1/responses",
        RESPONSES,
        [
            ("temperature", "hot"),
            ("top_p", {}),
            ("max_output_tokens", "64"),
            ("stream", "yes"),
        ],
    ),
}


@pytest.mark.parametrize(
    ("protocol", "field", "value"),
    [(p, f, v) for p, (_, _, cases) in WRONG.items() for f, v in cases],
)
def test_a_standard_parameter_of_the_wrong_type_is_a_400_naming_it(
    gateway: Gateway, protocol: str, field: str, value: Any
) -> None:
    path, body, _ = WRONG[protocol]
    r = httpx.post(
        gateway.url + path, json={**body, field: value}, headers={"authorization": "Bearer t"}
    )
    message = _refused(r, protocol, field)
    assert "must be" in message and "Field required" not in message, message


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {
                **CHAT,
                "temperature": 1.0,
                "top_p": 1,
                "presence_penalty": 0.5,
                "frequency_penalty": None,
                "seed": 7,
                "stop": "\n\n",
                "max_tokens": 16,
                "n": None,
                "stream": None,
            },
        ),
        ("/v1/chat/completions", {**CHAT, "temperature": None, "top_p": None, "stop": ["a"]}),
        (
            "/v1/messages",
            {**MESSAGES, "temperature": 0, "top_p": 0.9, "top_k": 5, "stop_sequences": ["END"]},
        ),
        ("/v1/messages", {**MESSAGES, "temperature": None, "top_k": None, "stream": None}),
        (
            "/v1/responses",
            {**RESPONSES, "temperature": 0.2, "top_p": None, "max_output_tokens": 16},
        ),
    ],
)
def test_standard_parameters_of_the_right_type_pass(
    gateway: Gateway, path: str, body: dict[str, Any]
) -> None:
    r = httpx.post(gateway.url + path, json=body, headers={"authorization": "Bearer t"})
    assert r.status_code == 200, r.text


def test_anthropic_max_tokens_as_a_string_says_it_must_be_an_integer(gateway: Gateway) -> None:
    r = httpx.post(
        gateway.url + "/v1/messages",
        json={**MESSAGES, "max_tokens": "5"},
        headers={"authorization": "Bearer t"},
    )
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": 'max_tokens: must be an integer, not "5"',
        },
    }
    missing = {k: v for k, v in MESSAGES.items() if k != "max_tokens"}
    r = httpx.post(gateway.url + "/v1/messages", json=missing)
    assert r.status_code == 400 and "max_tokens: Field required" in r.json()["error"]["message"]


def test_an_unknown_reasoning_effort_is_a_400_naming_the_efforts(gateway: Gateway) -> None:
    r = httpx.post(
        gateway.url + "/v1/responses", json={**RESPONSES, "reasoning": {"effort": "extreme"}}
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "reasoning"
    assert "'reasoning.effort' must be one of: none, minimal, low, medium, high" in error["message"]


# ---- the route reason names only the signals that decided something -----------------------


@pytest.mark.parametrize(
    ("fields", "mode", "signal"),
    [
        ({}, "think-high", True),
        ({"thinking": {"type": "disabled"}}, "non-thinking", False),
        ({"reasoning_effort": "none"}, "non-thinking", False),
        ({"thinking": {"type": "enabled"}}, "think-high", False),
    ],
)
def test_asked_to_reason_is_in_the_reason_only_when_it_chose_the_mode(
    gateway: Gateway, fields: dict[str, Any], mode: str, signal: bool
) -> None:
    r = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={
            "model": "auto",
            "messages": [{"role": "user", "content": "Explain step by step why the sky is blue."}],
            "max_tokens": 8,
            **fields,
        },
    )
    assert r.status_code == 200, r.text
    route = r.headers["x-tiergate-route"]
    assert route.startswith(f"flash/{mode}/"), route
    assert ("asked-to-reason" in route) is signal, route


# ---- object-valued fields of the wrong type ----------------------------------------------------

NOT_OBJECTS = ["x", 5, -1, 1.5, [1], True]
OBJECT_FIELDS = {
    "openai": (
        "/v1/chat/completions",
        CHAT,
        [
            "chat_template_kwargs",
            "stream_options",
            "response_format",
            "logit_bias",
            "metadata",
            "thinking",
        ],
    ),
    "anthropic": ("/v1/messages", MESSAGES, ["thinking", "metadata", "output_config"]),
    "responses": ("/v1/responses", RESPONSES, ["reasoning", "text", "metadata"]),
}


def _refused(r: httpx.Response, protocol: str, field: str) -> str:
    assert r.status_code == 400, r.text
    data = r.json()
    if protocol == "anthropic":
        assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    else:
        assert data["error"]["type"] == "invalid_request_error"
        assert data["error"]["param"] == field, data
    message: str = data["error"]["message"]
    assert field in message, message
    return message


@pytest.mark.parametrize("value", NOT_OBJECTS, ids=repr)
@pytest.mark.parametrize(
    ("protocol", "field"),
    [(p, f) for p, (_, _, fields) in OBJECT_FIELDS.items() for f in fields],
)
def test_an_object_field_that_is_not_an_object_is_a_400_naming_it(
    gateway: Gateway, protocol: str, field: str, value: Any
) -> None:
    path, body, _ = OBJECT_FIELDS[protocol]
    r = httpx.post(gateway.url + path, json={**body, field: value})
    assert "must be" in _refused(r, protocol, field)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["deepseek-chat", "auto", "deepseek-reasoner"])
def test_chat_template_kwargs_not_an_object_is_a_400_not_a_crash(
    gateway: Gateway, stream: bool, model: str
) -> None:
    for value in NOT_OBJECTS:
        body = {**CHAT, "model": model, "stream": stream, "chat_template_kwargs": value}
        r = httpx.post(gateway.url + "/v1/chat/completions", json=body)
        assert "'chat_template_kwargs' must be an object" in _refused(
            r, "openai", "chat_template_kwargs"
        )
    body = {**CHAT, "chat_template_kwargs": None, "max_tokens": 8}
    assert httpx.post(gateway.url + "/v1/chat/completions", json=body).status_code == 200


# ---- malformed chat fields never reach the paid upstream --------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"tools": ["x"]}, "tools", "tools[0] must be a function tool"),
        ({"tools": [{"type": "function", "function": 5}]}, "tools", "tools[0]"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
            "tools",
            "parameters must be a JSON schema object",
        ),
        ({"tool_choice": 5}, "tool_choice", "'tool_choice' must be none, auto, required"),
        ({"tool_choice": "sometimes"}, "tool_choice", "'tool_choice' must be"),
        ({"response_format": "json"}, "response_format", "must be an object"),
        ({"response_format": {"type": "yaml"}}, "response_format", "response_format.type"),
        ({"logit_bias": "x"}, "logit_bias", "must be an object"),
        ({"logit_bias": {"50256": "x"}}, "logit_bias", "from -100 to 100"),
        ({"temperature": 1e308}, "temperature", "from 0 to 2, not 1e+308"),
        ({"temperature": -0.5}, "temperature", "from 0 to 2"),
        ({"top_p": 1.5}, "top_p", "from 0 to 1"),
        ({"presence_penalty": 3}, "presence_penalty", "from -2 to 2"),
        ({"frequency_penalty": -2.5}, "frequency_penalty", "from -2 to 2"),
        (
            {"messages": [{"role": "user", "content": None}]},
            "messages[0].content",
            "content is required for a user message",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "bogus"}]}]},
            "messages[0].content[0].type",
            "'bogus' is not a content part type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y", "tool_calls": "bad"},
                    {"role": "user", "content": "z"},
                ]
            },
            "messages[1].tool_calls",
            "messages[1].tool_calls must be a list",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": {}},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c", "content": "ok"},
                ]
            },
            "messages[1].tool_calls",
            "arguments must be a JSON string, not an object",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"type": "function", "function": {"name": "f", "arguments": "{}"}}
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c", "content": "ok"},
                ]
            },
            "messages[1].tool_calls[0].id",
            "messages[1].tool_calls[0].id is required",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{}"},
                            }
                        ],
                    },
                    {"role": "tool", "content": "ok"},
                ]
            },
            "messages[2].tool_call_id",
            "messages[2].tool_call_id is required",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{}"},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c", "content": "ok"},
                    {"role": "tool", "tool_call_id": "call_9", "content": "ok"},
                ]
            },
            "messages[3].tool_call_id",
            "messages[3].tool_call_id 'call_9' matches no tool call of an earlier assistant",
        ),
    ],
)
def test_malformed_chat_fields_are_a_400_naming_them(
    gateway: Gateway, fields: dict[str, Any], param: str, fragment: str
) -> None:
    calls = gateway.app.state.tiergate.metrics
    del calls  # the request must fail before dispatch: a 400 from parsing, not from upstream
    r = httpx.post(gateway.url + "/v1/chat/completions", json={**CHAT, **fields})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and fragment in error["message"], error
    assert error["code"] == "invalid_request", error


def test_well_formed_chat_fields_pass(gateway: Gateway) -> None:
    body = {
        **CHAT,
        "max_tokens": 8,
        "temperature": 2,
        "top_p": 0,
        "presence_penalty": -2,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "text"},
        "logit_bias": {"1": -100},
        "chat_template_kwargs": {},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "x"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": "ok"},
        ],
    }
    r = httpx.post(gateway.url + "/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text


# ---- Responses: tool call items -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        (
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}},
            "input[1].arguments must be a JSON string",
        ),
        (
            {"type": "custom_tool_call", "call_id": "c", "name": "f", "input": 5},
            "input[1].input must be a string",
        ),
    ],
)
def test_a_responses_tool_call_with_arguments_not_a_string_is_a_400(
    gateway: Gateway, item: dict[str, Any], fragment: str
) -> None:
    body = {
        **RESPONSES,
        "input": [
            {"role": "user", "content": "x"},
            item,
            {"type": "function_call_output", "call_id": "c", "output": "ok"},
        ],
    }
    r = httpx.post(gateway.url + "/v1/responses", json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]


@pytest.mark.parametrize("output", [{"a": 1}, 5, None, True])
def test_a_function_call_output_not_text_is_a_400(gateway: Gateway, output: Any) -> None:
    body = {
        **RESPONSES,
        "input": [
            {"role": "user", "content": "x"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": output},
        ],
    }
    r = httpx.post(gateway.url + "/v1/responses", json=body)
    assert r.status_code == 400, r.text
    assert (
        "input[2].output must be a string or a list of content parts"
        in (r.json()["error"]["message"])
    )


def test_responses_tool_choice_is_checked_without_tools(gateway: Gateway) -> None:
    r = httpx.post(gateway.url + "/v1/responses", json={**RESPONSES, "tool_choice": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"


# ---- Anthropic: thinking budget, metadata, tool_choice, text blocks, max_tokens -------------------


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        (
            {"thinking": {"type": "enabled", "budget_tokens": "x"}},
            "thinking.budget_tokens: must be an integer, not a string",
        ),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 100}},
            "thinking.budget_tokens: must be at least 1024, not 100",
        ),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens: Field required"),
        ({"metadata": {"user_id": 5}}, "metadata.user_id: must be a string, not a number"),
        ({"metadata": "x"}, "'metadata' must be an object"),
        ({"tool_choice": "x"}, "'tool_choice' must be an object"),
        ({"tool_choice": {"type": "sometimes"}}, "'tool_choice.type' must be"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "'text' of a text block must be a string, not a number",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": [{"type": "text", "text": None}]},
                    {"role": "user", "content": "y"},
                ]
            },
            "messages[1].content[0]: 'text' of a text block must be a string, not null",
        ),
        ({"max_tokens": 10**30}, "max_tokens: 1e+30 is too large: ask for at most 2147483647"),
        ({"temperature": 1.5}, "'temperature' must be from 0 to 1, not 1.5"),
    ],
)
def test_anthropic_malformed_fields_are_a_400_naming_them(
    gateway: Gateway, fields: dict[str, Any], fragment: str
) -> None:
    r = httpx.post(gateway.url + "/v1/messages", json={**MESSAGES, **fields})
    assert r.status_code == 400, r.text
    data = r.json()
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    assert fragment in data["error"]["message"], data


def test_openai_max_tokens_too_large_for_64_bits_says_too_large(gateway: Gateway) -> None:
    for path, body, key in (
        ("/v1/chat/completions", CHAT, "max_tokens"),
        ("/v1/responses", RESPONSES, "max_output_tokens"),
    ):
        r = httpx.post(gateway.url + path, json={**body, key: 10**30})
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert f"'{key}' is 1e+30, too large: ask for at most 2147483647" in message, message
