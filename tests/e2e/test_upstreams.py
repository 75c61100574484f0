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
import yaml

from engines.sim.config import SimConfig
from engines.sim.runner import SimServer
from policies.catalog import Catalog, parse_catalog

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


def catalog_for(urls: list[str], sims: Sims, **backend: Any) -> Catalog:
    """The demo catalog with these Flash replicas (polled every 0.2 s unless told)."""
    data = yaml.safe_load(DEMO.read_text())
    data["backends"]["flash-local"]["replicas"] = urls
    data["backends"]["flash-local"].update({"poll_interval_s": 0.2, **backend})
    data["backends"]["pro-local"]["replicas"] = sims.pro
    data["backends"]["hosted"]["base_url"] = sims.hosted
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
