"""Upstreams as the real servers behave, through the gateway with the official SDKs.

Each simulator here is switched to one of the real servers' harder behaviours (see
docs/upstreams.md): a request error answered 500/501, idle connections closed under the
client, a queued hosted stream of keep-alive comments, an error event mid-stream, tool
calls finishing with ``stop`` and streamed in fragments, data-parallel engines, slow polls.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from engines.sim.config import SimConfig
from engines.sim.runner import SimServer

from .conftest import Gateway, Sims, start_gateway
from .test_pools import catalog_for

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
    server, gateway = start_gateway(catalog_for([s.base_url for s in pair], sims.hosted))
    yield gateway
    server.stop()


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


def test_request_error_501_is_tried_once_elsewhere_and_opens_no_breaker(
    gw: Gateway, pair: list[SimServer], sims: Sims
) -> None:
    before = requests_seen(*pair)
    hosted_before = httpx.get(sims.hosted + "/sim/stats").json()["requests"]
    for _ in range(3):
        with pytest.raises(openai.BadRequestError) as info:
            gw.client().chat.completions.create(
                model="deepseek-chat",
                messages=[{"role": "function", "name": "f", "content": "x"}, *MSG],
                max_tokens=4,
            )
        assert info.value.status_code == 400
        body = info.value.body
        assert isinstance(body, dict) and body["code"] == "upstream_request_failed"
        assert "501" in body["message"] and "Unknown role" in body["message"]
    # Each bad request reached two replicas, never the hosted API, and opened no breaker.
    assert requests_seen(*pair) - before == 6
    assert httpx.get(sims.hosted + "/sim/stats").json()["requests"] == hosted_before
    assert breaker_open(gw, "flash-local") == []
    assert route_of(gw).startswith("flash/non-thinking/flash-local")


def test_assertion_500_on_a_single_replica_fails_over_once_and_keeps_the_breaker_closed(
    pair: list[SimServer], sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    server, gateway = start_gateway(catalog_for([pair[0].base_url], sims.hosted))
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
    server, gateway = start_gateway(catalog_for([s.base_url for s in pair], sims.hosted))
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
