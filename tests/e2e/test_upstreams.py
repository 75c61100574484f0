"""Upstreams as the real servers behave, through the gateway with the official SDKs.

Each simulator here is switched to one of the real servers' harder behaviours (see
docs/upstreams.md): a request error answered 500/501, idle connections closed under the
client, a queued hosted stream of keep-alive comments, an error event mid-stream, tool
calls finishing with ``stop`` and streamed in fragments, data-parallel engines, slow polls.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import aiohttp
import anthropic
import httpx
import openai
import pytest
import yaml

from engines.base import EngineRequest
from engines.litellm_engine import _litellm
from engines.sim.config import SimConfig
from engines.sim.runner import SimServer
from engines.vllm import VllmEngine
from policies.affinity import engine_name
from policies.catalog import Catalog, VllmBackend, parse_catalog
from policies.options import NON_THINKING, Option

from .conftest import DEMO, Gateway, Sims, start_gateway

MSG = [{"role": "user", "content": "hello"}]


def sim(replica_id: str, **cfg: Any) -> SimServer:
    return SimServer(SimConfig.preset("flash", replica_id=replica_id, **cfg).zero_latency()).start()


@pytest.fixture(scope="module")
def pair() -> Iterator[list[SimServer]]:
    servers = [sim("u0"), sim("u1")]
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def gw(
    pair: list[SimServer], sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> Iterator[Gateway]:
    server, gateway = start_gateway(catalog_for([s.base_url for s in pair], sims))
    yield gateway
    server.stop()


def catalog_for(
    urls: list[str],
    sims: Sims,
    *,
    hosted: str | None = None,
    hosted_spec: dict[str, Any] | None = None,
    routing: dict[str, Any] | None = None,
    **backend: Any,
) -> Catalog:
    """The demo catalog with these Flash replicas (polled every 0.2 s unless told)."""
    data = yaml.safe_load(DEMO.read_text())
    data["backends"]["flash-local"]["replicas"] = urls
    data["backends"]["flash-local"].update({"poll_interval_s": 0.2, **backend})
    data["backends"]["pro-local"]["replicas"] = sims.pro
    data["backends"]["hosted"]["base_url"] = hosted or sims.hosted
    data["backends"]["hosted"].update(hosted_spec or {})
    data["routing"].update(routing or {})
    return parse_catalog(data)


def requests_seen(*servers: SimServer) -> int:
    return sum(s.state.stats["requests"] for s in servers)


def breaker_open(gateway: Gateway, backend: str) -> list[str]:
    text = httpx.get(gateway.url + "/metrics").text
    return [
        line
        for line in text.splitlines()
        if line.startswith("tiergate_replica_breaker{")
        and f'backend="{backend}"' in line
        and 'state="open"' in line
        and line.endswith(" 1.0")
    ]


def route_of(gateway: Gateway, **kw: Any) -> str:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="deepseek-chat", messages=MSG, max_tokens=4, **kw
    )
    return str(raw.headers["x-tiergate-route"])


# ---- a request's own error is not a replica failure ------------------------------------


def test_request_error_501_reaches_one_replica_opens_no_breaker_and_is_a_400(
    pair: list[SimServer], sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    # Self-hosted only: no other backend to try, so the replica's refusal is the answer.
    catalog = catalog_for(
        [s.base_url for s in pair], sims, routing={"backend_preference": ["self_hosted"]}
    )
    server, gateway = start_gateway(catalog)
    before = requests_seen(*pair)
    hosted_before = httpx.get(sims.hosted + "/sim/stats").json()["requests"]
    try:
        for _ in range(3):
            with pytest.raises(openai.BadRequestError) as info:
                gateway.client().chat.completions.create(
                    model="deepseek-chat",
                    messages=[{"role": "function", "name": "f", "content": "x"}, *MSG],
                    max_tokens=4,
                )
            assert info.value.status_code == 400
            body = info.value.body
            assert isinstance(body, dict) and body["code"] == "upstream_request_failed"
            assert "501" in body["message"] and "Unknown role" in body["message"]
        # Each bad request reached one replica (its sibling would refuse it alike), never
        # the hosted API, and opened no breaker.
        assert requests_seen(*pair) - before == 3
        assert httpx.get(sims.hosted + "/sim/stats").json()["requests"] == hosted_before
        time.sleep(0.4)
        assert breaker_open(gateway, "flash-local") == []
        assert route_of(gateway).startswith("flash/non-thinking/flash-local")
    finally:
        server.stop()


def test_a_prompt_over_the_replicas_context_is_tried_once_on_the_hosted_api(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    short = sim("short", max_model_len=64)  # its real limit; the catalog says more
    server, gateway = start_gateway(catalog_for([short.base_url], sims))
    try:
        for _ in range(3):
            raw = gateway.client().chat.completions.with_raw_response.create(
                model="deepseek-chat",
                messages=[{"role": "user", "content": "long " * 200}],
                max_tokens=4,
            )
            route = raw.headers["x-tiergate-route"]
            assert route.startswith("flash/non-thinking/hosted"), route
            assert "failover:flash-local:upstream_request_failed" in route
        assert short.state.stats["requests"] == 3
        time.sleep(0.4)
        assert breaker_open(gateway, "flash-local") == []
    finally:
        server.stop()
        short.stop()


def test_assertion_500_on_a_single_replica_fails_over_once_and_keeps_the_breaker_closed(
    pair: list[SimServer], sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    server, gateway = start_gateway(catalog_for([pair[0].base_url], sims))
    try:
        bad = [{"role": "developer", "content": ""}, *MSG]
        for _ in range(3):
            raw = gateway.client().chat.completions.with_raw_response.create(
                model="deepseek-chat", messages=bad, max_tokens=4
            )
            route = raw.headers["x-tiergate-route"]
            # The hosted API encodes the message: served there, after one try on the replica.
            assert route.startswith("flash/non-thinking/hosted"), route
            assert "failover:flash-local:upstream_request_failed" in route
        assert breaker_open(gateway, "flash-local") == []
        assert route_of(gateway).startswith("flash/non-thinking/flash-local")
    finally:
        server.stop()


def test_an_empty_500_is_still_a_replica_failure(
    pair: list[SimServer], sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    server, gateway = start_gateway(catalog_for([s.base_url for s in pair], sims))
    for s in pair:
        s.state.control({"fail_rate": 1.0, "fail_status": 500})
    try:
        for _ in range(2):
            assert route_of(gateway).startswith("flash/non-thinking/hosted")
        time.sleep(0.4)  # the next poll exports the breakers
        assert len(breaker_open(gateway, "flash-local")) == 2
    finally:
        for s in pair:
            s.state.control({"fail_rate": 0.0})
        server.stop()


# ---- idle connections closed by the server ---------------------------------------------


def test_a_connection_the_replica_closed_for_idleness_is_sent_again_on_the_same_replica(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    replica = sim("idle", idle_close_s=0.5)
    # One poll only, so that nothing but the requests uses the pooled connection.
    server, gateway = start_gateway(catalog_for([replica.base_url], sims, poll_interval_s=60))
    try:
        first = route_of(gateway)
        time.sleep(0.8)  # idle past the replica's keep-alive, under the gateway's 4 s
        second = route_of(gateway)
        metrics = httpx.get(gateway.url + "/metrics").text
        assert breaker_open(gateway, "flash-local") == []
    finally:
        server.stop()
        replica.stop()
    assert replica.state.stats["idle_closes"] >= 1  # the request met a closed connection
    assert first.startswith("flash/non-thinking/flash-local")
    assert second.startswith("flash/non-thinking/flash-local") and "failover" not in second
    assert 'tiergate_upstream_resends_total{backend="flash-local"} 1.0' in metrics


def test_connections_idle_past_the_gateways_keep_alive_are_not_reused(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    replica = sim("idle2", idle_close_s=0.5)
    server, gateway = start_gateway(
        catalog_for([replica.base_url], sims, poll_interval_s=60),
        upstream_keepalive_s=0.3,
    )
    try:
        for _ in range(3):
            assert route_of(gateway).startswith("flash/non-thinking/flash-local")
            time.sleep(0.8)
    finally:
        server.stop()
        replica.stop()
    assert replica.state.stats["idle_closes"] == 0


# ---- the hosted API under overload: 200, then keep-alive comments -----------------------


def hosted_sim(**cfg: Any) -> SimServer:
    return SimServer(SimConfig.preset("hosted", replica_id="busy", **cfg).zero_latency()).start()


def stream_text(gateway: Gateway, timeout: float = 20, **kw: Any) -> tuple[str, str]:
    """(the answer's text, the route header) of a streamed request."""
    with gateway.client(timeout=timeout).chat.completions.with_streaming_response.create(
        model="deepseek-chat", messages=MSG, max_tokens=8, stream=True, **kw
    ) as raw:
        route = raw.headers["x-tiergate-route"]
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    return text, route


def test_a_queued_hosted_stream_past_the_first_token_deadline_fails_over(
    pair: list[SimServer], sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    busy = hosted_sim(queue_s=30, keepalive_every_s=0.05)
    catalog = catalog_for(
        [pair[0].base_url],
        sims,
        hosted=busy.base_url,
        hosted_spec={"first_token_timeout_s": 0.5},
        routing={"backend_preference": ["hosted", "self_hosted"]},
    )
    server, gateway = start_gateway(catalog)
    try:
        started = time.monotonic()
        text, route = stream_text(gateway)
        took = time.monotonic() - started
    finally:
        server.stop()
        busy.stop()
    assert route.startswith("flash/non-thinking/flash-local"), route
    assert "failover:hosted:upstream_timeout" in route
    assert "u0" in text and took < 5


def test_a_queued_hosted_stream_without_another_option_is_a_clear_504(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    busy = hosted_sim(queue_s=30, keepalive_every_s=0.05)
    catalog = catalog_for(
        [sims.flash[0]],
        sims,
        hosted=busy.base_url,
        hosted_spec={"first_token_timeout_s": 0.5},
        routing={"backend_preference": ["hosted"]},
    )
    server, gateway = start_gateway(catalog)
    try:
        with pytest.raises(openai.APIStatusError) as info:
            stream_text(gateway)
    finally:
        server.stop()
        busy.stop()
    assert info.value.status_code == 504
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "upstream_timeout"
    assert "no token within 0.5 s" in body["message"] and "keep-alive" in body["message"]
    assert_failed_without_failover(info.value)


def assert_failed_without_failover(err: openai.APIStatusError) -> None:
    """The route header of a request whose only option timed out names the failure and
    claims no failover (there was nothing to fail over to)."""
    route = err.response.headers["x-tiergate-route"]
    assert route.startswith("flash/non-thinking/hosted"), route
    assert route.endswith("reason=alias:deepseek-chat;failed:hosted:upstream_timeout"), route
    assert "failover" not in route, route


def ttft_sum(gateway: Gateway, backend: str) -> float:
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        if line.startswith("tiergate_time_to_first_token_seconds_sum{") and (
            f'backend="{backend}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no TTFT for {backend}")


def test_keep_alive_comments_are_not_a_first_token(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    busy = hosted_sim(queue_s=0.6, keepalive_every_s=0.05)
    catalog = catalog_for(
        [sims.flash[0]], sims, hosted=busy.base_url, routing={"backend_preference": ["hosted"]}
    )
    server, gateway = start_gateway(catalog)
    try:
        text, route = stream_text(gateway)
        ttft = ttft_sum(gateway, "hosted")
    finally:
        server.stop()
        busy.stop()
    assert route.startswith("flash/non-thinking/hosted") and text
    assert ttft >= 0.6, ttft  # the first token came after the queue, not the first comment


def test_a_queued_non_stream_answer_is_bounded_by_the_timeout(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    busy = hosted_sim(queue_s=0.3, keepalive_every_s=0.05)
    catalog = catalog_for(
        [sims.flash[0]],
        sims,
        hosted=busy.base_url,
        hosted_spec={"timeout_s": 1.0},
        routing={"backend_preference": ["hosted"]},
    )
    server, gateway = start_gateway(catalog)
    try:
        # Blank lines before the body: still one valid JSON answer.
        assert route_of(gateway).startswith("flash/non-thinking/hosted")
        busy.state.control({"queue_s": 30})
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            gateway.client(timeout=20).chat.completions.create(
                model="deepseek-chat", messages=MSG, max_tokens=4
            )
        took = time.monotonic() - started
    finally:
        server.stop()
        busy.stop()
    assert info.value.status_code == 504 and took < 5
    assert_failed_without_failover(info.value)


# ---- the same through litellm (client: litellm) ----------------------------------------


def litellm_catalog(
    url: str, sims: Sims, busy: SimServer, preference: list[str], **hosted: Any
) -> Catalog:
    _litellm()  # imported before any clock starts (its first import takes seconds)
    return catalog_for(
        [url],
        sims,
        hosted=busy.base_url,
        hosted_spec={"client": "litellm", "max_retries": 0, **hosted},
        routing={"backend_preference": preference},
    )


def answer_text(gateway: Gateway, stream: bool) -> tuple[str, str]:
    """(text, route header) of a request, streamed or not, with a 5 s client timeout."""
    if stream:
        return stream_text(gateway, timeout=5)
    raw = gateway.client(timeout=5).chat.completions.with_raw_response.create(
        model="deepseek-chat", messages=MSG, max_tokens=8
    )
    return raw.parse().choices[0].message.content or "", str(raw.headers["x-tiergate-route"])


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_a_queued_hosted_request_through_litellm_past_its_deadline_fails_over(
    pair: list[SimServer], sims: Sims, monkeypatch_module: pytest.MonkeyPatch, stream: bool
) -> None:
    busy = hosted_sim(queue_s=30, keepalive_every_s=0.05)
    catalog = litellm_catalog(
        pair[0].base_url,
        sims,
        busy,
        ["hosted", "self_hosted"],
        first_token_timeout_s=0.5,
        timeout_s=1.0,
    )
    server, gateway = start_gateway(catalog)
    try:
        started = time.monotonic()
        text, route = answer_text(gateway, stream)
        took = time.monotonic() - started
    finally:
        server.stop()
        busy.stop()
    assert route.startswith("flash/non-thinking/flash-local"), route
    assert "failover:hosted:upstream_timeout" in route
    assert "u0" in text and took < 4, took


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_a_queued_hosted_request_through_litellm_without_another_option_is_a_clear_504(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch, stream: bool
) -> None:
    busy = hosted_sim(queue_s=30, keepalive_every_s=0.05)
    catalog = litellm_catalog(
        sims.flash[0], sims, busy, ["hosted"], first_token_timeout_s=0.5, timeout_s=1.0
    )
    server, gateway = start_gateway(catalog)
    try:
        with pytest.raises(openai.APIStatusError) as info:
            answer_text(gateway, stream)
    finally:
        server.stop()
        busy.stop()
    assert info.value.status_code == 504
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "upstream_timeout"
    expect = "sent no token within 0.5 s" if stream else "did not answer within 1 s"
    assert "(litellm)" in body["message"] and expect in body["message"], body
    assert_failed_without_failover(info.value)


def test_a_briefly_queued_hosted_request_through_litellm_is_served_and_timed_at_its_token(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    busy = hosted_sim(queue_s=0.6, keepalive_every_s=0.05)
    catalog = litellm_catalog(sims.flash[0], sims, busy, ["hosted"], timeout_s=5.0)
    server, gateway = start_gateway(catalog)
    try:
        streamed, stream_route = answer_text(gateway, stream=True)
        ttft = ttft_sum(gateway, "hosted")
        whole, route = answer_text(gateway, stream=False)
    finally:
        server.stop()
        busy.stop()
    assert stream_route.startswith("flash/non-thinking/hosted") and streamed
    assert route.startswith("flash/non-thinking/hosted") and whole
    assert ttft >= 0.6, ttft  # the first token came after the queue, not the first comment


def test_a_fresh_gateway_with_litellm_stays_responsive_and_on_time_from_its_first_request(
    sims: Sims, tmp_path: Any
) -> None:
    """A new `tiergate serve` process (litellm not yet imported) with the hosted API through
    litellm, queued for 5 s, and a 3 s timeout: litellm is imported at start-up, so while
    the first request is in flight /healthz answers at once (importing it on that request
    froze the event loop for seconds), and the first request's 504 comes at its timeout."""
    import os
    import threading

    from .test_money_e2e import Gateways

    busy = hosted_sim(queue_s=5, keepalive_every_s=0.3)
    data = yaml.safe_load(DEMO.read_text())
    data["backends"]["flash-local"]["replicas"] = sims.flash
    data["backends"]["pro-local"]["replicas"] = sims.pro
    data["backends"]["hosted"].update(
        {"base_url": busy.base_url, "client": "litellm", "max_retries": 0, "timeout_s": 3.0}
    )
    data["routing"]["backend_preference"] = ["hosted"]
    config = tmp_path / "catalog.yaml"
    config.write_text(yaml.safe_dump(data))
    from gateway.db.migrate import upgrade

    database = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    upgrade(database)
    env = {
        **os.environ,
        "DEEPSEEK_API_KEY": "sim-key",
        "TIERGATE_DATABASE_URL": database,
        "TIERGATE_LOG_LEVEL": "warning",
    }
    env.pop("TIERGATE_REDIS_URL", None)
    gws = Gateways(env, config)
    result: dict[str, Any] = {}

    def first_request() -> None:
        started = time.monotonic()
        try:
            r = httpx.post(
                gws.urls[0] + "/v1/chat/completions",
                json={"model": "deepseek-chat", "messages": MSG, "max_tokens": 8},
                timeout=20,
            )
            result["status"], result["route"] = r.status_code, r.headers.get("x-tiergate-route")
        finally:
            result["took"] = time.monotonic() - started

    try:
        gws.start(1)
        ready = httpx.get(gws.urls[0] + "/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["backends"]["hosted"], ready.text
        worker = threading.Thread(target=first_request)
        worker.start()
        health: list[float] = []
        with httpx.Client(timeout=10) as client:
            while worker.is_alive():
                t0 = time.monotonic()
                assert client.get(gws.urls[0] + "/healthz").status_code == 200
                health.append(time.monotonic() - t0)
                time.sleep(0.1)
        worker.join()
    finally:
        gws.stop()
        busy.stop()
    assert result.get("status") == 504, result
    assert 2.9 <= result["took"] < 4.5, result  # timeout_s 3; importing litellm added seconds
    assert len(health) >= 10 and max(health) < 0.5, health


# ---- an error event inside a stream ---------------------------------------------------


def test_an_error_event_mid_stream_reaches_the_client_and_the_ledger(
    gw: Gateway, pair: list[SimServer]
) -> None:
    for s in pair:
        s.state.control({"fail_rate": 1.0, "fail_mode": "error_event"})
    before = len(gw.settled())
    got: list[str] = []
    try:
        with pytest.raises(openai.APIError) as info:
            for chunk in gw.client().chat.completions.create(
                model="deepseek-chat", messages=MSG, max_tokens=8, stream=True
            ):
                got.extend(c.delta.content or "" for c in chunk.choices)
    finally:
        for s in pair:
            s.state.control({"fail_rate": 0.0, "fail_mode": ""})
    assert got, "the chunks before the error reached the client"
    assert "failed mid-stream" in info.value.message
    assert "EngineGenerateError" in info.value.message
    settled = gw.settled()[before:]
    assert len(settled) == 1 and settled[0].status == 502
    assert "stream-error:upstream_stream_error" in settled[0].route_reason


def test_an_error_event_mid_stream_reaches_an_anthropic_client_as_an_error_event(
    gw: Gateway, pair: list[SimServer]
) -> None:
    for s in pair:
        s.state.control({"fail_rate": 1.0, "fail_mode": "error_event"})
    client = anthropic.Anthropic(base_url=gw.url, api_key="test", max_retries=0)
    text = ""
    try:
        with (
            pytest.raises(anthropic.APIStatusError) as info,
            client.messages.stream(
                model="deepseek-chat",
                max_tokens=16,
                messages=[{"role": "user", "content": "hello"}],
            ) as stream,
        ):
            for piece in stream.text_stream:
                text += piece
    finally:
        for s in pair:
            s.state.control({"fail_rate": 0.0, "fail_mode": ""})
    assert text, "the text before the error reached the client"
    assert "failed mid-stream" in str(info.value)


# ---- tool calls as vLLM sends them ----------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]
NAMED = {"type": "function", "function": {"name": "weather"}}


def test_a_named_tool_choice_answer_finishes_with_tool_calls(gw: Gateway) -> None:
    resp = gw.client().chat.completions.create(
        model="deepseek-chat",
        messages=MSG,
        tools=TOOLS,
        tool_choice=NAMED,  # type: ignore[arg-type]
    )
    choice = resp.choices[0]
    assert choice.message.tool_calls and choice.message.tool_calls[0].function.name == "weather"
    assert choice.finish_reason == "tool_calls"


def test_a_fragmented_tool_call_streams_whole_and_finishes_with_tool_calls(gw: Gateway) -> None:
    args, names, finish = "", [], None
    for chunk in gw.client().chat.completions.create(
        model="deepseek-chat",
        messages=MSG,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice=NAMED,  # type: ignore[arg-type]
        stream=True,
    ):
        for c in chunk.choices:
            for call in c.delta.tool_calls or ():
                if call.function and call.function.name:
                    names.append(call.function.name)
                args += (call.function.arguments or "") if call.function else ""
            finish = c.finish_reason or finish
    assert names == ["weather"] and finish == "tool_calls"
    assert set(json.loads(args)) == {"query"}


def test_an_anthropic_client_sees_tool_use_for_a_named_tool(gw: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key="test", max_retries=0)
    msg = client.messages.create(
        model="deepseek-chat",
        max_tokens=64,
        messages=[{"role": "user", "content": "weather?"}],
        tools=[{"name": "weather", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "weather"},
    )
    assert msg.stop_reason == "tool_use"
    assert [b.type for b in msg.content if b.type == "tool_use"] == ["tool_use"]


def test_an_sse_line_over_128_kib_is_relayed(gw: Gateway, pair: list[SimServer]) -> None:
    for s in pair:
        s.state.control({"tool_call_fragments": False, "tool_arg_chars": 300_000})
    try:
        args = ""
        for chunk in gw.client().chat.completions.create(
            model="deepseek-chat",
            messages=MSG,
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice=NAMED,  # type: ignore[arg-type]
            stream=True,
            # Without a limit the gateway asks for its reservation cap (32,768 tokens).
            max_tokens=300_000,
        ):
            for c in chunk.choices:
                for call in c.delta.tool_calls or ():
                    args += (call.function.arguments or "") if call.function else ""
    finally:
        for s in pair:
            s.state.control({"tool_call_fragments": True, "tool_arg_chars": 0})
    assert len(json.loads(args)["query"]) >= 300_000


# ---- polls answered slowly by a busy replica -----------------------------------------


def replica_up(gateway: Gateway, url: str) -> bool:
    text = httpx.get(gateway.url + "/metrics").text
    return f'tiergate_replica_up{{backend="flash-local",replica="{url}"}} 1.0' in text


def test_a_replica_answering_polls_slowly_stays_in_the_pool(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    slow = sim("slowpoll", poll_delay_s=1.2)
    server, gateway = start_gateway(catalog_for([slow.base_url], sims))
    try:
        time.sleep(3.0)  # a poll (/health, then /metrics) takes 2.4 s; the old limit was 1 s
        assert replica_up(gateway, slow.base_url)
        assert route_of(gateway).startswith("flash/non-thinking/flash-local")
    finally:
        server.stop()
        slow.stop()


def test_consecutive_missed_polls_mark_a_replica_down(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    slow = sim("deadpoll")
    server, gateway = start_gateway(
        catalog_for([slow.base_url], sims, poll_timeout_s=0.2, unhealthy_after_misses=3)
    )
    try:
        time.sleep(0.5)
        assert replica_up(gateway, slow.base_url)
        slow.state.control({"poll_delay_s": 2.0})
        time.sleep(0.5)  # one or two misses: still up
        assert replica_up(gateway, slow.base_url)
        deadline = time.monotonic() + 5
        while replica_up(gateway, slow.base_url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not replica_up(gateway, slow.base_url)
        assert route_of(gateway).startswith("flash/non-thinking/hosted")
    finally:
        server.stop()
        slow.stop()


# ---- a data-parallel replica: one sample per engine -----------------------------------


def test_a_data_parallel_replica_reads_as_one_replica_with_its_engines_averaged(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    dp = sim("dp", data_parallel_size=4, cache_blocks=2, block_size=16)
    server, gateway = start_gateway(catalog_for([dp.base_url], sims))
    try:
        for i in range(8):  # long prompts spread over the engines fill each small cache
            gateway.client().chat.completions.create(
                model="deepseek-chat",
                messages=[{"role": "user", "content": f"document {i} " + "words " * 200}],
                max_tokens=4,
            )
        metrics = httpx.get(dp.base_url + "/metrics").text
        time.sleep(0.5)  # a poll or two
        replica = gateway.app.state.tiergate.pipeline.engines["flash-local"].replicas()[0]
        usage = replica.kv_usage
    finally:
        server.stop()
        dp.stop()
    samples = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("vllm:kv_cache_usage_perc{")
    ]
    assert len(samples) == 4 and all(0 < s <= 1 for s in samples)  # every engine served
    assert usage == pytest.approx(sum(samples) / 4) and usage <= 1.0


DOCS = 5  # documents, each a long shared prefix; 5 is prime to the 4 engines


def dp_round_robin(client: openai.OpenAI, model: str, rounds: int = 4) -> list[int]:
    """Cached prompt tokens of each answer, sending every document once per round."""
    cached = []
    for r in range(rounds):
        for d in range(DOCS):
            doc = f"Document {d}. " + " ".join(f"clause-{d}-{w}" for w in range(200))
            resp = client.chat.completions.create(
                model=model,
                messages=[
                    {"role": "system", "content": doc},
                    {"role": "user", "content": f"question {r} about document {d}"},
                ],
                max_tokens=4,
            )
            details = resp.usage.prompt_tokens_details if resp.usage else None
            cached.append((details.cached_tokens or 0) if details else 0)
    return cached


def engines_served(server: SimServer) -> list[float]:
    """Per engine of a simulated replica, the prompt tokens served from its cache."""
    text = httpx.get(server.base_url + "/metrics").text
    return [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:prefix_cache_hits_total{")
    ]


def test_a_repeated_prefix_goes_to_the_data_parallel_engine_that_caches_it(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    """Five long documents, each sent four times in turn. Without the rank header the
    replica spreads them over its four engines by load, so a document rarely finds the
    engine that cached it; through the gateway each goes back to its engine."""
    direct, dp = sim("dp-direct", data_parallel_size=4), sim("dp", data_parallel_size=4)
    server, gateway = start_gateway(catalog_for([dp.base_url], sims))
    try:
        pool = gateway.app.state.tiergate.pipeline.engines["flash-local"]
        deadline = time.monotonic() + 5
        while len(pool.replicas()[0].engines) != 4 and time.monotonic() < deadline:
            time.sleep(0.05)  # the first poll: the gateway learns the replica's engines
        assert len(pool.replicas()[0].engines) == 4
        through = dp_round_robin(gateway.client(), "deepseek-chat")
        plain = openai.OpenAI(base_url=direct.base_url + "/v1", api_key="x", max_retries=0)
        without = dp_round_robin(plain, "deepseek-ai/DeepSeek-V4-Flash")
        per_engine = engines_served(dp)
    finally:
        server.stop()
        dp.stop()
        direct.stop()
    hits, hits_without = sum(c > 0 for c in through), sum(c > 0 for c in without)
    print(f"requests with cached tokens: {hits}/20 through the gateway, {hits_without}/20 without")
    assert hits == 20 - DOCS  # every repeat: only each document's first request misses
    assert hits_without <= 5
    assert sum(through) > 3 * sum(without)
    assert sum(e > 0 for e in per_engine) >= 3  # the documents spread over the engines


def slow_dp(replica_id: str, ttft_s: float) -> SimServer:
    """A four-engine replica whose every request takes about ``ttft_s``."""
    cfg = SimConfig.preset("flash", replica_id=replica_id, data_parallel_size=4)
    return SimServer(replace(cfg.zero_latency(), ttft_base_s=ttft_s)).start()


async def test_a_poll_taken_during_a_request_does_not_send_its_prefix_elsewhere() -> None:
    """One request at a time: a poll taken while a document's request runs reports its
    engine running one; once that request has ended, the document's next request still
    goes to that engine (it used to count as loaded until the next poll, and the load
    bound, with no slack for one request over four idle engines, sent it elsewhere)."""
    dp = slow_dp("dp-slow", 0.3)
    spec = VllmBackend.model_validate(
        {
            "kind": "vllm",
            "tier": "flash",
            "served_model": "deepseek-ai/DeepSeek-V4-Flash",
            "replicas": [dp.base_url],
            "max_model_len": 100_000,
            "prices": "x",
        }
    )
    cached: list[int] = []
    busy: list[list[int]] = []
    try:
        async with aiohttp.ClientSession() as session:
            pool = VllmEngine("flash-local", spec, session)
            replica = pool.replicas()[0]
            await pool.poll_once()
            assert len(replica.engines) == 4
            for q in range(3):
                req = EngineRequest(
                    {"model": "deepseek-chat", "messages": doc_messages(0, q), "max_tokens": 4},
                    Option("flash", NON_THINKING, "flash-local"),
                )
                task = asyncio.create_task(pool.complete(req))
                await asyncio.sleep(0.15)
                await pool.poll_once()  # the request runs: one engine reports it
                busy.append([e.running for e in replica.engines])
                cached.append((await task).usage.cache_hit_tokens)
        per_engine = engines_served(dp)
    finally:
        dp.stop()
    assert all(sorted(b) == [0, 0, 0, 1] for b in busy)
    assert cached[0] == 0 and all(c > 0 for c in cached[1:])  # both repeats: cached
    assert sum(e > 0 for e in per_engine) == 1  # all on one engine


def test_a_repeated_prefix_finds_its_engine_although_the_last_poll_saw_it_busy(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    """Through the gateway, one request at a time, each taking 0.45 s while the replica
    is polled every 0.2 s: every poll before a repeat saw the document's engine running
    its previous request, and every repeat is served from that engine's cache."""
    dp = slow_dp("dp-slow", 0.45)
    server, gateway = start_gateway(catalog_for([dp.base_url], sims, poll_interval_s=0.2))
    try:
        pool = gateway.app.state.tiergate.pipeline.engines["flash-local"]
        deadline = time.monotonic() + 5
        while len(pool.replicas()[0].engines) != 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        client, cached = gateway.client(), []
        for q in range(4):
            resp = client.chat.completions.create(
                model="deepseek-chat", messages=doc_messages(0, q), max_tokens=4
            )
            details = resp.usage.prompt_tokens_details if resp.usage else None
            cached.append((details.cached_tokens or 0) if details else 0)
        per_engine = engines_served(dp)
    finally:
        server.stop()
        dp.stop()
    print(f"cached tokens per request: {cached}")
    assert cached[0] == 0 and all(c > 0 for c in cached[1:])
    assert sum(e > 0 for e in per_engine) == 1


def _exposition(engines: int) -> str:
    return "".join(
        f'vllm:num_requests_running{{engine="{e}",model_name="m"}} 0.0\n'
        f'vllm:cache_config_info{{block_size="16",engine="{e}",num_gpu_blocks="999"}} 1.0\n'
        for e in range(engines)
    )


async def test_a_replica_whose_engines_change_or_that_goes_down_forgets_them() -> None:
    spec = VllmBackend.model_validate(
        {
            "kind": "vllm",
            "tier": "flash",
            "served_model": "m",
            "replicas": ["http://127.0.0.1:9"],
            "max_model_len": 1000,
            "prices": "x",
        }
    )
    answers: list[str | None] = []

    async def scrape(_: Any) -> str | None:
        return answers.pop(0)

    async with aiohttp.ClientSession() as session:
        pool = VllmEngine("flash-local", spec, session)
        pool._scrape = scrape  # type: ignore[method-assign]
        index, replica = pool._prefixes, pool.replicas()[0]
        assert index is not None
        url, chain = replica.url, [b"a", b"b"]

        answers.append(_exposition(1))  # one engine (labelled "0"): a plain replica
        await pool.poll_once()
        assert replica.engines == () and pool._engine(replica, {}) == (None, None)
        index.record(chain, url)

        answers.append(_exposition(4))  # restarted with four engines
        await pool.poll_once()
        assert len(replica.engines) == 4 and index.matched(chain) == {}
        index.record(chain, engine_name(url, 2))
        rank, _ = pool._engine(replica, index.matched(chain))
        assert rank == 2  # the engine holding the prefix

        answers.append(_exposition(4))  # the same engines: kept
        await pool.poll_once()
        assert index.matched(chain) == {engine_name(url, 2): 2}

        answers.append(_exposition(2))  # fewer engines: ranks name other caches now
        await pool.poll_once()
        assert len(replica.engines) == 2 and index.matched(chain) == {}
        index.record(chain, engine_name(url, 1))

        answers.append(None)  # down
        await pool.poll_once()
        assert replica.engines == () and index.matched(chain) == {}


def doc_messages(d: int, q: int = 0) -> list[dict[str, str]]:
    doc = f"Document {d}. " + " ".join(f"clause-{d}-{w}" for w in range(200))
    return [
        {"role": "system", "content": doc},
        {"role": "user", "content": f"question {q} about document {d}"},
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_a_replica_replaced_by_one_with_fewer_engines_answers_every_request(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch, stream: bool
) -> None:
    """A four-engine replica is replaced behind the same address by a two-engine one
    between two polls, and a burst of requests follows. Those the gateway sends with rank
    2 or 3 are refused as out of range; each is sent again at once without the header,
    and every client request succeeds, billed once, with no breaker opened."""
    four = sim("dp4", data_parallel_size=4)
    catalog = catalog_for(
        [four.base_url],
        sims,
        poll_interval_s=600,  # one poll, at start: none sees the replacement
        routing={"backend_preference": ["self_hosted"]},  # nowhere else to go
    )
    server, gateway = start_gateway(catalog)
    two: SimServer | None = None
    try:
        pool = gateway.app.state.tiergate.pipeline.engines["flash-local"]
        replica = pool.replicas()[0]
        deadline = time.monotonic() + 5
        while len(replica.engines) != 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(replica.engines) == 4
        client = gateway.client()
        for d in range(8):  # eight documents spread over the four engines, two each
            client.chat.completions.create(
                model="deepseek-chat", messages=doc_messages(d), max_tokens=4
            )
        served = [
            float(line.rsplit(" ", 1)[1])
            for line in httpx.get(four.base_url + "/metrics").text.splitlines()
            if line.startswith("vllm:prompt_tokens_total{")
        ]
        assert len(served) == 4 and all(served)  # ranks 2 and 3 hold documents too
        four.stop()
        two = SimServer(
            SimConfig.preset("flash", replica_id="dp2", data_parallel_size=2).zero_latency(),
            port=four.port,
        ).start()
        before = len(gateway.settled())

        def ask(i: int) -> str:
            kw: dict[str, Any] = {"model": "deepseek-chat", "max_tokens": 4}
            if stream:
                chunks = list(
                    client.chat.completions.create(
                        messages=doc_messages(i % 10, 1), stream=True, **kw
                    )
                )
                return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            resp = client.chat.completions.create(messages=doc_messages(i % 10, 1), **kw)
            return resp.choices[0].message.content or ""

        with ThreadPoolExecutor(max_workers=12) as workers:
            answers = list(workers.map(ask, range(40)))
        metrics = httpx.get(gateway.url + "/metrics").text
        settled = gateway.settled()[before:]
        stats = two.state.stats
        opened = breaker_open(gateway, "flash-local")
    finally:
        server.stop()
        four.stop()
        if two is not None:
            two.stop()
    assert all(answers) and len(answers) == 40  # every client request answered
    resends = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('tiergate_stale_rank_resends_total{backend="flash-local"}')
    ]
    print(f"stale ranks sent again: {resends}")
    assert resends and resends[0] >= 1
    # Each refusal was sent again once: the replica saw the 40 and the refused ones.
    assert stats["errors"] == resends[0] and stats["requests"] == 40 + resends[0]
    assert stats["completed"] == 40
    # Billed once each, as served by the replica; no breaker opened.
    assert len(settled) == 40 and len({s.request_id for s in settled}) == 40
    assert all(s.backend == "flash-local" and s.status == 200 for s in settled)
    assert opened == []
    assert replica.engines == ()  # forgotten until the next poll counts them


# ---- thinking switches and efforts ----------------------------------------------------


@pytest.fixture(scope="module")
def hosted_gw(sims: Sims, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Gateway]:
    catalog = catalog_for(
        [sims.flash[0]], sims, routing={"backend_preference": ["hosted", "self_hosted"]}
    )
    server, gateway = start_gateway(catalog)
    yield gateway
    server.stop()


@pytest.mark.parametrize(
    ("effort", "label", "reasoning"),
    [("minimal", "think-low", 8), ("low", "think-low", 8), ("xhigh", "think-high", 16)]
    + [("ultra", "think-max", 32)],
)
def test_efforts_map_as_the_hosted_api_maps_them(
    hosted_gw: Gateway, effort: str, label: str, reasoning: int
) -> None:
    raw = hosted_gw.client().chat.completions.with_raw_response.create(
        model="deepseek-v4-flash",
        messages=MSG,
        reasoning_effort=effort,  # type: ignore[arg-type]
    )
    assert raw.headers["x-tiergate-route"].startswith(f"flash/{label}/hosted")
    usage = raw.parse().usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == reasoning


def test_a_clients_enable_thinking_does_not_make_a_non_thinking_request_think(
    gw: Gateway,
) -> None:
    raw = gw.client().chat.completions.with_raw_response.create(
        model="deepseek-chat",
        messages=MSG,
        max_tokens=64,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}},
    )
    assert raw.headers["x-tiergate-route"].startswith("flash/non-thinking/flash-local")
    message = raw.parse().choices[0].message
    assert not (message.model_extra or {}).get("reasoning_content")


def test_a_gateway_without_the_hosted_key_answers_5xx_not_the_clients_401(
    sims: Sims, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's missing credential is not the client's bad key: a 401
    invalid_api_key would send every team to check its own key."""
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    catalog = catalog_for([sims.flash[0]], sims, routing={"backend_preference": ["hosted"]})
    server, gateway = start_gateway(catalog)
    try:
        r = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "deepseek-v4-pro", "messages": MSG, "max_tokens": 8},
            timeout=30,
        )
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "upstream_not_configured" and error["type"] == "api_error"
        assert "DEEPSEEK_API_KEY" in error["message"]
        a = httpx.post(
            gateway.url + "/v1/messages",
            json={"model": "deepseek-v4-pro", "messages": MSG, "max_tokens": 8},
            timeout=30,
        )
        assert a.status_code == 503 and a.json()["error"]["type"] == "overloaded_error", a.text
        assert "DEEPSEEK_API_KEY" in a.json()["error"]["message"]
    finally:
        server.stop()


@pytest.mark.parametrize("flag", ["thinking", "enable_thinking"])
def test_a_clients_template_flag_false_keeps_a_thinking_default_model_from_thinking(
    gw: Gateway, flag: str
) -> None:
    raw = gw.client().chat.completions.with_raw_response.create(
        model="deepseek-v4-flash",
        messages=MSG,
        max_tokens=64,
        extra_body={"chat_template_kwargs": {flag: False}},
    )
    assert raw.headers["x-tiergate-route"].startswith("flash/non-thinking/"), raw.headers
    completion = raw.parse()
    assert not (completion.choices[0].message.model_extra or {}).get("reasoning_content")
    details = completion.usage and completion.usage.completion_tokens_details
    assert not (details and details.reasoning_tokens)


def test_a_slow_replicas_polls_do_not_hold_up_the_others(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    slow, quick = sim("slowpoll2", poll_delay_s=2.0), sim("quickpoll")
    server, gateway = start_gateway(catalog_for([slow.base_url, quick.base_url], sims))
    try:
        time.sleep(0.5)
        assert replica_up(gateway, quick.base_url)
        quick.state.control({"healthy": False})
        time.sleep(0.8)  # a few 0.2 s rounds, while the slow replica's first poll runs on
        assert not replica_up(gateway, quick.base_url)
        assert replica_up(gateway, slow.base_url)
    finally:
        server.stop()
        slow.stop()
        quick.stop()
