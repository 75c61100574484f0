"""Security properties of a real `tiergate serve` process with keys in PostgreSQL.

Keys: high-entropy, stored hashed, shown once, compared in constant time. Secrets: neither a
raw key nor prompt text reaches the log or /metrics. Isolation: a team's key cannot reach
the admin API (the only place spend, keys and budgets are read), and the data API's answers
carry nothing of another team. Per-key max_tokens ceilings hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway import keys
from gateway.app import create_app
from gateway.settings import Settings

from .conftest import Sims
from .test_money_e2e import Gateways, chat, sims_catalog, wait_ready

ROOT = Path(__file__).resolve().parents[2]
MASTER = "master-" + uuid.uuid4().hex
METRICS_KEY = "metrics-" + uuid.uuid4().hex


@dataclass
class Served:
    url: str
    log: Path

    def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        return httpx.request(
            method,
            self.url + "/admin" + path,
            json=json,
            headers={"Authorization": f"Bearer {MASTER}"},
            timeout=30,
        )

    def new_key(self, team: str, **kw: Any) -> dict[str, Any]:
        r = self.admin("POST", "/teams", {"name": team})
        assert r.status_code == 201, r.text
        r = self.admin("POST", "/keys", {"team": team, **kw})
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body


@pytest.fixture(scope="module")
def served(sims: Sims, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    config = sims_catalog(sims, tmp_path_factory.mktemp("security"))
    env = {
        **os.environ,
        "DEEPSEEK_API_KEY": "sim-key",
        "TIERGATE_DATABASE_URL": pg_url,
        "TIERGATE_MASTER_KEY": MASTER,
        "TIERGATE_METRICS_KEY": METRICS_KEY,
        "TIERGATE_REQUIRE_API_KEY": "true",
        "TIERGATE_LOG_LEVEL": "info",
        "TIERGATE_LOG_JSON": "true",
    }
    env.pop("TIERGATE_LOG_PROMPTS", None)
    gw = Gateways(env, config)
    port = gw.spawn()
    wait_ready(gw.urls[0])
    yield Served(gw.urls[0], config.parent / f"gateway-{port}.log")
    gw.stop()


# ---- keys -----------------------------------------------------------------------------------


def test_keys_are_high_entropy_and_hashed() -> None:
    made = [keys.generate_key() for _ in range(2000)]
    raws = {raw for raw, _, _ in made}
    assert len(raws) == len(made)
    for raw, prefix, digest in made[:50]:
        secret = raw.removeprefix(keys.KEY_PREFIX)
        assert len(secret) >= 43  # 32 random bytes, base64url: 256 bits
        assert prefix == raw[:10] and len(prefix) < len(raw) // 4
        assert digest == hashlib.sha256(raw.encode()).hexdigest() and raw not in digest


def test_master_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = keys.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", recording)
    assert keys.master_key_matches("m" * 30, "m" * 30)
    assert not keys.master_key_matches("m" * 29 + "x", "m" * 30)
    assert not keys.master_key_matches(None, "m" * 30)
    assert len(calls) == 2


def test_key_shown_once_never_listed_and_data_keys_only_by_hash(served: Served) -> None:
    created = served.new_key("shown-once")
    raw = created["key"]
    assert raw.startswith(keys.KEY_PREFIX) and "not shown again" in created["note"]
    listed = served.admin("GET", "/keys?team=shown-once").json()["data"]
    text = json.dumps(listed)
    assert raw not in text and keys.hash_key(raw) not in text and listed[0]["prefix"] == raw[:10]
    assert chat(served.url, raw).status_code == 200
    # The display prefix alone, or the stored hash presented as a key, is not a key.
    for wrong in (raw[:10], keys.hash_key(raw), raw + "x", raw[:-1]):
        r = chat(served.url, wrong)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_malformed_key_settings_are_422_not_privileges(served: Served) -> None:
    served.admin("POST", "/teams", {"name": "strict"})
    for field, value in (
        ("may_override_tier", "false"),
        ("max_tokens_ceiling", True),
        ("max_tokens_ceiling", 2**40),
        ("name", "n" * 201),
        ("name", "nul\x00name"),
    ):
        r = served.admin("POST", "/keys", {"team": "strict", field: value})
        assert r.status_code == 422, (field, value, r.text)
        assert r.json()["error"]["param"] == field
    assert served.admin("GET", "/keys?team=strict").json()["data"] == []


# ---- secrets in logs and metrics ------------------------------------------------------------


def test_no_raw_key_or_prompt_in_logs_or_metrics(served: Served) -> None:
    created = served.new_key("quiet")
    raw = created["key"]
    prompt = "my secret prompt " + uuid.uuid4().hex
    r = chat(served.url, raw, messages=[{"role": "user", "content": prompt}])
    assert r.status_code == 200, r.text
    metrics = httpx.get(served.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert metrics.status_code == 200 and "tiergate_requests" in metrics.text
    assert raw not in metrics.text and prompt not in metrics.text
    deadline = time.monotonic() + 5
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        lines = [
            json.loads(line)
            for line in served.log.read_text().splitlines()
            if line.startswith("{") and '"request"' in line
        ]
        if any(rec.get("key") == raw[:10] for rec in lines):
            break
        time.sleep(0.1)
    mine = [rec for rec in lines if rec.get("key") == raw[:10]]
    assert mine and mine[0]["event"] == "request" and mine[0]["team"] == created["team_id"]
    logged = served.log.read_text()
    assert raw not in logged and prompt not in logged and MASTER not in logged


def test_metrics_need_the_metrics_key_when_one_is_set(served: Served) -> None:
    team_key = served.new_key("scraper-wannabe")["key"]
    for headers in ({}, {"Authorization": f"Bearer {team_key}"}, {"Authorization": "Bearer x"}):
        r = httpx.get(served.url + "/metrics", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_metrics_are_open_without_a_metrics_key(sims: Sims) -> None:
    """The default: /metrics (per-team spend) is readable by whoever reaches the port."""
    from engines.asgi_thread import BackgroundServer

    from .conftest import demo_catalog

    app = create_app(Settings(database_url="none", log_level="warning"), catalog=demo_catalog(sims))
    with BackgroundServer(app) as server:
        assert httpx.get(server.base_url + "/metrics").status_code == 200


# ---- isolation between teams ----------------------------------------------------------------

ADMIN_CALLS = [
    ("GET", "/teams"),
    ("POST", "/teams"),
    ("GET", "/keys"),
    ("POST", "/keys"),
    ("DELETE", "/keys/{other_key}"),
    ("GET", "/budgets"),
    ("PUT", "/budgets"),
    ("PUT", "/limits/{other_key}"),
    ("GET", "/spend"),
    ("GET", "/spend?team={other_team}"),
    ("GET", "/savings"),
]


def test_admin_call_list_covers_every_admin_route() -> None:
    app = create_app(Settings(database_url="none", log_level="warning"))
    routes = {
        (method.upper(), path.removeprefix("/admin").replace("{key_id}", "{other_key}"))
        for path, ops in app.openapi()["paths"].items()
        if path.startswith("/admin")
        for method in ops
    }
    assert routes == {(m, p.split("?")[0]) for m, p in ADMIN_CALLS}


def test_a_team_key_cannot_read_or_change_another_teams_money(served: Served) -> None:
    mine = served.new_key("team-a")
    other = served.new_key("team-b")
    assert chat(served.url, other["key"]).status_code == 200  # team-b has spend
    served.admin(
        "PUT",
        "/budgets",
        {"scope": "team", "scope_id": other["team_id"], "period": "day", "limit_usd": 5},
    )
    body = {"name": "x", "team": "team-b", "scope": "team", "scope_id": other["team_id"]}
    for method, path in ADMIN_CALLS:
        path = path.format(other_key=other["id"], other_team=other["team_id"])
        for headers in (
            {"Authorization": f"Bearer {mine['key']}"},
            {"x-api-key": mine["key"]},
            {"Authorization": f"Bearer {mine['key']}", "x-api-key": MASTER[:-1]},
        ):
            r = httpx.request(
                method,
                served.url + "/admin" + path,
                json=body if method in ("POST", "PUT") else None,
                headers=headers,
            )
            assert r.status_code == 401, (method, path, r.text)
            assert other["team_id"] not in r.text and other["key"][:10] not in r.text
    # The key of team-b still works and its budget is untouched.
    assert chat(served.url, other["key"]).status_code == 200
    budgets = served.admin("GET", "/budgets").json()["data"]
    assert [b["limit_usd"] for b in budgets if b["scope_id"] == other["team_id"]] == [5.0]
    # What the data API shows a key carries nothing of another team.
    auth = {"Authorization": f"Bearer {mine['key']}"}
    for path in ("/v1/models", "/healthz", "/readyz"):
        r = httpx.get(served.url + path, headers=auth)
        assert other["team_id"] not in r.text and other["key"][:10] not in r.text, path


# ---- per-key max_tokens ceiling -------------------------------------------------------------


def test_max_tokens_ceiling_per_key(served: Served) -> None:
    capped = served.new_key("capped", max_tokens_ceiling=16)["key"]
    over = chat(served.url, capped, max_tokens=17)
    assert over.status_code == 400
    err = over.json()["error"]
    assert err["param"] == "max_tokens" and "ceiling of 16" in err["message"]
    r = httpx.post(
        served.url + "/v1/messages",
        json={
            "model": "deepseek-chat",
            "max_tokens": 500,
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers={"x-api-key": capped},
    )
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert chat(served.url, capped, max_tokens=16).status_code == 200
    # The error names the field the client sent, whichever protocol's it is.
    sdk = openai.OpenAI(base_url=served.url + "/v1", api_key=capped, max_retries=0)
    user = [{"role": "user", "content": "hi"}]
    asks = {
        "max_completion_tokens": lambda: sdk.chat.completions.create(
            model="deepseek-chat", messages=user, max_completion_tokens=17
        ),
        "max_output_tokens": lambda: sdk.responses.create(
            model="deepseek-chat", input="hi", max_output_tokens=17
        ),
    }
    for field, ask in asks.items():
        with pytest.raises(openai.BadRequestError) as info:
            ask()
        err = info.value.body
        assert err["param"] == field  # type: ignore[index]
        assert err["message"] == f"{field} 17 is over this key's ceiling of 16"  # type: ignore[index]
    unset = chat(served.url, capped, max_tokens=None)
    assert unset.status_code == 200 and unset.json()["usage"]["completion_tokens"] <= 16
