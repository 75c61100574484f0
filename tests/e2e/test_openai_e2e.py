"""The official openai SDK through the gateway to running simulators."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from policies.catalog import parse_catalog

from ..gateway.test_parse import MEDIA_PARTS
from .conftest import Gateway, Sims, demo_catalog, start_gateway

USER = [{"role": "user", "content": "Say hello."}]


def route(raw: object) -> str:
    return raw.headers["x-tiergate-route"]  # type: ignore[attr-defined]


# ---- rewrites and pinned tiers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "route_prefix", "thinking"),
    [
        ("deepseek-chat", "flash/non-thinking/flash-local; reason=alias:deepseek-chat", False),
        ("deepseek-reasoner", "flash/think-high/flash-local; reason=alias:deepseek-reasoner", True),
        ("deepseek-v4-pro", "pro/think-high/pro-local; reason=pinned:deepseek-v4-pro", True),
        (
            "deepseek-v4-flash",
            "flash/think-high/flash-local; reason=pinned:deepseek-v4-flash",
            True,
        ),
    ],
)
def test_rewrites_and_pins_on_self_hosted(
    gateway: Gateway, model: str, route_prefix: str, thinking: bool
) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model=model, messages=USER, max_tokens=16
    )
    resp = raw.parse()
    assert route(raw) == route_prefix
    assert raw.headers["x-request-id"]
    msg = resp.choices[0].message
    reasoning = getattr(msg, "reasoning_content", None) or (msg.model_extra or {}).get(
        "reasoning_content"
    )
    assert bool(reasoning) is thinking
    assert (msg.model_extra or {}).get("reasoning") is None  # vLLM's name was normalized away
    usage = resp.usage.model_extra or {}
    assert (
        usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"]
        == resp.usage.prompt_tokens
    )
    # The name the client asked for; the option that answered shows in the route header.
    assert resp.model == model


@pytest.mark.parametrize(
    ("model", "mode", "thinking"),
    [("deepseek-chat", "non-thinking", False), ("deepseek-reasoner", "think-high", True)],
)
def test_rewrites_on_hosted(hosted_first: Gateway, model: str, mode: str, thinking: bool) -> None:
    raw = hosted_first.client().chat.completions.with_raw_response.create(
        model=model, messages=USER, max_tokens=16
    )
    resp = raw.parse()
    assert route(raw).startswith(f"flash/{mode}/hosted; reason=alias:{model}")
    assert bool((resp.choices[0].message.model_extra or {}).get("reasoning_content")) is thinking
    assert resp.model == model  # the same name as from a replica (test above)


def test_explicit_thinking_effort_max(gateway: Gateway) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="deepseek-v4-flash",
        messages=USER,
        max_tokens=16,
        reasoning_effort="max",
    )
    raw.parse()
    assert route(raw).startswith("flash/think-max/flash-local")


# ---- streaming -------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["gateway", "hosted_first"])
def test_stream_reasoning_then_content_then_usage(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    gw: Gateway = request.getfixturevalue(fixture)
    stream = gw.client().chat.completions.create(
        model="deepseek-reasoner",
        messages=USER,
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning, content, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            assert "reasoning" not in extra
            if extra.get("reasoning_content"):
                assert not content, "reasoning must come before content"
                reasoning.append(extra["reasoning_content"])
            if choice.delta.content:
                content.append(choice.delta.content)
    assert reasoning and content and usage is not None
    extra = usage.model_extra or {}
    assert (
        extra["prompt_cache_hit_tokens"] + extra["prompt_cache_miss_tokens"] == usage.prompt_tokens
    )
    settled = gw.settled()[-1]
    assert settled.output_tokens == usage.completion_tokens and settled.status == 200
    assert settled.cost_nanos > 0


def test_stream_without_usage_request_gets_no_usage_chunk_but_is_billed(gateway: Gateway) -> None:
    before = len(gateway.settled())
    chunks = list(
        gateway.client().chat.completions.create(
            model="deepseek-chat", messages=USER, max_tokens=8, stream=True
        )
    )
    assert chunks and all(c.usage is None for c in chunks)
    assert len(gateway.accounting.settled) == before + 1
    assert gateway.settled()[-1].output_tokens > 0


# ---- prefix cache shows up as cheaper cache-hit tokens ----------------------------------


def test_repeated_long_prefix_is_billed_as_cache_hits(gateway: Gateway) -> None:
    system = {"role": "system", "content": "You are a careful assistant. " * 400}
    client = gateway.client()
    client.chat.completions.create(model="deepseek-v4-pro", messages=[system, *USER], max_tokens=8)
    second = client.chat.completions.create(
        model="deepseek-v4-pro", messages=[system, *USER], max_tokens=8
    )
    hits = (second.usage.model_extra or {})["prompt_cache_hit_tokens"]
    assert hits >= 256 and hits % 256 == 0
    a, b = gateway.settled()[-2:]
    assert b.cache_hit_tokens == hits and b.cost_nanos < a.cost_nanos


# ---- auto ------------------------------------------------------------------------------


def _router_scores(gateway: Gateway) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    line = next(
        (ln for ln in text.splitlines() if ln.startswith("tiergate_router_score_count")), ""
    )
    return float(line.split()[-1]) if line else 0.0


def test_a_named_model_never_reaches_the_router(gateway: Gateway) -> None:
    client = gateway.client()
    before = _router_scores(gateway)
    for model in ("deepseek-v4-flash", "deepseek-v4-pro", "deepseek-chat"):
        client.chat.completions.create(model=model, messages=USER, max_tokens=8)
    assert _router_scores(gateway) == before
    client.chat.completions.create(model="auto", messages=USER, max_tokens=8)
    assert _router_scores(gateway) == before + 1


PHYSICS = (
    "A 2.0 kg block slides down a frictionless incline of angle 30 degrees from a height of 5.0 m, "
    "then compresses a spring of constant 400 N/m. Find the maximum compression of the spring.\n"
    "A. 0.50 m\nB. 0.70 m\nC. 1.0 m\nD. 1.2 m\nE. 1.4 m"
)


def test_auto_routes_easy_reasoning_and_hard_requests_differently(gateway: Gateway) -> None:
    client = gateway.client()

    def ask(text: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": text}], max_tokens=8
        )
        raw.parse()
        return route(raw)

    easy = ask("What is 2+2?")
    asked = ask("Explain step by step why the sky is blue.")
    # The generic router scores the task's length: a six-part problem set is the hard one.
    hard = ask("\n\n".join(f"Part {i}. {PHYSICS}" for i in range(1, 7)))
    assert easy.startswith("flash/non-thinking/") and "reason=auto:hard=" in easy
    assert asked.startswith("flash/think-high/") and "asked-to-reason" in asked
    assert hard.startswith("pro/think-high/") and "reason=auto:hard=" in hard


# ---- failover and spill-over -----------------------------------------------------------


def test_failing_replica_is_retried_on_another(gateway: Gateway, sims: Sims) -> None:
    sims.control(sims.flash[0], fail_rate=1.0, fail_status=503)
    client = gateway.client()
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(
            model="deepseek-chat", messages=USER, max_tokens=8
        )
        raw.parse()
        assert "/flash-local;" in route(raw)
        assert gateway.settled()[-1].replica == sims.flash[1]


def test_all_replicas_down_spills_to_hosted_with_reason(gateway: Gateway, sims: Sims) -> None:
    for url in sims.flash:
        sims.control(url, fail_rate=1.0, fail_status=503)
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="deepseek-chat", messages=USER, max_tokens=8
    )
    raw.parse()
    assert route(raw).startswith("flash/non-thinking/hosted")
    assert "failover:flash-local" in route(raw) or "spill:flash-local" in route(raw)
    assert gateway.settled()[-1].backend == "hosted"


# ---- upstream errors reach the client in OpenAI's shape ---------------------------------


@pytest.mark.parametrize(
    ("status", "exc", "code"),
    [
        (402, openai.APIStatusError, "upstream_insufficient_balance"),
        (400, openai.BadRequestError, "upstream_rejected_request"),
    ],
)
def test_non_retryable_hosted_errors_reach_the_client(
    hosted_first: Gateway, sims: Sims, status: int, exc: type[Exception], code: str
) -> None:
    # The hosted API is first in line: 402 and 400 must not be retried anywhere else.
    sims.control(sims.hosted, fail_rate=1.0, fail_status=status)
    before = len(hosted_first.settled())
    with pytest.raises(exc) as info:
        hosted_first.client().chat.completions.create(
            model="deepseek-chat", messages=USER, max_tokens=8
        )
    err = info.value
    assert isinstance(err, openai.APIStatusError)
    assert err.status_code == status
    assert err.body["code"] == code and "hosted backend hosted" in err.body["message"]
    assert len(hosted_first.accounting.settled) == before


def test_hosted_429_fails_over_to_self_hosted(hosted_first: Gateway, sims: Sims) -> None:
    sims.control(sims.hosted, fail_rate=1.0, fail_status=429)
    raw = hosted_first.client().chat.completions.with_raw_response.create(
        model="deepseek-chat", messages=USER, max_tokens=8
    )
    raw.parse()
    assert route(raw).startswith("flash/non-thinking/flash-local")
    assert "failover:hosted:upstream_rate_limited" in route(raw)


@pytest.fixture(scope="module")
def hosted_only(sims: Sims, monkeypatch_module: pytest.MonkeyPatch):
    from .conftest import demo_catalog, start_gateway

    server, gw = start_gateway(demo_catalog(sims, backend_preference=["hosted"]))
    yield gw
    server.stop()


@pytest.mark.parametrize(
    ("status", "code", "retry_after"),
    [(429, "upstream_rate_limited", True), (503, "upstream_unavailable", False)],
)
def test_hosted_only_overload_is_reported_after_retries(
    hosted_only: Gateway, sims: Sims, status: int, code: str, retry_after: bool
) -> None:
    sims.control(sims.hosted, fail_rate=1.0, fail_status=status)
    with pytest.raises(openai.APIStatusError) as info:
        hosted_only.client().chat.completions.create(
            model="deepseek-chat", messages=USER, max_tokens=8
        )
    assert info.value.status_code == status and info.value.body["code"] == code
    if retry_after:
        assert info.value.response.headers.get("retry-after")


def _hosted_requests(sims: Sims) -> int:
    return int(httpx.get(sims.hosted + "/sim/stats", timeout=5).json()["requests"])


@pytest.mark.parametrize(
    ("status", "attempts", "min_seconds"),
    [
        (503, 3, (0.25 + 0.5) / 2),  # 1 + max_retries (2); backoff 0.25, 0.5 s, jitter >= 1/2
        (429, 3, 2 * 1.0),  # Retry-After: 1 from the hosted simulator sets the floor
        (402, 1, 0.0),  # insufficient balance: never retried
    ],
)
def test_hosted_retries_with_backoff_only_where_safe(
    hosted_only: Gateway, sims: Sims, status: int, attempts: int, min_seconds: float
) -> None:
    sims.control(sims.hosted, fail_rate=1.0, fail_status=status)
    before = _hosted_requests(sims)
    t = time.perf_counter()
    with pytest.raises(openai.APIStatusError) as info:
        hosted_only.client().chat.completions.create(
            model="deepseek-chat", messages=USER, max_tokens=8
        )
    elapsed = time.perf_counter() - t
    assert info.value.status_code == status
    assert _hosted_requests(sims) - before == attempts
    assert elapsed >= min_seconds * 0.9


def test_insufficient_system_resource_is_passed_on_and_billed(
    hosted_only: Gateway, sims: Sims
) -> None:
    sims.control(sims.hosted, fail_rate=1.0, fail_mode="insufficient")
    before = len(hosted_only.settled())
    out = hosted_only.client().chat.completions.create(
        model="deepseek-chat", messages=USER, max_tokens=32
    )
    assert out.choices[0].finish_reason == "insufficient_system_resource"
    assert len(hosted_only.settled()) == before + 1
    assert out.usage is not None and out.usage.prompt_tokens > 0


def test_unknown_model_is_404_listing_models(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        gateway.client().chat.completions.create(model="gpt-17", messages=USER)
    assert "gpt-17" in info.value.body["message"] and "deepseek-chat" in info.value.body["message"]
    assert info.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{oops", 400, "not valid JSON"),
        (b'{"model": "deepseek-chat"}', 400, "'messages' is required"),
        (b'{"model": "deepseek-chat", "messages": []}', 400, "must not be empty"),
        (
            b'{"model": "deepseek-chat", "messages": [{"role": "user", "content": 1}]}',
            400,
            "string or a list",
        ),
        (
            b'{"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
            400,
            "positive integer",
        ),
        (
            b'{"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}], "thinking": "on"}',
            400,
            "'thinking' must be",
        ),
        (
            b'{"model": "deepseek-chat", "messages": [{"role": "user", "content": "'
            + b"x" * 40_000
            + b'"}]}',
            413,
            "over this gateway's limit",
        ),
    ],
)
def test_bad_input_is_a_clear_openai_error(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch, body: bytes, status: int, fragment: str
) -> None:
    from .conftest import demo_catalog, start_gateway

    server, gw = start_gateway(demo_catalog(sims), max_body_bytes=32_000)
    try:
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
        )
    finally:
        server.stop()
    assert r.status_code == status
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"] and err["code"]
    assert gw.accounting.settled == []


# ---- the media policy (TIERGATE_MEDIA_POLICY), as for /v1/messages and /v1/responses --------

# MEDIA_PARTS: each content part type that is not text (tests/gateway/test_parse.py)


MEDIA_IDS = [f"{part['type']}-{i}" for i, (part, _) in enumerate(MEDIA_PARTS)]


def _media_message(part: dict[str, Any]) -> list[Any]:
    return [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}]


@pytest.mark.parametrize(("part", "kind"), MEDIA_PARTS, ids=MEDIA_IDS)
def test_media_parts_become_notes_in_the_route_and_the_metric(
    gateway: Gateway, part: dict[str, Any], kind: str
) -> None:
    metric = gateway.app.state.tiergate.metrics.adaptations.labels("openai", f"{kind}-as-text")
    before = metric._value.get()
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="deepseek-chat", messages=_media_message(part), max_tokens=8
    )
    assert raw.parse().choices[0].message.content
    assert f"{kind}-as-text=1" in route(raw)
    assert metric._value.get() == before + 1


@pytest.fixture(scope="module")
def strict_media(sims: Sims, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Gateway]:
    server, gw = start_gateway(demo_catalog(sims), media_policy="reject")
    yield gw
    server.stop()


@pytest.mark.parametrize(("part", "kind"), MEDIA_PARTS, ids=MEDIA_IDS)
def test_media_policy_reject_is_an_openai_400_with_param(
    strict_media: Gateway, part: dict[str, Any], kind: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        strict_media.client().chat.completions.create(
            model="deepseek-chat", messages=_media_message(part), max_tokens=8
        )
    err = info.value.body
    assert isinstance(err, dict)
    assert err["param"] == "messages[0].content[1]" and err["type"] == "invalid_request_error"
    assert (
        f"{part['type']} parts are not supported (DeepSeek V4 reads text only)" in (err["message"])
    )
    assert strict_media.accounting.settled == []


def test_media_policy_reject_leaves_text_refusal_and_completions_alone(
    strict_media: Gateway,
) -> None:
    client = strict_media.client()
    raw = client.chat.completions.with_raw_response.create(
        model="deepseek-chat",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            {"role": "user", "content": "why"},
        ],
        max_tokens=8,
    )
    assert raw.parse().choices[0].message.content and "-as-text" not in route(raw)
    done = client.completions.create(model="deepseek-chat", prompt="def f(", max_tokens=8)
    assert done.choices[0].text


def test_unknown_route_is_openai_shaped_404(gateway: Gateway) -> None:
    r = httpx.post(gateway.url + "/v1/embeddings", json={})
    assert r.status_code == 404 and "no route" in r.json()["error"]["message"]


# ---- system endpoints ------------------------------------------------------------------


def test_models_health_ready_metrics(gateway: Gateway) -> None:
    models = [m.id for m in gateway.client().models.list()]
    assert {"deepseek-chat", "deepseek-reasoner", "deepseek-v4-pro", "auto"} <= set(models)
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["tiers"] == {"flash": True, "pro": True}
    gateway.client().chat.completions.create(model="deepseek-chat", messages=USER, max_tokens=4)
    text = httpx.get(gateway.url + "/metrics").text
    for name in (
        "tiergate_requests_total",
        "tiergate_tokens_total",
        "tiergate_cost_nanodollars_total",
        "tiergate_request_duration_seconds_bucket",
    ):
        assert name in text


def test_metrics_cost_equals_sum_of_settled_costs(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from .conftest import demo_catalog, start_gateway

    server, gw = start_gateway(demo_catalog(sims))
    try:
        client = gw.client()
        for model in ("deepseek-chat", "deepseek-reasoner", "deepseek-v4-pro", "auto"):
            client.chat.completions.create(model=model, messages=USER, max_tokens=8)
        list(
            client.chat.completions.create(
                model="deepseek-chat", messages=USER, max_tokens=8, stream=True
            )
        )
        gw.settled()  # every answer's settlement has ended
        text = httpx.get(gw.url + "/metrics").text
    finally:
        server.stop()
    total = sum(
        s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "tiergate_cost_nanodollars"
        for s in fam.samples
        if s.name.endswith("_total")
    )
    assert total == sum(s.cost_nanos for s in gw.accounting.settled) > 0
    assert len(gw.accounting.settled) == 5


# ---- configuration fails fast ------------------------------------------------------------


def test_serve_refuses_a_bad_catalog(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (Path(__file__).resolve().parents[2] / "gateway" / "examples" / "demo.yaml")
        .read_text()
        .replace("max_model_len", "max_len", 1)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(bad), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "invalid catalog" in proc.stderr and "max_len" in proc.stderr


# A tool round trip whose assistant turn carries no reasoning_content: a conversation held
# without thinking, or a thinking one whose client library dropped the reasoning.
TOOL_HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
]


def test_failover_to_hosted_keeps_a_thinking_tool_history_valid(
    gateway: Gateway, sims: Sims
) -> None:
    # A thinking-mode tool round trip whose assistant turn lost its reasoning_content (as
    # some client libraries drop it): replicas accept it, the hosted API would answer 400.
    history = TOOL_HISTORY
    for url in sims.flash:
        sims.control(url, fail_rate=1.0, fail_status=503)
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="deepseek-reasoner",
        messages=history,
        max_tokens=16,  # type: ignore[arg-type]
    )
    resp = raw.parse()
    assert resp.choices[0].message.content
    assert route(raw).startswith("flash/non-thinking/hosted;")
    assert "non-thinking-on-hosted:tool-turn-without-reasoning" in route(raw)
    s = gateway.settled()[-1]
    assert s.backend == "hosted" and s.mode == "non-thinking"


def _langchain_tool_round_trip(url: str) -> Any:
    """LangChain's ChatOpenAI drops ``reasoning_content`` when it sends the history back."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="deepseek-reasoner",
        base_url=url + "/v1",
        api_key="test",
        max_retries=0,  # type: ignore[arg-type]
    )
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    tools = llm.bind_tools([weather])
    ask = HumanMessage('use the get_weather tool with {"city": "Paris"}')
    call = tools.invoke([ask])
    assert call.tool_calls and call.tool_calls[0]["args"] == {"city": "Paris"}
    result = ToolMessage("sunny", tool_call_id=call.tool_calls[0]["id"])
    answer = tools.invoke([ask, call, result])
    assert answer.text and not answer.tool_calls
    return answer


def test_a_pinned_reasoner_tool_round_trip_from_langchain_with_hosted_first(
    hosted_first: Gateway,
) -> None:
    # The hosted API would refuse the second call (thinking, reasoning dropped): a replica,
    # which thinks on over an empty thought, answers it instead.
    answer = _langchain_tool_round_trip(hosted_first.url)
    assert answer.response_metadata["model_name"] == "deepseek-reasoner"
    s = hosted_first.settled()[-1]
    assert (s.backend, s.mode) == ("flash-local", "think-high"), s.route_reason


def test_a_pinned_reasoner_tool_round_trip_from_langchain_on_the_hosted_api_alone(
    sims: Sims,
) -> None:
    data = demo_catalog(sims).model_dump(mode="json", by_alias=True, exclude_unset=True)
    data["backends"]["flash-local"]["replicas"] = ["http://127.0.0.1:9"]  # nothing listens
    data["backends"]["flash-local"]["poll_interval_s"] = 0.2
    server, gw = start_gateway(parse_catalog(data))
    try:
        time.sleep(1.0)  # the replica's first polls fail: it is down
        _langchain_tool_round_trip(gw.url)
        s = gw.settled()[-1]
        assert (s.backend, s.mode) == ("hosted", "non-thinking")
        assert s.route_reason.endswith(";history-non-thinking"), s.route_reason
    finally:
        server.stop()


def test_auto_continues_a_non_thinking_tool_conversation_without_thinking_on_hosted(
    hosted_first: Gateway,
) -> None:
    # An agent loop that ran without thinking so far (its tool-call turn carries no
    # reasoning_content) now asks something auto would answer with thinking. The hosted API
    # refuses thinking on such a history (400), so auto keeps the conversation's mode.
    history = [
        *TOOL_HISTORY,
        {"role": "user", "content": "Explain step by step why the sky is blue."},
    ]
    client = hosted_first.client()
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=history, max_tokens=16
    )
    assert raw.parse().choices[0].message.content
    assert route(raw).startswith("flash/non-thinking/hosted;")
    assert "history-non-thinking" in route(raw)
    # The same question without that history still thinks: the mode came from the history.
    fresh = client.chat.completions.with_raw_response.create(
        model="auto", messages=history[-1:], max_tokens=16
    )
    fresh.parse()
    assert route(fresh).startswith("flash/think-high/hosted;")


def test_several_choices_with_the_hosted_api_first_go_to_a_replica(hosted_first: Gateway) -> None:
    # The hosted API answers n=1 only (400 otherwise); a replica samples all three.
    raw = hosted_first.client().chat.completions.with_raw_response.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "hi"}], n=3, max_tokens=8
    )
    assert len(raw.parse().choices) == 3
    assert route(raw).startswith("flash/non-thinking/flash-local;")
    assert route(raw).endswith(";spill:hosted:n")
