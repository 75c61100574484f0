"""Upstream failures seen through the gateway: time-outs, broken streams, litellm-backed paths."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
import yaml

from policies.catalog import parse_catalog

from .conftest import DEMO, Gateway, Sims, start_gateway

USER = [{"role": "user", "content": "Say hello."}]


def catalog_doc(sims: Sims) -> dict[str, Any]:
    data = copy.deepcopy(yaml.safe_load(DEMO.read_text()))
    data["backends"]["flash-local"]["replicas"] = sims.flash
    data["backends"]["pro-local"]["replicas"] = sims.pro
    data["backends"]["hosted"]["base_url"] = sims.hosted
    return data


@pytest.fixture(scope="module")
def strict_gateway(sims: Sims, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Gateway]:
    """Self-hosted only (no spill), one-second upstream read time-out."""
    data = catalog_doc(sims)
    data["routing"]["backend_preference"] = ["self_hosted"]
    data["backends"]["flash-local"]["timeout_s"] = 1.0
    data["backends"]["flash-local"]["replicas"] = sims.flash[:1]
    server, gw = start_gateway(parse_catalog(data))
    yield gw
    server.stop()


def test_stalled_upstream_is_a_504(strict_gateway: Gateway, sims: Sims) -> None:
    sims.control(sims.flash[0], fail_rate=1.0, fail_mode="stall")
    try:
        with pytest.raises(openai.APIStatusError) as info:
            strict_gateway.client(timeout=30).chat.completions.create(
                model="deepseek-chat", messages=USER, max_tokens=8
            )
    finally:
        sims.control(sims.flash[0], fail_rate=0.0, fail_mode="")
    assert info.value.status_code == 504
    assert info.value.body["code"] == "upstream_timeout"


def test_stream_dying_midway_ends_with_an_error_event_and_is_billed(
    strict_gateway: Gateway, sims: Sims
) -> None:
    sims.control(sims.flash[0], fail_rate=1.0, fail_mode="midstream")
    before = len(strict_gateway.settled())
    try:
        with httpx.stream(
            "POST",
            strict_gateway.url + "/v1/chat/completions",
            json={"model": "deepseek-chat", "messages": USER, "stream": True},
            timeout=10,
        ) as r:
            assert r.status_code == 200
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
    finally:
        sims.control(sims.flash[0], fail_rate=0.0, fail_mode="")
    assert events, "the client got the chunks sent before the failure"
    last = orjson.loads(events[-1][6:])
    message = last["error"]["message"]
    assert "broke off" in message or "ended the stream" in message
    assert "data: [DONE]" not in events
    settled = strict_gateway.accounting.settled[before:]
    assert len(settled) == 1
    assert settled[0].status >= 500 and settled[0].output_tokens > 0
    assert "usage=estimated" in settled[0].route_reason


def test_a_whole_stream_without_its_usage_is_served_not_failed(
    strict_gateway: Gateway, sims: Sims
) -> None:
    """An upstream that ignores ``stream_options.include_usage`` sends the whole answer and
    ``[DONE]`` but no usage: the client was served, so the ledger says 200, billed from the
    estimate (before: 502, counted as a failure)."""
    sims.control(sims.flash[0], fail_rate=1.0, fail_mode="no_usage")
    before = len(strict_gateway.settled())
    try:
        chunks = list(
            strict_gateway.client().chat.completions.create(
                model="deepseek-chat", messages=USER, max_tokens=16, stream=True
            )
        )
    finally:
        sims.control(sims.flash[0], fail_rate=0.0, fail_mode="")
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason in ("stop", "length")
    (s,) = strict_gateway.settled()[before:]
    assert s.status == 200 and "usage=estimated" in s.route_reason, (s.status, s.route_reason)
    assert s.output_tokens > 0 and s.cache_miss_tokens > 0


@pytest.fixture(scope="module")
def litellm_gateway(sims: Sims, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Gateway]:
    """Hosted DeepSeek through litellm, plus a pass-through model priced by litellm's map."""
    data = catalog_doc(sims)
    data["routing"]["backend_preference"] = ["hosted"]
    data["backends"]["hosted"]["client"] = "litellm"
    data["backends"]["hosted"]["max_retries"] = 0
    monkeypatch_module.setenv("SIM_PASSTHROUGH_KEY", "k")
    data["passthrough"] = {
        "gpt-4o-mini": {
            "litellm_model": "openai/gpt-4o-mini",
            "api_base": sims.hosted + "/v1",
            "api_key_env": "SIM_PASSTHROUGH_KEY",
        }
    }
    server, gw = start_gateway(parse_catalog(data))
    yield gw
    server.stop()


def test_hosted_through_litellm_keeps_deepseek_shape(litellm_gateway: Gateway) -> None:
    raw = litellm_gateway.client().chat.completions.with_raw_response.create(
        model="deepseek-reasoner", messages=USER, max_tokens=64
    )
    resp = raw.parse()
    assert raw.headers["x-tiergate-route"].startswith("flash/think-high/hosted")
    assert (resp.choices[0].message.model_extra or {}).get("reasoning_content")
    u = resp.usage.model_extra or {}
    assert u["prompt_cache_hit_tokens"] + u["prompt_cache_miss_tokens"] == resp.usage.prompt_tokens
    assert "provider_specific_fields" not in raw.text
    s = litellm_gateway.settled()[-1]
    assert (
        s.backend == "hosted" and s.cost_nanos > 0 and s.price_version.startswith("deepseek-flash@")
    )


def test_hosted_through_litellm_streams(litellm_gateway: Gateway) -> None:
    chunks = list(
        litellm_gateway.client().chat.completions.create(
            model="deepseek-chat",
            messages=USER,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert litellm_gateway.settled()[-1].output_tokens == chunks[-1].usage.completion_tokens


def test_passthrough_model_priced_from_litellm_price_map(
    litellm_gateway: Gateway, sims: Sims
) -> None:
    # The hosted simulator answers any configured model name; accept gpt-4o-mini for this test.
    sims.control(
        sims.hosted,
        models=["deepseek-v4-flash", "deepseek-v4-pro", "deepseek-flash", "gpt-4o-mini"],
    )
    raw = litellm_gateway.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=USER,
        max_tokens=16,
        extra_body={"thinking": {"type": "disabled"}},
    )
    raw.parse()
    assert raw.headers["x-tiergate-route"].startswith("gpt-4o-mini/non-thinking/gpt-4o-mini")
    s = litellm_gateway.settled()[-1]
    assert s.price_version == "litellm-price-map" and s.cost_nanos > 0


# ---- a stream that breaks is billed for the text it delivered -----------------------------


@pytest.fixture(scope="module")
def breaking() -> Iterator[Any]:
    """A Flash replica whose every stream breaks off after a few chunks."""
    from engines.sim.config import SimConfig
    from engines.sim.runner import SimServer

    cfg = SimConfig.preset("flash", replica_id="breaks", default_output_tokens=100)
    server = SimServer(cfg.zero_latency()).start()
    server.state.control({"fail_rate": 1.0, "fail_mode": "midstream"})
    yield server
    server.stop()


def _openai_stream_text(url: str, key: str) -> tuple[str, str]:
    """(content received, request id) of a stream that ends with an error event."""
    text, request_id, error = "", "", None
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            url + "/v1/chat/completions",
            json={"model": "deepseek-chat", "messages": USER, "max_tokens": 400, "stream": True},
            headers={"Authorization": f"Bearer {key}"},
        ) as r,
    ):
        assert r.status_code == 200, r.read()
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = orjson.loads(line[6:])
                error = chunk.get("error") or error
                for choice in chunk.get("choices") or ():
                    text += choice["delta"].get("content") or ""
    assert error is not None, "the stream ended with an error event"
    return text, request_id


def _anthropic_stream_text(url: str, key: str) -> tuple[str, str]:
    import anthropic

    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    text = ""
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.with_streaming_response.create(
            model="deepseek-chat",
            max_tokens=400,
            messages=[{"role": "user", "content": "Say hello."}],
            stream=True,
        ) as raw,
    ):
        request_id = raw.headers["x-request-id"]
        for event in raw.parse():
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
    return text, request_id


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_a_broken_stream_is_billed_for_the_text_it_delivered_not_its_wire_bytes(
    breaking: Any, sims: Sims, pg_url: str, redis_url: str, tmp_path: Any, protocol: str
) -> None:
    """A pool-only gateway process with the PostgreSQL ledger: the row of a stream cut after
    a few chunks holds about the delivered text's tokens (text / 4, rounded up), not the
    bytes of the chunks' JSON envelopes (about 20 times more for one-token chunks)."""
    import math
    import time

    from .test_money_e2e import Gateways, drop_keys, money_env, new_key, sql, wait_rows

    data = catalog_doc(sims)
    data["routing"]["backend_preference"] = ["self_hosted"]
    data["backends"]["flash-local"]["replicas"] = [breaking.base_url]
    config = tmp_path / "catalog.yaml"
    config.write_text(yaml.safe_dump(data))
    prefix = f"tgbrk:{time.time_ns()}:"
    gws = Gateways(money_env(pg_url, redis_url, prefix), config)
    gws.start(1)
    try:
        team_id, _, key = new_key(gws, f"breaks-{protocol}-{time.time_ns()}")
        read = _openai_stream_text if protocol == "openai" else _anthropic_stream_text
        text, request_id = read(gws.urls[0], key)
        assert text, "the client got text before the stream broke"
        assert wait_rows(pg_url, team_id, 1) == 1
        ((status, output, reason),) = sql(
            pg_url,
            "select status, output_tokens, route_reason from ledger where request_id = %s",
            request_id,
        )
    finally:
        gws.stop()
        drop_keys(redis_url, prefix)
    assert status == 502 and "usage=estimated" in reason, (status, reason)
    delivered = math.ceil(len(text) / 4)
    # never below what was delivered; escapes in the JSON text may add a little
    assert delivered <= output <= delivered + 2, (output, len(text), text)


# ---- a broken stream's prompt is billed from the prompt, not from the request body --------

HUGE = "u" * 8000  # a client's user id, metadata...: never part of the prompt


@pytest.fixture(scope="module")
def breaking_gateway(
    breaking: Any, sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> Iterator[Gateway]:
    data = catalog_doc(sims)
    data["routing"]["backend_preference"] = ["self_hosted"]
    data["backends"]["flash-local"]["replicas"] = [breaking.base_url]
    server, gw = start_gateway(parse_catalog(data))
    yield gw
    server.stop()


def _cut_stream(gw: Gateway, path: str, body: dict[str, Any]) -> str:
    """Send a stream that the upstream breaks off; the request id of the ledger entry."""
    with httpx.stream("POST", gw.url + path, json=body, timeout=30) as r:
        assert r.status_code == 200, r.read()
        r.read()
        return r.headers["x-request-id"]


def _billed_prompt(gw: Gateway, request_id: str) -> int:
    (s,) = [s for s in gw.settled() if s.request_id == request_id]
    assert s.status == 502 and "usage=estimated" in s.route_reason, (s.status, s.route_reason)
    assert s.cache_hit_tokens == 0
    return s.cache_miss_tokens


PADDED = {
    # (path, the plain body, fields that never reach the prompt)
    "openai": (
        "/v1/chat/completions",
        {"model": "deepseek-chat", "messages": [{"role": "user", "content": "Hi"}]},
        {"user": HUGE, "metadata": {"note": HUGE}, "stream_options": {"include_usage": True}},
    ),
    "anthropic": (
        "/v1/messages",
        {
            "model": "deepseek-chat",
            "max_tokens": 400,
            "messages": [{"role": "user", "content": "Hi"}],
        },
        {"metadata": {"user_id": HUGE}},
    ),
    "responses": (
        "/v1/responses",
        {"model": "deepseek-chat", "input": "Hi"},
        {"user": HUGE, "metadata": {"note": HUGE[:512]}, "safety_identifier": HUGE},
    ),
}


@pytest.mark.parametrize("protocol", list(PADDED))
def test_a_broken_streams_prompt_estimate_ignores_fields_outside_the_prompt(
    breaking_gateway: Gateway, protocol: str
) -> None:
    path, body, padding = PADDED[protocol]
    plain = _billed_prompt(
        breaking_gateway, _cut_stream(breaking_gateway, path, {**body, "stream": True})
    )
    padded = _billed_prompt(
        breaking_gateway, _cut_stream(breaking_gateway, path, {**body, **padding, "stream": True})
    )
    assert plain == padded, (plain, padded)
    assert padded <= 16, padded  # "Hi" and a message's template, not 8,000 bytes / 3


def test_a_broken_streams_prompt_estimate_counts_what_the_model_reads(
    breaking_gateway: Gateway,
) -> None:
    """System prompt, tool definitions, tool calls in the history and tool results: all of
    it is prompt, in every protocol's own shape."""
    words = "lorem ipsum dolor sit amet " * 60  # 1,620 characters
    tool = {"name": "search", "description": words, "parameters": {"type": "object"}}
    chat = {
        "model": "deepseek-chat",
        "stream": True,
        "tools": [{"type": "function", "function": tool}],
        "messages": [
            {"role": "system", "content": words},
            {"role": "user", "content": [{"type": "text", "text": words}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {
                            "name": "search",
                            "arguments": orjson.dumps({"q": words}).decode(),
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": words},
        ],
    }
    anthropic = {
        "model": "deepseek-chat",
        "stream": True,
        "max_tokens": 400,
        "system": words,
        "tools": [{"name": "search", "description": words, "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": words}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "c1", "name": "search", "input": {"q": words}}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "c1", "content": words}],
            },
        ],
    }
    responses = {
        "model": "deepseek-chat",
        "stream": True,
        "instructions": words,
        "tools": [{"type": "function", **tool}],
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": words}]},
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "search",
                "arguments": orjson.dumps({"q": words}).decode(),
            },
            {"type": "function_call_output", "call_id": "c1", "output": words},
        ],
    }
    billed = [
        _billed_prompt(breaking_gateway, _cut_stream(breaking_gateway, path, body))
        for path, body in (
            ("/v1/chat/completions", chat),
            ("/v1/messages", anthropic),
            ("/v1/responses", responses),
        )
    ]
    five = 5 * len(words)  # system, user turn, tool description, call arguments, tool result
    for n in billed:
        # + the template: messages, one tool call (16), the tool instructions (200), one tool (8)
        assert five // 4 <= n <= five // 3 + 60 + 16 + 208, (billed, five)


def test_a_broken_streams_ledger_row_and_budget_hold_the_prompt_not_the_body(
    breaking: Any, sims: Sims, pg_url: str, redis_url: str, tmp_path: Any
) -> None:
    """A gateway process with keys, Redis budgets and the PostgreSQL ledger: a cut stream
    whose body carries an 8,000-character ``user`` is billed for its one-word prompt, in the
    ledger row and in the team's budget window."""
    import time

    from prometheus_client.parser import text_string_to_metric_families

    from .test_money_e2e import Gateways, admin, drop_keys, money_env, new_key, sql, wait_rows

    data = catalog_doc(sims)
    data["routing"]["backend_preference"] = ["self_hosted"]
    data["backends"]["flash-local"]["replicas"] = [breaking.base_url]
    config = tmp_path / "catalog.yaml"
    config.write_text(yaml.safe_dump(data))
    prefix = f"tgest:{time.time_ns()}:"
    gws = Gateways(money_env(pg_url, redis_url, prefix), config)
    gws.start(1)
    team = f"estimate-{time.time_ns()}"
    try:
        team_id, _, key = new_key(gws, team)
        budget = {"scope": "team", "scope_id": team, "period": "day", "limit_usd": 10.0}
        assert admin(gws, "PUT", "/budgets", budget).status_code == 200
        body = {
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": "Hi"}],
            "user": HUGE,
            "metadata": {"note": HUGE},
            "stream": True,
        }
        with httpx.stream(
            "POST",
            gws.urls[0] + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ) as r:
            assert r.status_code == 200
            r.read()
            request_id = r.headers["x-request-id"]
        assert wait_rows(pg_url, team_id, 1) == 1
        ((status, prompt, cost, reason),) = sql(
            pg_url,
            "select status, cache_miss_tokens, cost_nanos, route_reason from ledger "
            "where request_id = %s",
            request_id,
        )
        metrics = httpx.get(gws.urls[0] + "/metrics").text
    finally:
        gws.stop()
        drop_keys(redis_url, prefix)
    assert status == 502 and "usage=estimated" in reason, (status, reason)
    assert prompt <= 16, prompt  # not 16,000+ bytes of user and metadata / 3
    spent = [
        s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "tiergate_budget_spent_nanodollars"
        for s in family.samples
        if s.labels.get("scope_id") == team_id
    ]
    assert spent == [cost], (spent, cost)


# ---- a body that breaks off: a clean 502, the library's words in the log only -------------

CUT_BODIES = {
    "openai": ("/v1/chat/completions", {"model": "deepseek-chat", "messages": USER}),
    "anthropic": ("/v1/messages", {"model": "deepseek-chat", "max_tokens": 64, "messages": USER}),
    "responses": ("/v1/responses", {"model": "deepseek-chat", "input": "Say hello."}),
}


@pytest.mark.parametrize("protocol", list(CUT_BODIES))
def test_an_answer_broken_off_midway_is_a_clean_502_in_the_protocols_shape(
    strict_gateway: Gateway, sims: Sims, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .test_rejections import Lines

    recorder = Lines()
    monkeypatch.setattr(strict_gateway.app.state.tiergate.pipeline, "log", recorder)
    path, body = CUT_BODIES[protocol]
    sims.control(sims.flash[0], fail_rate=1.0, fail_mode="midstream")
    try:
        r = httpx.post(strict_gateway.url + path, json=body, timeout=30)
    finally:
        sims.control(sims.flash[0], fail_rate=0.0, fail_mode="")
    assert r.status_code == 502, r.text
    data = r.json()
    if protocol == "anthropic":
        assert data["type"] == "error" and data["error"]["type"] == "api_error"
        message = data["error"]["message"]
    else:
        assert data["error"]["code"] == "upstream_error"
        message = data["error"]["message"]
    assert "broke off its response mid-way: connection closed" in message, message
    for internal in ("aiohttp", "Error", "<", "http://", "127.0.0.1", "payload"):
        assert internal not in message, message
    logged = [e for e in recorder.lines if e.get("event") == "request" and e.get("status") == 502]
    assert logged and "ClientPayloadError" in logged[-1]["error"]  # the log keeps the detail


def test_a_broken_streams_output_estimate_never_passes_max_tokens(
    breaking_gateway: Gateway,
) -> None:
    """Four characters a token can count more tokens than the upstream was allowed to
    generate; the estimate stops at the ``max_tokens`` it was given (what was reserved)."""
    body = {
        "model": "deepseek-chat",
        "stream": True,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    rid = _cut_stream(breaking_gateway, "/v1/chat/completions", body)
    (s,) = [s for s in breaking_gateway.settled() if s.request_id == rid]
    assert s.status == 502 and "usage=estimated" in s.route_reason, (s.status, s.route_reason)
    assert s.output_tokens == 1, s.output_tokens
