"""Every dashboard panel's PromQL, evaluated by a real Prometheus scraping a real gateway.

The gateway runs the embedded money path (SQLite ledger, a key with a tiny budget) in front
of the simulators; a workload exercises routing, streaming, failover, budget alerts and
refusals; Prometheus (Debian's package) scrapes it every second on loopback; then each
panel's query must succeed and return at least one series, and the budget gauges must agree
with the spend counters. The Cost dashboard is drawn from the scraped data with
scripts/render_dashboard.py (to TIERGATE_RENDER_DASHBOARD when set, e.g.
docs/img/dashboard_cost.png). Alert rules are checked and unit tested with promtool.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import openai
import pytest
import redis
import yaml

from engines.asgi_thread import BackgroundServer, free_port
from gateway import admin_ops
from gateway.app import create_app
from gateway.db.engine import make_engine, make_sessions
from gateway.db.migrate import upgrade
from gateway.settings import Settings
from scripts.render_dashboard import expand, render
from tests.conftest import REQUIRE
from tests.e2e.conftest import Sims, demo_catalog

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "helm" / "tiergate" / "files" / "dashboards").glob("*.json"))
METRICS_SOURCE = "\n".join(p.read_text() for p in (ROOT / "gateway").rglob("*.py"))


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        msg = f"{tool} is not installed (scripts/deploy_tools.sh installs Debian's prometheus)"
        if REQUIRE:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def panels() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        for p in json.loads(path.read_text())["panels"]:
            for t in p["targets"]:
                out.append((path.stem, p["title"], expand(t["expr"])))
    return out


def test_dashboards_reference_only_exported_metrics() -> None:
    import re

    for dash, title, expr in panels():
        for name in re.findall(r"\b(tiergate_[a-z_]+)", expr):
            base = re.sub(r"_(total|bucket|sum|count)$", "", name)
            assert f'"{base}"' in METRICS_SOURCE, (
                f"{dash}/{title}: {name} is not exported by the gateway"
            )


def test_alert_rules_check_and_unit_tests() -> None:
    promtool = need("promtool")
    subprocess.run(
        [promtool, "check", "rules", str(ROOT / "helm/tiergate/files/alerts.yaml")],
        check=True,
        capture_output=True,
    )
    res = subprocess.run(
        [promtool, "test", "rules", str(ROOT / "deploy/alerts_test.yaml")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


BUDGET_USD = "0.002"


class Scraped(NamedTuple):
    api: str  # Prometheus base URL
    team: str  # id of the team whose key ran the workload (it has a daily budget)
    started: float  # epoch seconds when the workload began


async def _provision(url: str) -> tuple[str, str]:
    engine = make_engine(url)
    async with make_sessions(engine)() as s:
        team = await admin_ops.create_team(s, "dash")
        await admin_ops.set_budget(
            s, "team", "dash", "day", BUDGET_USD, [0.02, 0.05], downgrade_at=0.5
        )
        key = await admin_ops.create_key(s, "dash", may_override_tier=True)
    await engine.dispose()
    return key.key, team["id"]


def _wait_for(api: str, query: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            r = httpx.get(api + "/api/v1/query", params={"query": query})
            if r.status_code == 200 and r.json()["data"]["result"]:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"Prometheus returned nothing for {query} within {timeout_s} s")


@pytest.fixture(scope="module")
def scraped(
    sims: Sims, monkeypatch_module: pytest.MonkeyPatch, redis_url: str
) -> Iterator[Scraped]:
    prometheus = need("prometheus")
    work = Path(tempfile.mkdtemp(prefix="tiergate-prom-"))
    db = f"sqlite+aiosqlite:///{work}/ledger.db"
    upgrade(db)
    key, team = asyncio.run(_provision(db))
    catalog = demo_catalog(sims)
    prefix = f"tgdash:{uuid.uuid4().hex[:8]}:"
    app = create_app(
        Settings(
            log_level="warning",
            database_url=db,
            require_api_key=True,
            redis_url=redis_url,
            redis_prefix=prefix,
        ),
        catalog=catalog,
    )
    gw = BackgroundServer(app).start()
    port = free_port()
    (work / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "tiergate",
                        "static_configs": [{"targets": [gw.base_url.split("//")[1]]}],
                    }
                ],
            }
        )
    )
    prom = subprocess.Popen(
        [
            prometheus,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}"
    try:
        # Scraping runs through the whole workload, so gauges are seen changing (burn rates).
        _wait_for(api, 'up{job="tiergate"} == 1')
        started = time.time()
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0)
        user = [{"role": "user", "content": "Write a two-line thank-you note."}]
        for model in ("auto", "deepseek-chat", "deepseek-reasoner", "deepseek-v4-pro"):
            client.chat.completions.create(model=model, messages=user, max_tokens=8)
        list(
            client.chat.completions.create(
                model="deepseek-chat", messages=user, max_tokens=8, stream=True
            )
        )
        shared = [{"role": "system", "content": "Policy text. " * 600}, *user]
        for _ in range(3):  # repeats hit a replica's prefix cache
            client.chat.completions.create(model="deepseek-chat", messages=shared, max_tokens=8)
        for url in sims.flash:  # one failover to the hosted API
            httpx.post(url + "/sim/control", json={"fail_rate": 1.0, "fail_status": 503})
        client.chat.completions.create(model="deepseek-chat", messages=user, max_tokens=8)
        for url in sims.pro:  # the Pro pool down: one request planned past it (a spill-over)
            httpx.post(url + "/sim/control", json={"healthy": False})
        time.sleep(2.5)
        client.chat.completions.create(model="deepseek-v4-pro", messages=user, max_tokens=8)
        sims.reset()
        time.sleep(2.5)
        for i in range(200):  # until the tiny budget refuses; past half of it auto downgrades
            try:
                client.chat.completions.create(
                    model="auto" if i % 2 else "deepseek-v4-pro", messages=user, max_tokens=64
                )
            except openai.RateLimitError:
                break
            time.sleep(0.2)  # spend over several scrapes: a burn rate, not a single step
        _wait_for(api, "count(rate(tiergate_requests_total[1m]))")
        time.sleep(3)
        yield Scraped(api, team, started)
    finally:
        prom.terminate()
        prom.wait(10)
        gw.stop()
        shutil.rmtree(work, ignore_errors=True)
        r = redis.Redis.from_url(redis_url)
        for k in r.scan_iter(prefix + "*"):
            r.delete(k)
        r.close()


@pytest.mark.parametrize(("dashboard", "title", "expr"), panels(), ids=lambda v: str(v)[:40])
def test_every_panel_query_returns_series(
    scraped: Scraped, dashboard: str, title: str, expr: str
) -> None:
    r = httpx.get(scraped.api + "/api/v1/query", params={"query": expr})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", body
    assert body["data"]["result"], f"{dashboard}/{title}: no series for {expr}"


def _instant(api: str, expr: str) -> dict[str, float]:
    r = httpx.get(api + "/api/v1/query", params={"query": expr})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", body
    return {
        json.dumps(s["metric"], sort_keys=True): float(s["value"][1])
        for s in body["data"]["result"]
    }


def test_budget_gauges_agree_with_the_spend_counters(scraped: Scraped) -> None:
    sel = f'{{scope="team", scope_id="{scraped.team}", period="day"}}'
    limit = _instant(scraped.api, f"tiergate_budget_limit_nanodollars{sel}")
    spent = _instant(scraped.api, f"tiergate_budget_spent_nanodollars{sel}")
    cost = _instant(scraped.api, f'sum(tiergate_cost_nanodollars_total{{team="{scraped.team}"}})')
    assert list(limit.values()) == [float(BUDGET_USD) * 1e9]
    # Every request of the workload settled on this budget: the gauge is the counter's sum,
    # and the workload ran until the budget refused, so spend is close to the limit.
    assert list(spent.values()) == list(cost.values())
    assert 0.5 * float(BUDGET_USD) * 1e9 < next(iter(spent.values())) <= float(BUDGET_USD) * 1e9
    budgets = json.loads((ROOT / "helm/tiergate/files/dashboards/budgets.json").read_text())
    exhaustion = next(p for p in budgets["panels"] if p["title"].startswith("Projected"))
    left = _instant(scraped.api, exhaustion["targets"][0]["expr"])
    assert len(left) == 1 and 0 <= next(iter(left.values())) < 3600, left


def test_cost_dashboard_renders_from_scraped_data(scraped: Scraped, tmp_path: Path) -> None:
    out = Path(os.environ.get("TIERGATE_RENDER_DASHBOARD") or tmp_path / "cost.png")
    if not out.is_absolute():
        out = ROOT / out
    panels = render(scraped.api, out, start=scraped.started, end=time.time(), step=1.0)
    cost = json.loads((ROOT / "helm/tiergate/files/dashboards/cost.json").read_text())
    assert sorted(p.title for p in panels) == sorted(p["title"] for p in cost["panels"])
    assert all(p.series and any(s.values for s in p.series) for p in panels), [
        p.title for p in panels if not p.series
    ]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_dashboard_variables_are_defined() -> None:
    import re

    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        defined = {v["name"] for v in dash.get("templating", {}).get("list", [])}
        for p in dash["panels"]:
            for t in p["targets"]:
                used = {a or b for a, b in re.findall(r"\$(?:{(\w+)}|(\w+))", t["expr"])}
                assert used <= defined, f"{path.stem}/{p['title']}: {used - defined} undefined"


def test_cost_dashboard_filters_by_team(scraped: Scraped) -> None:
    cost = json.loads((ROOT / "helm/tiergate/files/dashboards/cost.json").read_text())
    by_team = next(p for p in cost["panels"] if p["title"].startswith("Spend by team"))
    expr = by_team["targets"][0]["expr"]
    assert "$team" in expr and "$key" in expr
    only = _instant(scraped.api, expand(expr, {"team": scraped.team}))
    assert [json.loads(k)["team"] for k in only] == [scraped.team]
    assert _instant(scraped.api, expand(expr, {"team": "no-such-team"})) == {}
