"""Redis and PostgreSQL outages, through real gateway processes.

Each gateway reaches Redis or PostgreSQL through a ``TcpProxy`` that the test cuts and
restores; the real services keep running for everything else. Clients are the official
openai and anthropic SDKs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import anthropic
import httpx
import openai
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from policies.catalog import load_catalog
from policies.pricing import PriceBook
from policies.usage import usage_from_openai

from .conftest import Sims
from .tcpproxy import TcpProxy
from .test_money_e2e import Gateways, admin, money_env, new_key, sims_catalog, sql, wait_ready

MESSAGES: Any = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def catalog_file(sims: Sims, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sims_catalog(sims, tmp_path_factory.mktemp("outages"))


def _proxy_for(url: str, default_port: int) -> TcpProxy:
    parsed = urlparse(url)
    return TcpProxy(parsed.hostname or "127.0.0.1", parsed.port or default_port).start()


def _via(url: str, proxy: TcpProxy) -> str:
    parsed = urlparse(url)
    netloc = parsed.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return parsed._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host).geturl()


@contextmanager
def gateway(
    config: Path, pg_url: str, redis_url: str, *, cut: str, mode: str = "closed"
) -> Iterator[tuple[Gateways, TcpProxy]]:
    """One gateway process that reaches Redis (cut="redis") or PostgreSQL through a proxy."""
    proxy = _proxy_for(redis_url, 6379) if cut == "redis" else _proxy_for(pg_url, 5432)
    prefix = f"tgo:{uuid.uuid4().hex[:8]}:"
    env = money_env(
        _via(pg_url, proxy) if cut == "postgres" else pg_url,
        _via(redis_url, proxy) if cut == "redis" else redis_url,
        prefix,
        TIERGATE_REDIS_FAILURE_MODE=mode,
        TIERGATE_SPOOL_DIR=str(config.parent / ("spool-" + prefix.split(":")[1])),
    )
    gw = Gateways(env, config)
    gw.prefix = prefix  # type: ignore[attr-defined]
    try:
        gw.start(1)
        yield gw, proxy
    finally:
        gw.stop()
        proxy.stop()
        r = redis.Redis.from_url(redis_url)
        keys = list(r.scan_iter(prefix + "*"))
        if keys:
            r.delete(*keys)
        r.close()


def team_with_budget(gw: Gateways, name: str, **key: Any) -> tuple[str, str, str]:
    team_id, key_id, raw = new_key(gw, name, **key)
    r = admin(
        gw, "PUT", "/budgets", {"scope": "team", "scope_id": name, "period": "day", "limit_usd": 5}
    )
    assert r.status_code == 200, r.text
    return team_id, r.json()["id"], raw


def openai_client(gw: Gateways, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.urls[0] + "/v1", api_key=key, max_retries=0, timeout=30)


class Served:
    """What the client saw of each successful request: id, route and usage."""

    def __init__(self) -> None:
        self.by_id: dict[str, tuple[str, dict[str, Any]]] = {}

    def call(self, client: openai.OpenAI) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="deepseek-chat", messages=MESSAGES, max_tokens=16
        )
        body = raw.http_response.json()
        rid = raw.headers["x-request-id"]
        assert body["choices"][0]["message"]["content"]
        self.by_id[rid] = (raw.headers["x-tiergate-route"], body["usage"])
        return rid


def metric(gw: Gateways, name: str, **labels: str) -> float:
    text = httpx.get(gw.urls[0] + "/metrics", timeout=5).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"{name}{labels} not on /metrics")


def wait_for(check: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def ledger_rows(pg_url: str, team_id: str) -> list[tuple[str, int, datetime]]:
    return [
        (r[0], int(r[1]), r[2])
        for r in sql(
            pg_url, "select request_id, cost_nanos, ts from ledger where team_id = %s", team_id
        )
    ]


def assert_ledger_matches(pg_url: str, team_id: str, served: Served, config: Path) -> int:
    """Exactly one row per successful request, each costing what its response's usage says."""
    wait_for(lambda: len(ledger_rows(pg_url, team_id)) >= len(served.by_id), 30, "the ledger rows")
    rows = ledger_rows(pg_url, team_id)
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == len(served.by_id), (len(ids), len(served.by_id))
    assert set(ids) == set(served.by_id)
    prices = PriceBook(load_catalog(config))
    total = 0
    for rid, cost, ts in rows:
        route, usage = served.by_id[rid]
        tier, _mode, backend = route.split(";", 1)[0].strip().split("/")
        parsed = usage_from_openai(usage)
        assert parsed is not None and parsed.output_tokens > 0
        assert cost == prices.rate(backend, tier, ts).cost_nanos(parsed) > 0, rid
        total += cost
    assert sum(r[1] for r in rows) == total
    return total


# ---- Redis down, fail closed ---------------------------------------------------------


def test_redis_down_fail_closed_answers_503_in_each_protocol_then_recovers(
    catalog_file: Path, pg_url: str, redis_url: str
) -> None:
    with gateway(catalog_file, pg_url, redis_url, cut="redis", mode="closed") as (gw, proxy):
        name = f"closed-{uuid.uuid4().hex[:6]}"
        team_id, _, key = team_with_budget(gw, name)
        client, served = openai_client(gw, key), Served()
        served.call(client)
        assert metric(gw, "tiergate_degraded", component="redis") == 0

        served.call(client)  # the first request sized the budget leases; this one used them
        assert metric(gw, "tiergate_budget_reservations_total", path="lease") >= 1

        proxy.cut()
        # Requests this process funds from its budget leases need no Redis call: until the
        # process notices the outage (a failed call, or its ping within a second) they are
        # served, on money reserved in Redis before the cut, and settle when it returns.
        # Then every request is refused.
        err: openai.APIStatusError | None = None
        leased_during_cut = 0
        deadline = time.monotonic() + 5
        while err is None and time.monotonic() < deadline:
            try:
                served.call(client)
                leased_during_cut += 1
            except openai.APIStatusError as exc:
                err = exc
        assert err is not None, "requests were still served 5 s into the Redis outage"
        assert leased_during_cut <= 8, "more than one lease's worth was served without Redis"
        assert err.status_code == 503
        assert int(err.response.headers["retry-after"]) >= 1
        assert err.response.headers["x-request-id"]
        body = err.response.json()["error"]
        assert body["code"] == "service_unavailable"
        assert body["type"] == "overloaded_error"
        assert body["message"].startswith("budget store unavailable")
        assert "TIERGATE_REDIS_FAILURE_MODE" in body["message"]

        claude = anthropic.Anthropic(base_url=gw.urls[0], api_key=key, max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as ainfo:
            claude.messages.create(model="claude-opus-4-1", max_tokens=16, messages=MESSAGES)
        assert ainfo.value.status_code == 503
        shape = ainfo.value.response.json()
        assert shape["type"] == "error"
        assert shape["error"]["type"] == "overloaded_error"
        assert shape["error"]["message"].startswith("budget store unavailable")

        assert metric(gw, "tiergate_degraded", component="redis") == 1
        assert metric(gw, "tiergate_degraded_requests_total", component="redis") == 0

        proxy.restore()

        def served_again() -> bool:
            try:
                served.call(client)
            except openai.APIStatusError as exc:
                assert exc.status_code == 503
                return False
            return True

        wait_for(served_again, 15, "requests to be served after Redis returned")
        assert metric(gw, "tiergate_degraded", component="redis") == 0
        served.call(client)
        assert_ledger_matches(pg_url, team_id, served, catalog_file)


# ---- Redis down, fail open -----------------------------------------------------------


def _minute_margin(seconds: float) -> None:
    """Rate limits count per calendar minute: start a burst well inside one."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.2)


def test_redis_down_fail_open_serves_with_local_limits_and_settles_once_after_recovery(
    catalog_file: Path, pg_url: str, redis_url: str
) -> None:
    with gateway(catalog_file, pg_url, redis_url, cut="redis", mode="open") as (gw, proxy):
        prefix = gw.prefix  # type: ignore[attr-defined]
        name = f"open-{uuid.uuid4().hex[:6]}"
        team_id, budget_id, key = team_with_budget(gw, name)
        key_id = admin(gw, "GET", f"/keys?team={name}").json()["data"][0]["id"]
        r = admin(gw, "PUT", f"/limits/{key_id}", {"requests_per_minute": 5})
        assert r.status_code == 200, r.text
        client, served = openai_client(gw, key), Served()
        _minute_margin(25)
        served.call(client)  # counted in Redis: 1 of 5 this minute
        # its settlement (sent after the answer) reaches the ledger before the cut
        wait_for(lambda: len(ledger_rows(pg_url, team_id)) == 1, 15, "the first ledger row")

        proxy.cut()
        degraded: list[str] = []
        statuses: list[int] = []
        for _ in range(7):
            try:
                degraded.append(served.call(client))
                statuses.append(200)
            except openai.APIStatusError as exc:
                statuses.append(exc.status_code)
                assert exc.response.json()["error"]["code"] == "rate_limit_exceeded"
        # The local limiter starts at zero in this process: 5 pass, then 429.
        assert statuses == [200] * 5 + [429] * 2
        assert metric(gw, "tiergate_degraded", component="redis") == 1
        assert metric(gw, "tiergate_degraded_requests_total", component="redis") == 5
        assert metric(gw, "tiergate_ledger_spool_events") == 5
        stored = {row[0] for row in ledger_rows(pg_url, team_id)}
        assert not stored & set(degraded), "spooled settlements cannot reach the ledger"

        proxy.restore()
        wait_for(
            lambda: (
                metric(gw, "tiergate_degraded", component="redis") == 0
                and metric(gw, "tiergate_ledger_spool_events") == 0
            ),
            15,
            "the gauge and the spool to return to 0",
        )
        served.call(client)  # through Redis again: not counted as degraded
        assert metric(gw, "tiergate_degraded_requests_total", component="redis") == 5
        total = assert_ledger_matches(pg_url, team_id, served, catalog_file)

        # The shared budget counter holds every request's cost exactly once,
        # the spooled ones included.
        r_ = redis.Redis.from_url(redis_url)
        counters = [
            k for k in r_.scan_iter(f"{prefix}b:{budget_id}:*") if not k.endswith((b":z", b":h"))
        ]
        spent = sum(int(r_.hget(k, "spent") or 0) for k in counters)
        r_.close()
        assert counters and spent == total


def test_spend_spooled_during_an_outage_survives_sigkill(
    catalog_file: Path, pg_url: str, redis_url: str
) -> None:
    with gateway(catalog_file, pg_url, redis_url, cut="redis", mode="open") as (gw, proxy):
        team_id, _, key = team_with_budget(gw, f"kill-{uuid.uuid4().hex[:6]}")
        client, served = openai_client(gw, key), Served()
        proxy.cut()
        spooled = {served.call(client) for _ in range(3)}
        assert metric(gw, "tiergate_ledger_spool_events") == 3
        spool_dir = Path(gw.env["TIERGATE_SPOOL_DIR"])
        assert [p.stat().st_size > 0 for p in spool_dir.glob("*.jsonl")] == [True]

        port = int(gw.urls[0].rsplit(":", 1)[1])
        gw.procs[0].kill()  # SIGKILL: no shutdown, the in-memory spool is gone
        gw.procs[0].wait(10)
        assert not {row[0] for row in ledger_rows(pg_url, team_id)} & spooled

        proxy.restore()
        gw.spawn(port)  # a new process on the same spool directory takes the file over
        wait_ready(gw.urls[0])
        assert_ledger_matches(pg_url, team_id, served, catalog_file)
        wait_for(
            lambda: all(p.stat().st_size == 0 for p in spool_dir.glob("*.jsonl")),
            15,
            "the adopted spool to be replayed",
        )


# ---- PostgreSQL down -----------------------------------------------------------------


def test_postgres_down_requests_flow_and_the_ledger_catches_up_exactly_once(
    catalog_file: Path, pg_url: str, redis_url: str
) -> None:
    with gateway(catalog_file, pg_url, redis_url, cut="postgres") as (gw, proxy):
        name = f"pgdown-{uuid.uuid4().hex[:6]}"
        team_id, _, key = team_with_budget(gw, name)
        client, served = openai_client(gw, key), Served()
        for _ in range(2):
            served.call(client)
        wait_for(lambda: len(ledger_rows(pg_url, team_id)) == 2, 20, "two rows")

        proxy.cut()
        during = [served.call(client) for _ in range(5)]
        time.sleep(5.5)  # past the key cache TTL: the key is served from the cache
        during += [served.call(client) for _ in range(3)]
        with pytest.raises(openai.APIStatusError) as info:
            openai_client(gw, "tg-" + "z" * 43).chat.completions.create(
                model="deepseek-chat", messages=MESSAGES, max_tokens=16
            )
        assert info.value.status_code == 503
        assert info.value.response.json()["error"]["message"].startswith("key store unavailable")
        assert metric(gw, "tiergate_ledger_lag_events") >= 5
        r = admin(gw, "GET", "/teams")  # the admin API needs the database: 503, not 500
        assert r.status_code == 503 and r.json()["error"]["message"].startswith("database")
        assert r.headers["Retry-After"]
        stored = {row[0] for row in ledger_rows(pg_url, team_id)}
        assert len(stored) == 2 and not stored & set(during)

        proxy.restore()
        assert_ledger_matches(pg_url, team_id, served, catalog_file)
        served.call(client)
        assert_ledger_matches(pg_url, team_id, served, catalog_file)
