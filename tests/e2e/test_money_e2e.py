"""Money through real gateway processes sharing Redis and PostgreSQL.

Three `tiergate serve` processes in front of simulators; keys, budgets and the ledger live
in a fresh PostgreSQL database, budgets and the ledger stream in Redis.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from engines.asgi_thread import free_port

from .conftest import DEMO, Sims

MASTER = "master-" + "x" * 24
ROOT = Path(__file__).resolve().parents[2]


class Gateways:
    def __init__(self, env: dict[str, str], config: Path) -> None:
        self.env = env
        self.config = config
        self.logs = config.parent  # gateway-<port>.log: read them when a test fails
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []

    def start(self, n: int) -> None:
        for _ in range(n):
            self.spawn()
        for url in self.urls:
            wait_ready(url)

    def command(self, port: int) -> list[str]:
        """The command line of one `tiergate serve` process of this set."""
        return [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--config",
            str(self.config),
            "--port",
            str(port),
        ]

    def spawn(self, port: int | None = None) -> int:
        port = port or free_port()
        proc = subprocess.Popen(
            self.command(port),
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=(self.logs / f"gateway-{port}.log").open("ab"),
        )
        url = f"http://127.0.0.1:{port}"
        if url in self.urls:
            self.procs[self.urls.index(url)] = proc
        else:
            self.procs.append(proc)
            self.urls.append(url)
        return port

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"gateway {url} did not start")


def sims_catalog(sims: Sims, folder: Path) -> Path:
    """The demo catalog pointed at the running simulators, written to ``folder``."""
    data = yaml.safe_load(DEMO.read_text())
    data["backends"]["flash-local"]["replicas"] = sims.flash
    data["backends"]["pro-local"]["replicas"] = sims.pro
    data["backends"]["hosted"]["base_url"] = sims.hosted
    config = folder / "catalog.yaml"
    config.write_text(yaml.safe_dump(data))
    return config


def money_env(pg_url: str, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment of a gateway process with keys, Redis budgets and the PostgreSQL ledger."""
    return {
        **os.environ,
        "DEEPSEEK_API_KEY": "sim-key",
        "TIERGATE_DATABASE_URL": pg_url,
        "TIERGATE_REDIS_URL": redis_url,
        "TIERGATE_REDIS_PREFIX": prefix,
        "TIERGATE_MASTER_KEY": MASTER,
        "TIERGATE_REQUIRE_API_KEY": "true",
        "TIERGATE_LEDGER_CLAIM_IDLE_MS": "1000",
        "TIERGATE_LOG_LEVEL": "warning",
        **extra,
    }


def drop_keys(redis_url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(prefix + "*"))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.fixture(scope="module")
def gateways(
    sims: Sims, pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateways]:
    config = sims_catalog(sims, tmp_path_factory.mktemp("money"))
    prefix = f"tgm:{os.getpid()}:"
    gw = Gateways(money_env(pg_url, redis_url, prefix), config)
    gw.start(3)
    yield gw
    gw.stop()
    drop_keys(redis_url, prefix)


def admin(
    gw: Gateways, method: str, path: str, json: Any = None, key: str = MASTER, i: int = 0
) -> httpx.Response:
    return httpx.request(
        method, gw.urls[i] + "/admin" + path, json=json, headers={"Authorization": f"Bearer {key}"}
    )


def new_key(gw: Gateways, team: str, **kw: Any) -> tuple[str, str, str]:
    r = admin(gw, "POST", "/teams", {"name": team})
    assert r.status_code == 201, r.text
    team_id = r.json()["id"]
    r = admin(gw, "POST", "/keys", {"team": team, **kw})
    assert r.status_code == 201, r.text
    return team_id, r.json()["id"], r.json()["key"]


def chat(url: str, key: str, **kw: Any) -> httpx.Response:
    body = {
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 16,
        **kw,
    }
    return httpx.post(
        url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def sql(pg_url: str, query: str, *args: Any) -> Any:
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as c:
        return c.execute(query, args).fetchall()


def wait_rows(pg_url: str, team_id: str, n: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    got = -1
    while time.monotonic() < deadline:
        got = sql(pg_url, "select count(*) from ledger where team_id = %s", team_id)[0][0]
        if got >= n:
            return int(got)
        time.sleep(0.2)
    return int(got)


# ---- admin API ---------------------------------------------------------------------------


def test_admin_needs_the_master_key(gateways: Gateways) -> None:
    for key in ("wrong", "master"):
        r = admin(gateways, "GET", "/teams", key=key)
        assert r.status_code == 401 and "master key" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"scope": "team", "scope_id": "x", "period": "fortnight", "limit_usd": 5}, "period"),
        ({"scope": "team", "scope_id": "x", "period": "day", "limit_usd": "lots"}, "limit_usd"),
        ({"scope": "team", "scope_id": "x", "period": "day", "limit_usd": -3}, "limit_usd"),
        ({"scope": "team", "scope_id": "x", "period": "day", "limit_usd": "1e-12"}, "limit_usd"),
        ({"scope": "org", "scope_id": "x", "period": "day", "limit_usd": 5}, "scope"),
        (
            {
                "scope": "team",
                "scope_id": "x",
                "period": "day",
                "limit_usd": 5,
                "soft_thresholds": [2],
            },
            "soft_thresholds",
        ),
        ({"scope": "team", "period": "day", "limit_usd": 5}, "scope_id"),
    ],
)
def test_malformed_budgets_are_422(gateways: Gateways, body: dict[str, Any], param: str) -> None:
    r = admin(gateways, "PUT", "/budgets", body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"]


def test_spend_grouped_by_a_long_list_of_the_same_grouping_is_not_a_500(
    gateways: Gateways,
) -> None:
    r = admin(gateways, "GET", "/spend?group_by=" + ",".join(["team"] * 2000))
    assert r.status_code == 200, r.text
    assert all(set(row) >= {"team_id", "cost_usd"} for row in r.json()["data"])
    r = admin(gateways, "GET", "/spend?group_by=team,fortnight")
    assert r.status_code == 422 and r.json()["error"]["param"] == "group_by"


def test_key_shown_once_and_stored_hashed(gateways: Gateways, pg_url: str) -> None:
    _, key_id, key = new_key(gateways, "hashing")
    assert key.startswith("tg-") and len(key) > 40
    listed = admin(gateways, "GET", "/keys?team=hashing").json()["data"]
    assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0]
    stored = sql(pg_url, "select key_hash, prefix from api_keys where id = %s", key_id)[0]
    assert key not in stored and stored[1] == key[:10]


def test_keys_work_everywhere_and_revocation_is_immediate_everywhere(gateways: Gateways) -> None:
    _, key_id, key = new_key(gateways, "revokers")
    for url in gateways.urls:
        assert chat(url, key).status_code == 200
    assert chat(gateways.urls[0], "tg-not-a-key").status_code == 401
    missing = httpx.post(
        gateways.urls[0] + "/v1/chat/completions", json={"model": "deepseek-chat", "messages": []}
    )
    assert missing.status_code == 401 and "missing API key" in missing.json()["error"]["message"]
    assert admin(gateways, "DELETE", f"/keys/{key_id}").status_code == 200
    for url in gateways.urls[1:]:  # other processes learn it through Redis at once
        deadline = time.monotonic() + 1.0
        while chat(url, key).status_code != 401:
            assert time.monotonic() < deadline, f"{url} still accepts a revoked key"
            time.sleep(0.02)


def _refused_everywhere_soon(gateways: Gateways, key: str, status: int) -> None:
    for url in gateways.urls:
        deadline = time.monotonic() + 1.0
        while chat(url, key).status_code != status:
            assert time.monotonic() < deadline, f"{url} does not answer {status} yet"
            time.sleep(0.02)


def test_a_budget_change_reaches_every_process_at_once(gateways: Gateways) -> None:
    """Not after the 5 s key cache: a lowered limit would be served past until then."""
    _, _, key = new_key(gateways, "lowered")
    budget = {"scope": "team", "scope_id": "lowered", "period": "day", "limit_usd": 1}
    assert admin(gateways, "PUT", "/budgets", budget).status_code == 200
    for url in gateways.urls:  # every process has the key and its $1 budget cached
        assert chat(url, key).status_code == 200
    budget["limit_usd"] = 0.000001
    assert admin(gateways, "PUT", "/budgets", budget).status_code == 200
    _refused_everywhere_soon(gateways, key, 429)
    # The CLI tells running gateways too (through $TIERGATE_REDIS_URL).
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "budgets", "set", "--scope", "team"]
        + ["--id", "lowered", "--period", "day", "--limit-usd", "1"],
        cwd=ROOT,
        env=gateways.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    _refused_everywhere_soon(gateways, key, 200)


def test_rate_limits_are_shared_across_processes(gateways: Gateways) -> None:
    _, key_id, key = new_key(gateways, "limited")
    assert (
        admin(gateways, "PUT", f"/limits/{key_id}", {"requests_per_minute": 6}).status_code == 200
    )
    statuses = [chat(gateways.urls[i % 3], key).status_code for i in range(9)]
    if statuses.count(429) != 3:
        # The limit window is a calendar minute; a boundary inside the loop resets it once.
        statuses = [chat(gateways.urls[i % 3], key).status_code for i in range(9)]
    assert statuses.count(200) == 6 and statuses.count(429) == 3


# ---- budgets under concurrency -------------------------------------------------------


def test_budget_holds_under_300_concurrent_requests_on_3_processes(
    gateways: Gateways, pg_url: str
) -> None:
    team_id, key_id, key = new_key(gateways, "crowd")
    # Measure one request's actual cost, then allow about 50 of them.
    first = chat(gateways.urls[0], key)
    assert first.status_code == 200
    wait_rows(pg_url, team_id, 1)
    one = sql(pg_url, "select cost_nanos from ledger where team_id = %s", team_id)[0][0]
    limit_usd = (one * 51) / 1e9
    r = admin(
        gateways,
        "PUT",
        "/budgets",
        {"scope": "team", "scope_id": "crowd", "period": "day", "limit_usd": limit_usd},
    )
    assert r.status_code == 200
    time.sleep(5.5)  # key caches expire, every process sees the budget

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            timeout=60, limits=httpx.Limits(max_connections=300)
        ) as client:
            body = {
                "model": "deepseek-chat",
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 16,
            }
            return await asyncio.gather(
                *(
                    client.post(
                        gateways.urls[i % 3] + "/v1/chat/completions",
                        json=body,
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    for i in range(300)
                )
            )

    responses = asyncio.run(fire())
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 300, {r.status_code for r in responses}
    assert 10 <= len(ok) <= 60
    for r in refused[:5]:
        err = r.json()["error"]
        assert err["code"] == "budget_exceeded" and "resets at" in err["message"]
        assert r.headers["x-tiergate-budget-remaining-usd"] and r.headers["x-tiergate-budget-reset"]
    rows = wait_rows(pg_url, team_id, len(ok) + 1)
    assert rows == len(ok) + 1  # one row per 200, none for a 429
    ids = {r.headers["x-request-id"] for r in ok} | {first.headers["x-request-id"]}
    stored = {
        row[0] for row in sql(pg_url, "select request_id from ledger where team_id = %s", team_id)
    }
    assert stored == ids
    spent = sql(
        pg_url, "select sum(cost_nanos), max(cost_nanos) from ledger where team_id = %s", team_id
    )[0]
    limit_nanos = int(limit_usd * 1e9)
    # The bound is one request's reservation: every prompt token a miss, max_tokens output.
    from datetime import UTC, datetime

    from policies.catalog import load_catalog
    from policies.pricing import PriceBook

    rate = PriceBook(load_catalog(gateways.config)).rate("flash-local", "flash", datetime.now(UTC))
    reservation = rate.worst_case_nanos(200, 16)
    print(
        f"\n[budget] 300 concurrent on 3 processes: {len(ok)} x 200, {len(refused)} x 429, "
        f"spent {spent[0]} of {limit_nanos} nanos (bound +{reservation})"
    )
    assert spent[0] <= limit_nanos + reservation


def test_ledger_equals_metrics_equals_per_request_costs(gateways: Gateways, pg_url: str) -> None:
    team_id, _, key = new_key(gateways, "books")
    for i in range(12):
        assert (
            chat(
                gateways.urls[i % 3],
                key,
                model=("deepseek-chat", "deepseek-reasoner", "deepseek-v4-pro")[i % 3],
            ).status_code
            == 200
        )
    r = httpx.post(
        gateways.urls[0] + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        },
    )
    assert r.status_code == 200 and "[DONE]" in r.text
    assert wait_rows(pg_url, team_id, 13) == 13
    ledger = sql(pg_url, "select sum(cost_nanos) from ledger where team_id = %s", team_id)[0][0]
    metric = 0.0
    for url in gateways.urls:
        for fam in text_string_to_metric_families(httpx.get(url + "/metrics").text):
            if fam.name == "tiergate_cost_nanodollars":
                metric += sum(
                    s.value
                    for s in fam.samples
                    if s.name.endswith("_total") and s.labels["team"] == team_id
                )
    assert int(metric) == ledger > 0
    report = admin(gateways, "GET", "/spend?group_by=team,option").json()["data"]
    mine = [row for row in report if row["team_id"] == team_id]
    assert sum(row["cost_nanos"] for row in mine) == ledger and len(mine) == 3
    csv = admin(gateways, "GET", "/spend?group_by=day&format=csv")
    assert csv.headers["content-type"].startswith("text/csv") and "cost_nanos" in csv.text


def test_sigkill_loses_no_settled_request(gateways: Gateways, pg_url: str) -> None:
    team_id, _, key = new_key(gateways, "crashers")
    victim = gateways.procs[2]
    url = gateways.urls[2]
    ok_ids: list[str] = []

    async def load() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            body = {
                "model": "deepseek-chat",
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 8,
            }

            async def one() -> None:
                try:
                    r = await client.post(
                        url + "/v1/chat/completions",
                        json=body,
                        headers={"Authorization": f"Bearer {key}"},
                    )
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    ok_ids.append(r.headers["x-request-id"])

            tasks = []
            for i in range(400):
                tasks.append(asyncio.create_task(one()))
                if i == 150:
                    victim.send_signal(signal.SIGKILL)
                await asyncio.sleep(0.002)
            await asyncio.gather(*tasks)

    asyncio.run(load())
    victim.wait(10)
    assert ok_ids, "some requests must have completed before the kill"
    # The survivors' drainers claim whatever the dead process had read but not written.
    # Rows of requests the victim settled but never answered count too, so wait for ids.
    deadline = time.monotonic() + 30
    while True:
        stored = {
            row[0]
            for row in sql(pg_url, "select request_id from ledger where team_id = %s", team_id)
        }
        if set(ok_ids) <= stored or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    rows = len(stored)
    print(f"\n[sigkill] {len(ok_ids)} requests got 200; ledger rows {len(stored)}")
    assert set(ok_ids) <= stored, f"{len(set(ok_ids) - stored)} settled requests missing"
    assert rows >= len(ok_ids)
    gateways.spawn(int(url.rsplit(":", 1)[1]))
    wait_ready(url)


def test_models_list_what_the_key_may_use(gateways: Gateways) -> None:
    _, _, key = new_key(gateways, "narrow", allowed_models=["deepseek-chat", "auto"])
    r = httpx.get(gateways.urls[0] + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert sorted(m["id"] for m in r.json()["data"]) == ["auto", "deepseek-chat"]
    denied = chat(gateways.urls[0], key, model="deepseek-v4-pro")
    assert denied.status_code == 403 and "may not use model" in denied.json()["error"]["message"]
    assert httpx.get(gateways.urls[0] + "/v1/models").status_code == 401


def test_responses_and_messages_are_priced_ledgered_and_budgeted_like_chat(
    gateways: Gateways, pg_url: str
) -> None:
    team_id, _, key = new_key(gateways, "agents")
    auth = {"Authorization": f"Bearer {key}"}
    for i, stream in enumerate((False, True)):
        r = httpx.post(
            gateways.urls[i] + "/v1/responses",
            json={"model": "deepseek-reasoner", "input": "hello", "stream": stream},
            headers=auth,
            timeout=30,
        )
        assert r.status_code == 200 and (not stream or "response.completed" in r.text)
    r = httpx.post(
        gateways.urls[2] + "/v1/messages",
        json={
            "model": "claude-sonnet-4-5",
            "max_tokens": 32,
            "messages": [{"role": "user", "content": "hello"}],
        },
        headers=auth,
        timeout=30,
    )
    assert r.status_code == 200
    assert wait_rows(pg_url, team_id, 3) == 3
    rows = sql(
        pg_url,
        "select protocol, requested_model, cost_nanos, reasoning_tokens from ledger "
        "where team_id = %s order by protocol, ts",
        team_id,
    )
    assert [(p, m) for p, m, _, _ in rows] == [
        ("anthropic", "claude-sonnet-4-5"),
        ("responses", "deepseek-reasoner"),
        ("responses", "deepseek-reasoner"),
    ]
    assert all(cost > 0 for _, _, cost, _ in rows)
    assert all(reasoning > 0 for p, _, _, reasoning in rows if p == "responses")
    # Over the budget: the same 429 as chat, in the Responses API's (OpenAI) error shape.
    spent = sum(cost for _, _, cost, _ in rows)
    r = admin(
        gateways,
        "PUT",
        "/budgets",
        {"scope": "team", "scope_id": "agents", "period": "day", "limit_usd": spent / 1e9},
    )
    assert r.status_code == 200
    time.sleep(5.5)  # key caches expire, every process sees the budget
    r = httpx.post(
        gateways.urls[0] + "/v1/responses",
        json={"model": "deepseek-reasoner", "input": "hello"},
        headers=auth,
        timeout=30,
    )
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
