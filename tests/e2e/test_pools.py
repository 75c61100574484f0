"""Replica pools over real HTTP: affinity, bounded load, ejection and re-admission, spill-over."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import openai
import pytest
import yaml

from engines.sim.config import SimConfig
from engines.sim.runner import SimServer
from engines.vllm import VllmEngine
from policies.catalog import VllmBackend, parse_catalog

from .conftest import DEMO, Gateway, Sims, start_gateway

SYSTEM = "You are the support bot of tenant {t}. Policies follow. " + "Policy text. " * 400


@pytest.fixture(scope="module")
def pool4() -> Iterator[list[SimServer]]:
    sims = [
        SimServer(SimConfig.preset("flash", replica_id=f"p{i}", max_num_seqs=1).scaled(0.0))
        for i in range(4)
    ]
    for s in sims:
        s.start()
    yield sims
    for s in sims:
        s.stop()


def catalog_for(urls: list[str], hosted: str, *, spill: bool = True, **backend: Any) -> Any:
    data = yaml.safe_load(DEMO.read_text())
    data["backends"]["flash-local"]["replicas"] = urls
    data["backends"]["flash-local"].update(poll_interval_s=0.2, **backend)
    data["backends"]["pro-local"]["replicas"] = urls[:1]
    data["backends"]["hosted"]["base_url"] = hosted
    data["routing"]["spill_to_hosted"] = spill
    return parse_catalog(data)


@pytest.fixture(scope="module")
def pooled(
    pool4: list[SimServer], sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> Iterator[Gateway]:
    server, gw = start_gateway(catalog_for([s.base_url for s in pool4], sims.hosted))
    yield gw
    server.stop()


def ask(gw: Gateway, system: str, user: str) -> str:
    gw.client().chat.completions.create(
        model="deepseek-chat",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        max_tokens=4,
    )
    replica = gw.settled()[-1].replica  # settled before the answer was sent
    assert replica is not None
    return replica


def test_a_session_stays_on_one_replica_and_tenants_spread(pooled: Gateway) -> None:
    for t in range(8):
        seen = {ask(pooled, SYSTEM.format(t=t), f"question {q}") for q in range(4)}
        assert len(seen) == 1, f"tenant {t} hopped replicas: {seen}"
    homes = {ask(pooled, SYSTEM.format(t=t), "again") for t in range(8)}
    assert len(homes) >= 2


async def _burst(gw: Gateway, system: str, n: int) -> list[str]:
    body = {
        "model": "deepseek-chat",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
        "max_tokens": 4,
    }
    async with httpx.AsyncClient(timeout=30) as c:
        await asyncio.gather(
            *(c.post(gw.url + "/v1/chat/completions", json=body) for _ in range(n))
        )
    return [s.replica for s in gw.settled()[-n:] if s.replica]


def test_a_hot_prefix_spreads_under_bounded_load(pooled: Gateway, pool4: list[SimServer]) -> None:
    for s in pool4:  # slow replicas: requests overlap, so load bounds bite
        httpx.post(s.base_url + "/sim/control", json={"itl_s": 0.01, "ttft_base_s": 0.02})
    try:
        used = Counter(asyncio.run(_burst(pooled, SYSTEM.format(t="hot"), 24)))
    finally:
        for s in pool4:
            httpx.post(s.base_url + "/sim/control", json={"itl_s": 0.0, "ttft_base_s": 0.0})
    assert len(used) >= 2, used
    assert max(used.values()) < 24


def test_failing_replica_is_ejected_then_readmitted(
    pooled: Gateway, pool4: list[SimServer]
) -> None:
    victim = pool4[0].base_url
    httpx.post(victim + "/sim/control", json={"healthy": False})
    time.sleep(0.6)
    ready = httpx.get(pooled.url + "/metrics").text
    assert f'tiergate_replica_up{{backend="flash-local",replica="{victim}"}} 0.0' in ready
    picks = {ask(pooled, SYSTEM.format(t=t), "q") for t in range(12)}
    assert victim not in picks
    httpx.post(victim + "/sim/control", json={"healthy": True})
    time.sleep(0.6)
    # Prefixes served meanwhile stay where they are cached; new ones reach the victim again.
    again = {ask(pooled, SYSTEM.format(t=t), "q") for t in range(12)}
    assert victim not in again
    picks = {ask(pooled, SYSTEM.format(t=t), "q") for t in range(100, 124)}
    assert victim in picks


def test_killed_replica_before_first_byte_is_retried(
    pooled: Gateway, pool4: list[SimServer]
) -> None:
    for s in pool4[:2]:
        httpx.post(s.base_url + "/sim/control", json={"fail_rate": 1.0, "fail_mode": "disconnect"})
    try:
        for t in range(6):
            assert ask(pooled, SYSTEM.format(t=t), "q") in {s.base_url for s in pool4[2:]}
    finally:
        for s in pool4[:2]:
            httpx.post(s.base_url + "/sim/control", json={"fail_rate": 0.0, "fail_mode": ""})


def test_saturated_pool_spills_to_hosted_with_reason(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    slow = SimServer(
        SimConfig.preset("flash", replica_id="slow", max_num_seqs=1, itl_s=0.05, ttft_base_s=0.1)
    ).start()
    server, gw = start_gateway(catalog_for([slow.base_url], sims.hosted, max_queue_depth=1))
    try:

        async def scenario() -> str:
            body = {
                "model": "deepseek-chat",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 30,
            }
            async with httpx.AsyncClient(timeout=30) as c:
                busy = [
                    asyncio.create_task(c.post(gw.url + "/v1/chat/completions", json=body))
                    for _ in range(3)
                ]
                await asyncio.sleep(0.6)  # the poller sees a queue on the only replica
                r = await c.post(gw.url + "/v1/chat/completions", json=body)
                await asyncio.gather(*busy)
                return r.headers["x-tiergate-route"]

        route = asyncio.run(scenario())
    finally:
        server.stop()
        slow.stop()
    assert route.startswith("flash/non-thinking/hosted") and "spill:flash-local:saturated" in route


async def test_dns_discovery_follows_the_records(pool4: list[SimServer]) -> None:
    records = {"vllm-flash": ["127.0.0.1"]}

    async def resolver(host: str, port: int) -> list[str]:
        return records[host]

    port = int(pool4[0].base_url.rsplit(":", 1)[1])
    spec = VllmBackend.model_validate(
        {
            "kind": "vllm",
            "tier": "flash",
            "served_model": "deepseek-ai/DeepSeek-V4-Flash",
            "discovery": {"dns": "vllm-flash", "port": port, "interval_s": 0.1},
            "max_model_len": 1000,
            "prices": "x",
        }
    )
    async with aiohttp.ClientSession() as session:
        engine = VllmEngine("flash-local", spec, session, resolver=resolver)
        await engine.start()
        try:
            assert [r.url for r in engine.replicas()] == [f"http://127.0.0.1:{port}"]
            records["vllm-flash"] = ["127.0.0.1", "127.0.0.2"]
            await asyncio.sleep(0.3)
            assert [r.url for r in engine.replicas()] == [
                f"http://127.0.0.1:{port}",
                f"http://127.0.0.2:{port}",
            ]
            records["vllm-flash"] = ["127.0.0.2"]
            await asyncio.sleep(0.3)
            assert [r.url for r in engine.replicas()] == [f"http://127.0.0.2:{port}"]
        finally:
            await engine.close()


async def test_prefix_index_is_bounded_by_each_replicas_reported_cache() -> None:
    small = SimServer(SimConfig.preset("flash", replica_id="s", cache_blocks=160).scaled(0.0))
    big = SimServer(SimConfig.preset("flash", replica_id="b", cache_blocks=1000).scaled(0.0))
    with small, big:
        spec = VllmBackend.model_validate(
            {
                "kind": "vllm",
                "tier": "flash",
                "served_model": "deepseek-ai/DeepSeek-V4-Flash",
                "replicas": [small.base_url, big.base_url, "http://127.0.0.1:9"],
                "max_model_len": 1000,
                "prices": "x",
                "prefix_index_entries": 500,
            }
        )
        async with aiohttp.ClientSession() as session:
            engine = VllmEngine("flash-local", spec, session)
            index = engine._prefixes
            assert index is not None
            index.record([b"a", b"b"], "http://127.0.0.1:9")
            await engine.poll_once()
    # 160 x 256 tokens at 4 characters each are 160 1-KiB blocks; 1000 are over the
    # ceiling; the unreachable replica is unknown (the ceiling) and its entries are gone
    assert [index.capacity_of(u) for u in spec.replicas] == [160, 500, 500]
    assert index.matched([b"a", b"b"]) == {}


QUEUE_SUM = (
    'vllm:request_queue_time_seconds_sum{engine="0",model_name="deepseek-ai/DeepSeek-V4-Flash"}'
)


def _metric(text: str, name: str) -> float:
    """The value of one exposition line, named with its labels."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exposed")


async def _together(gw: Gateway, n: int, *, stagger_s: float = 0.0) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as c:

        async def one(i: int) -> httpx.Response:
            await asyncio.sleep(i * stagger_s)
            body = {
                "model": "deepseek-chat",
                "messages": [{"role": "user", "content": f"request {i}: " + "words " * 300}],
                "max_tokens": 8,
            }
            return await c.post(gw.url + "/v1/chat/completions", json=body)

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_gateway_queue_holds_a_burst_until_replica_slots_free(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    # Replicas that run one request at a time: with the gateway's cap at one, a burst waits
    # in the gateway and no request ever queues inside a replica.
    pool = [
        SimServer(
            SimConfig.preset("flash", replica_id=f"q{i}", max_num_seqs=1, ttft_base_s=0.03)
        ).start()
        for i in range(2)
    ]
    urls = [s.base_url for s in pool]
    server, gw = start_gateway(
        catalog_for(urls, sims.hosted, max_in_flight_per_replica=1, queue_timeout_s=20)
    )
    try:
        time.sleep(0.3)  # first health poll
        replies = asyncio.run(_together(gw, 8))
        assert [r.status_code for r in replies] == [200] * 8
        assert all(
            r.headers["x-tiergate-route"].startswith("flash/non-thinking/flash-local")
            for r in replies
        )
        for u in urls:
            queued = _metric(httpx.get(u + "/metrics").text, QUEUE_SUM)
            assert queued < 0.01, f"{u} queued requests itself ({queued:.3f} s)"
        text = httpx.get(gw.url + "/metrics").text
        wait = 'tiergate_pool_queue_wait_seconds_{}{{backend="flash-local"}}'
        assert _metric(text, wait.format("count")) == 8
        assert _metric(text, wait.format("sum")) > 0.1  # six of them waited for a slot
        assert _metric(text, 'tiergate_pool_queued{backend="flash-local"}') == 0
        for u in urls:
            labels = f'backend="flash-local",replica="{u}",state="closed"'
            assert _metric(text, f"tiergate_replica_breaker{{{labels}}}") == 1
    finally:
        server.stop()
        for s in pool:
            s.stop()


@contextlib.contextmanager
def one_slow_replica(
    sims: Sims, ttft_s: float, *, spill: bool = True, **backend: Any
) -> Iterator[Gateway]:
    """A gateway over one replica that runs one request at a time, ``ttft_s`` each."""
    slow = SimServer(
        SimConfig.preset("flash", replica_id="slow", max_num_seqs=1, ttft_base_s=ttft_s)
    ).start()
    server, gw = start_gateway(catalog_for([slow.base_url], sims.hosted, spill=spill, **backend))
    try:
        time.sleep(0.3)  # the first health poll has seen the replica
        yield gw
    finally:
        server.stop()
        slow.stop()


def test_gateway_queue_timeout_and_full_queue_spill_to_hosted_with_reasons(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    pool = one_slow_replica(
        sims, 1.5, max_in_flight_per_replica=1, queue_timeout_s=0.5, max_queued=1
    )
    with pool as gw:
        # 0: takes the only slot; 1: waits, times out after 0.5 s and fails over to the
        # hosted API; 2: arrives while 1 waits, finds the queue full (saturated) and is
        # planned past the pool.
        first, timed_out, refused = asyncio.run(_together(gw, 3, stagger_s=0.2))
        text = httpx.get(gw.url + "/metrics").text
    assert [r.status_code for r in (first, timed_out, refused)] == [200, 200, 200]
    assert first.headers["x-tiergate-route"].startswith("flash/non-thinking/flash-local")
    route = timed_out.headers["x-tiergate-route"]
    assert route.startswith("flash/non-thinking/hosted"), route
    assert "failover:flash-local:pool_queue_timeout" in route
    route = refused.headers["x-tiergate-route"]
    assert route.startswith("flash/non-thinking/hosted") and "spill:flash-local:saturated" in route
    spilled = 'tiergate_spillovers_total{backend="flash-local",reason="saturated"}'
    assert _metric(text, spilled) == 1


def test_gateway_queue_timeout_without_a_fallback_is_a_clear_503(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    pool = one_slow_replica(
        sims, 1.0, spill=False, max_in_flight_per_replica=1, queue_timeout_s=0.2
    )
    with pool as gw:

        async def scenario() -> BaseException | None:
            client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="test", max_retries=0)
            ask = client.chat.completions.create(
                model="deepseek-chat", messages=[{"role": "user", "content": "x"}], max_tokens=4
            )
            first = asyncio.create_task(ask)
            await asyncio.sleep(0.2)
            try:
                await client.chat.completions.create(
                    model="deepseek-chat",
                    messages=[{"role": "user", "content": "y"}],
                    max_tokens=4,
                )
            except openai.APIStatusError as exc:
                await first
                return exc
            await first
            return None

        err = asyncio.run(scenario())
    assert isinstance(err, openai.APIStatusError) and err.status_code == 503
    assert err.response.headers.get("retry-after") == "1"
    body = err.response.json()["error"]
    assert body["code"] == "pool_queue_timeout"
    assert "no replica slot freed within 0.2 s" in body["message"]


async def test_a_request_cancelled_while_waiting_for_a_replica_frees_its_slot() -> None:
    from engines.base import EngineRequest
    from policies.options import NON_THINKING, Option

    slow = SimServer(SimConfig.preset("flash", replica_id="stuck", ttft_base_s=2.0)).start()
    try:
        spec = VllmBackend.model_validate(
            {
                "kind": "vllm",
                "tier": "flash",
                "served_model": "deepseek-ai/DeepSeek-V4-Flash",
                "replicas": [slow.base_url],
                "max_model_len": 1000,
                "prices": "x",
                "max_in_flight_per_replica": 1,
            }
        )
        async with aiohttp.ClientSession() as session:
            engine = VllmEngine("flash-local", spec, session)
            req = EngineRequest(
                {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]},
                Option("flash", NON_THINKING, "flash-local"),
            )
            waiting = asyncio.create_task(engine.complete(req))
            await asyncio.sleep(0.3)
            assert engine.replicas()[0].in_flight == 1
            waiting.cancel()  # e.g. the gateway shutting down
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert engine.replicas()[0].in_flight == 0
            assert engine._free_slots() == 1  # the next request is not kept waiting
    finally:
        slow.stop()
