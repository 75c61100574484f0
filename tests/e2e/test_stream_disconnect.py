"""A client that leaves mid-stream: the upstream is stopped and what was streamed is billed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from engines.sim.config import SimConfig
from engines.sim.runner import SimServer
from policies.catalog import parse_catalog

from .conftest import DEMO, Gateway, Sims, start_gateway


@pytest.fixture(scope="module")
def slow() -> Iterator[SimServer]:
    # 400 output tokens at 20 ms each: an 8-second stream
    cfg = SimConfig.preset("flash", model="deepseek-ai/DeepSeek-V4-Flash", replica_id="slow")
    server = SimServer(cfg.zero_latency()).start()
    httpx.post(server.base_url + "/sim/control", json={"itl_s": 0.02}).raise_for_status()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(slow: SimServer, sims: Sims) -> Iterator[Gateway]:
    data = yaml.safe_load(DEMO.read_text())
    data["backends"]["flash-local"]["replicas"] = [slow.base_url]
    data["backends"]["pro-local"]["replicas"] = sims.pro
    data["backends"]["hosted"]["base_url"] = sims.hosted
    server, gateway = start_gateway(parse_catalog(data))
    yield gateway
    server.stop()


def running(sim: SimServer) -> int:
    return int(httpx.get(sim.base_url + "/sim/stats").json()["running"])


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
@pytest.mark.parametrize("model", ["deepseek-chat", "deepseek-reasoner"])
def test_leaving_mid_stream_stops_the_upstream_and_bills_what_was_sent(
    gw: Gateway, slow: SimServer, path: str, model: str
) -> None:
    before = len(gw.settled())
    body = {
        "model": model,  # Flash: the slow replica; the reasoner streams its reasoning first
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "max_tokens": 400,
        "stream": True,
    }
    events = 0
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", gw.url + path, json=body) as r,
    ):
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: "):
                events += 1
                if events == 5:
                    break  # leave: the connection closes here
    assert running(slow) == 1 or len(gw.accounting.settled) > before
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (running(slow) or len(gw.accounting.settled) == before):
        time.sleep(0.05)
    assert running(slow) == 0, "the upstream request was not stopped"
    settled = [s for s in gw.settled()[before:] if s.request_id == request_id]
    assert len(settled) == 1
    s = settled[0]
    assert s.status == 499 and "usage=estimated" in s.route_reason
    assert 0 < s.output_tokens < 400 and s.cost_nanos > 0
    # the reasoning streamed so far is counted as reasoning, within the output
    assert (0 < s.reasoning_tokens <= s.output_tokens) == (model == "deepseek-reasoner")


def test_with_the_money_path_the_row_is_in_the_ledger_and_nothing_stays_reserved(
    slow: SimServer, sims: Sims, pg_url: str, redis_url: str, tmp_path
) -> None:
    import redis

    from .test_money_e2e import (
        Gateways,
        admin,
        drop_keys,
        money_env,
        new_key,
        sql,
        wait_rows,
    )

    data = yaml.safe_load(DEMO.read_text())
    data["backends"]["flash-local"]["replicas"] = [slow.base_url]
    data["backends"]["pro-local"]["replicas"] = sims.pro
    data["backends"]["hosted"]["base_url"] = sims.hosted
    config = tmp_path / "catalog.yaml"
    config.write_text(yaml.safe_dump(data))
    prefix = f"tgdc:{time.time_ns()}:"
    gws = Gateways(money_env(pg_url, redis_url, prefix), config)
    gws.start(1)
    try:
        name = f"leaver-{time.time_ns()}"
        team_id, _, key = new_key(gws, name)
        budget = {"scope": "team", "scope_id": name, "period": "day", "limit_usd": 5}
        r = admin(gws, "PUT", "/budgets", budget)
        assert r.status_code == 200, r.text
        body = {
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": "tell me a long story"}],
            "max_tokens": 400,
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {key}"}
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "POST", gws.urls[0] + "/v1/chat/completions", json=body, headers=headers
            ) as resp,
        ):
            assert resp.status_code == 200, resp.read()
            request_id = resp.headers["x-request-id"]
            seen = 0
            for line in resp.iter_lines():
                seen += line.startswith("data: ")
                if seen == 5:
                    break
        assert wait_rows(pg_url, team_id, 1) == 1
        ((status, output, reason),) = sql(
            pg_url,
            "select status, output_tokens, route_reason from ledger where request_id = %s",
            request_id,
        )
        assert status == 499 and 0 < output < 400 and "usage=estimated" in reason
        assert running(slow) == 0
        rc = redis.Redis.from_url(redis_url)
        counters = [k for k in rc.scan_iter(prefix + "b:*") if not k.endswith((b":z", b":h"))]
        assert counters, "the team's day budget has a counter"
        for k in counters:
            assert int(rc.hget(k, "reserved") or 0) == 0, "a reservation was left behind"
            assert int(rc.hget(k, "spent") or 0) > 0
        rc.close()
    finally:
        gws.stop()
        drop_keys(redis_url, prefix)


@pytest.mark.parametrize("gone_at_once", [False, True], ids=["while-heading", "before-open"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_leaving_before_the_first_event_is_sent_still_settles_and_frees_the_replica(
    gw: Gateway, slow: SimServer, path: str, gone_at_once: bool
) -> None:
    """The client leaves as the response starts, and the server's ``send`` yields there:
    the relay never runs, so the response's close must settle and release. Or it left
    before the upstream's stream opened: the call is cancelled and nothing is billed."""
    import asyncio

    import orjson

    pipeline = gw.app.state.tiergate.pipeline
    engine = pipeline.engines["flash-local"]
    loop = engine._tasks[0].get_loop()  # the gateway's own event loop (its server thread)
    body = orjson.dumps(
        {
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": "tell me a long story"}],
            "max_tokens": 400,
            "stream": True,
        }
    )
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    sent: list[dict[str, object]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    heading = asyncio.Event()  # the response has started

    async def receive() -> dict[str, object]:
        if messages:
            return messages.pop(0)
        if not gone_at_once:
            await heading.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)
        if message["type"] == "http.response.start":
            heading.set()
            await asyncio.sleep(0.05)  # the disconnect is seen while the headers go out

    before = len(gw.settled())
    asyncio.run_coroutine_threadsafe(gw.app(scope, receive, send), loop).result(timeout=10)
    if gone_at_once:
        # Gone before the stream opened: the upstream call is cancelled, nothing billed.
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and running(slow):
            time.sleep(0.05)
        assert running(slow) == 0, "the upstream request was not stopped"
        assert len(gw.settled()) == before, "nothing billed"
        assert all(r.in_flight == 0 for r in engine.replicas()), "a replica slot was not freed"
        return
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert not any(m.get("body") for m in sent[1:]), "no event reached the gone client"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (running(slow) or len(gw.settled()) == before):
        time.sleep(0.05)
    new = gw.settled()[before:]
    assert len(new) == 1, "settled exactly once"
    assert new[0].status == 499 and "usage=estimated" in new[0].route_reason
    assert running(slow) == 0, "the upstream request was not stopped"
    assert all(r.in_flight == 0 for r in engine.replicas()), "a replica slot was not freed"
