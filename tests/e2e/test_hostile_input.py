"""Hostile input against a real gateway process with Redis and PostgreSQL behind it.

The gateway leaves the ledger stream to `tiergate ledger drain` here, so a test can both
stall the ledger (nobody drains) and see exactly which rows a drain writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import Sims
from .test_money_e2e import ROOT, Gateways, drop_keys, money_env, new_key, sims_catalog, sql

MAX_LAG_S = 2


@pytest.fixture(scope="module")
def gw(
    sims: Sims, pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateways]:
    config = sims_catalog(sims, tmp_path_factory.mktemp("hostile"))
    prefix = f"tgh:{os.getpid()}:"
    env = money_env(
        pg_url,
        redis_url,
        prefix,
        TIERGATE_LEDGER_DRAIN="external",
        TIERGATE_LEDGER_MAX_LAG_S=str(MAX_LAG_S),
    )
    g = Gateways(env, config)
    g.start(1)
    yield g
    g.stop()
    drop_keys(redis_url, prefix)


def drain_once(gw: Gateways) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "ledger", "drain", "--once"],
        cwd=ROOT,
        env=gw.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def post(gw: Gateways, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        gw.urls[0] + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def openai_body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def anthropic_body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


HOSTILE = [
    "claude-x\x00y",  # a NUL byte
    "claude-" + "a" * 300,  # past the ledger column
    "claude-opus-x\r\nX-Evil: 1",  # header injection
    "claude-\u202egnp",  # a bidi override that hides text in logs
    "claude-\u2028x",  # a line separator
]


def test_hostile_model_names_are_refused_before_dispatch_and_the_ledger_keeps_flowing(
    gw: Gateways, pg_url: str
) -> None:
    team_id, _, key = new_key(gw, "hostile-team")
    for model in HOSTILE:
        r = post(gw, key, "/v1/chat/completions", openai_body(model))
        assert r.status_code == 400, (model, r.status_code, r.text)
        assert r.json()["error"]["param"] == "model" and "X-Evil" not in r.headers
        r = post(gw, key, "/v1/messages", anthropic_body(model))
        assert r.status_code == 400, (model, r.status_code, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert "model" in r.json()["error"]["message"]
        r = post(gw, key, "/v1/responses", {"model": model, "input": "hi"})
        assert r.status_code == 400, (model, r.status_code, r.text)
        assert r.json()["error"]["param"] == "model"
    # A non-ASCII name that matches a glob is served; the route header carries it encoded.
    served = []
    for path, body in (
        ("/v1/chat/completions", openai_body("claude-opus-日本")),
        ("/v1/messages", anthropic_body("claude-opus-日本")),
        ("/v1/chat/completions", openai_body("deepseek-chat")),
    ):
        r = post(gw, key, path, body)
        assert r.status_code == 200, r.text
        route = r.headers["x-tiergate-route"]
        assert route.isascii() and ("%E6%97%A5%E6%9C%AC" in route or "claude" not in route)
        served.append(r.headers["x-request-id"])
    drain_once(gw)
    rows = sql(pg_url, "select request_id, requested_model from ledger where team_id = %s", team_id)
    assert {r[0] for r in rows} == set(served)  # nothing refused was billed
    assert sorted(r[1] for r in rows) == ["claude-opus-日本", "claude-opus-日本", "deepseek-chat"]


def test_readyz_turns_503_while_the_ledger_is_stalled(gw: Gateways) -> None:
    drain_once(gw)
    assert httpx.get(gw.urls[0] + "/readyz").status_code == 200
    _, _, key = new_key(gw, "stalled-team")
    assert post(gw, key, "/v1/chat/completions", openai_body("deepseek-chat")).status_code == 200
    # Nobody drains: the oldest event ages past the limit and readiness says so.
    deadline = time.monotonic() + 20
    while True:
        r = httpx.get(gw.urls[0] + "/readyz")
        if r.status_code == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 503, r.text
    ledger = r.json()["ledger"]
    assert ledger["ok"] is False and ledger["lag_events"] >= 1
    assert ledger["lag_seconds"] >= MAX_LAG_S  # rounded to 0.1 s in the answer
    drain_once(gw)
    r = httpx.get(gw.urls[0] + "/readyz")
    assert r.status_code == 200 and r.json()["ledger"]["lag_events"] == 0, r.text


def test_a_deeply_nested_body_is_refused_before_anything_is_reserved(gw: Gateways) -> None:
    """300 levels: the JSON reader takes it, the writer would fail once the request is
    already reserved for, and its hold would lock the budget for 15 minutes."""
    _, _, key = new_key(gw, "deep-team")
    deep = "[" * 300 + "1" + "]" * 300
    for path, body in (
        ("/v1/chat/completions", openai_body("deepseek-chat")),
        ("/v1/messages", anthropic_body("deepseek-chat")),
        ("/v1/responses", {"model": "deepseek-chat", "input": "hi"}),
    ):
        raw = httpx.post(
            gw.urls[0] + path,
            content=json.dumps(body)[:-1] + f', "extra": {deep}}}',
            headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
            timeout=30,
        )
        assert raw.status_code == 400, (path, raw.text)
        message = raw.json()["error"]["message"]
        assert "more than 128 levels deep" in message
        if path == "/v1/messages":
            assert raw.json()["type"] == "error"
