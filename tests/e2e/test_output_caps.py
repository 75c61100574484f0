"""What is reserved is what can be spent: output limits against real gateway processes.

Two `tiergate serve` processes share Redis and PostgreSQL and prefer the simulated hosted
API, which answers at length (2,000 output tokens) unless the request's limit stops it; the
catalog's ``reservation_output_cap`` is 64 tokens.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from .conftest import Sims
from .test_money_e2e import (
    Gateways,
    admin,
    drop_keys,
    money_env,
    new_key,
    sims_catalog,
    sql,
    wait_rows,
)

CAP = 64
LONG = 2000


@pytest.fixture(scope="module")
def gw(
    sims: Sims, pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateways]:
    config = sims_catalog(sims, tmp_path_factory.mktemp("caps"))
    data = yaml.safe_load(config.read_text())
    data["routing"]["reservation_output_cap"] = CAP
    # The hosted API reads max_tokens before max_completion_tokens (vLLM the other way):
    # with both sent, it is the one that shows a limit the gateway did not reserve for.
    data["routing"]["backend_preference"] = ["hosted", "self_hosted"]
    config.write_text(yaml.safe_dump(data))
    prefix = f"tgc:{os.getpid()}:"
    g = Gateways(money_env(pg_url, redis_url, prefix), config)
    g.start(2)
    yield g
    g.stop()
    drop_keys(redis_url, prefix)


@pytest.fixture
def long_answers(sims: Sims) -> Iterator[None]:
    urls = [*sims.flash, *sims.pro, sims.hosted]
    for url in urls:
        sims.control(url, default_output_tokens=LONG, reasoning_tokens=0)
    yield
    for url in urls:
        sims.control(url, default_output_tokens=24, reasoning_tokens=16)


def body(**kw: Any) -> dict[str, Any]:
    return {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], **kw}


def post(url: str, key: str, b: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json=b,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def budget_after_probe(
    gw: Gateways, pg_url: str, team: tuple[str, str], probe: httpx.Response, times: float
) -> int:
    """A day budget for ``team`` (id, name) of ``times`` what its one ledgered probe cost,
    seen by every process; returns the limit in nanos."""
    assert probe.status_code == 200, probe.text
    wait_rows(pg_url, team[0], 1)
    one = sql(pg_url, "select cost_nanos from ledger where team_id = %s", team[0])[0][0]
    limit_nanos = int(one * times)
    budget = {"scope": "team", "scope_id": team[1], "period": "day", "limit_usd": limit_nanos / 1e9}
    r = admin(gw, "PUT", "/budgets", budget)
    assert r.status_code == 200, r.text
    time.sleep(5.5)  # key caches expire: every process sees the budget
    return limit_nanos


def fire(gw: Gateways, key: str, b: dict[str, Any], n: int) -> list[httpx.Response]:
    """``n`` concurrent chat requests, alternating between the two processes."""

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        gw.urls[i % 2] + "/v1/chat/completions",
                        json=b,
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    for i in range(n)
                )
            )

    return asyncio.run(run())


def spent_nanos(pg_url: str, team: str, rows: int) -> int:
    assert wait_rows(pg_url, team, rows) == rows
    return sql(pg_url, "select sum(cost_nanos) from ledger where team_id = %s", team)[0][0]


def test_no_max_tokens_spends_no_more_than_was_reserved_under_concurrency(
    gw: Gateways, pg_url: str, long_answers: None
) -> None:
    team_id, _, key = new_key(gw, "no-limit-team")
    first = post(gw.urls[0], key, body(max_tokens=CAP))
    assert first.status_code == 200 and first.json()["usage"]["completion_tokens"] == CAP
    limit_nanos = budget_after_probe(
        gw, pg_url, (team_id, "no-limit-team"), first, 11
    )  # the probe and ~10 more
    responses = fire(gw, key, body(), 60)  # no max_tokens
    ok = [r for r in responses if r.status_code == 200]
    assert len(ok) + sum(r.status_code == 429 for r in responses) == 60
    assert ok and all(r.json()["usage"]["completion_tokens"] <= CAP for r in ok)
    spent = spent_nanos(pg_url, team_id, len(ok) + 1)
    print(f"\n[caps] 60 without max_tokens: {len(ok)} served, spent {spent} of {limit_nanos} nanos")
    assert spent <= limit_nanos


def test_with_both_limits_the_one_reserved_is_the_one_the_upstream_gets(
    gw: Gateways, pg_url: str, long_answers: None
) -> None:
    team_id, _, key = new_key(gw, "both-limits-team")
    r = post(gw.urls[0], key, body(max_tokens=CAP, max_completion_tokens=8))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 8
    wait_rows(pg_url, team_id, 1)
    assert sql(pg_url, "select output_tokens from ledger where team_id = %s", team_id)[0][0] <= 8


def test_max_tokens_beyond_what_the_tier_can_produce_is_a_400(gw: Gateways) -> None:
    _, _, key = new_key(gw, "huge-limit-team")
    for field in ("max_tokens", "max_completion_tokens"):
        r = post(gw.urls[0], key, body(**{field: 10**12}))
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == field and "at most" in r.json()["error"]["message"]


def test_tokens_per_minute_count_the_output_too(gw: Gateways, long_answers: None) -> None:
    _, key_id, key = new_key(gw, "tpm-team")
    tpm = 2000
    r = admin(gw, "PUT", f"/limits/{key_id}", {"tokens_per_minute": tpm})
    assert r.status_code == 200, r.text
    left = 60 - time.time() % 60
    if left < 15:  # the requests below must fall in one calendar minute
        time.sleep(left + 0.5)
    served = 0
    refused = []
    for _ in range(10):
        r = post(gw.urls[0], key, body(max_tokens=600))
        if r.status_code == 200:
            usage = r.json()["usage"]
            served += usage["prompt_tokens"] + usage["completion_tokens"]
        else:
            refused.append(r)
    print(f"\n[tpm] limit {tpm}: {served} tokens served, {len(refused)} refused")
    assert refused and all(r.status_code == 429 for r in refused)
    assert refused[0].json()["error"]["code"] == "rate_limit_exceeded"
    assert refused[0].headers["Retry-After"]
    # The window refuses once spent: past the limit by at most the last request admitted.
    assert served <= tpm + 600 + 100


@pytest.fixture
def byte_tokens(sims: Sims) -> Iterator[None]:
    """Every upstream counts one prompt token per byte, a byte-level tokenizer's worst case."""
    urls = [*sims.flash, *sims.pro, sims.hosted]
    for url in urls:
        sims.control(url, prompt_tokens_per_byte=1.0)
    yield
    for url in urls:
        sims.control(url, prompt_tokens_per_byte=0.0)


def _tool_history(turns: int) -> list[dict[str, Any]]:
    """A user turn, then ``turns`` tiny tool calls and empty results: nearly all template."""
    out: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    for i in range(turns):
        call = {"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        out += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": ""},
        ]
    return out


TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Find a record by its id in the archive. " * 5,
        "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
    },
}
# Prompts whose tokens the 3-bytes-a-token estimate undercounts, against an upstream
# counting a token per byte of the rendered template: base64, a tool-call history that is
# mostly template markup, many tool definitions.
BAD_PROMPTS: dict[str, dict[str, Any]] = {
    "base64": {
        "messages": [{"role": "user", "content": base64.b64encode(os.urandom(3000)).decode()}]
    },
    "tool history": {"model": "deepseek-v4-pro", "messages": _tool_history(200)},
    "tool definitions": {
        "model": "deepseek-v4-pro",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {**TOOL, "function": {**TOOL["function"], "name": f"lookup_{i}"}} for i in range(60)
        ],
    },
}


@pytest.mark.parametrize("shape", BAD_PROMPTS)
def test_prompts_that_tokenize_badly_cannot_spend_past_a_hard_budget(
    gw: Gateways, pg_url: str, byte_tokens: None, shape: str
) -> None:
    """Such prompts run up to three times the gateway's estimate: the reservation prices
    the prompt's bound, so concurrent requests stop at the limit, and no settlement comes
    out above its reservation."""
    team = f"bad-prompt-{shape.replace(' ', '-')}"
    team_id, _, key = new_key(gw, team)
    b = body(max_tokens=CAP, **BAD_PROMPTS[shape])
    first = post(gw.urls[0], key, b)
    # the probe and five more, by what they really cost
    limit_nanos = budget_after_probe(gw, pg_url, (team_id, team), first, 6.5)
    responses = fire(gw, key, b, 20)
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 20 and ok and refused
    assert refused[0].json()["error"]["code"] == "budget_exceeded"
    spent = spent_nanos(pg_url, team_id, len(ok) + 1)
    print(f"\n[caps] {shape}: {len(ok)} served, spent {spent} of {limit_nanos} nanos")
    assert spent <= limit_nanos
    for url in gw.urls:
        metrics = httpx.get(url + "/metrics", timeout=10).text
        over = [
            line
            for line in metrics.splitlines()
            if line.startswith("tiergate_settled_over_reservation_total{")
        ]
        assert all(line.endswith(" 0.0") for line in over), over
