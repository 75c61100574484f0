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
    assert r.status_code == 400, r.text
    data = r.json()
    if protocol == "anthropic":
        assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    else:
        assert data["error"]["type"] == "invalid_request_error"
        assert data["error"]["param"] == field
    message = data["error"]["message"]
    assert field in message and "must be" in message, message
    assert "Field required" not in message


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
