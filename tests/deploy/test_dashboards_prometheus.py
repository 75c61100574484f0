"""Every dashboard panel's PromQL, evaluated by a real Prometheus scraping a real gateway.

The gateway runs the embedded money path (SQLite ledger, a key with a tiny budget) in front
of the simulators; a workload exercises routing, streaming, failover, budget alerts and
refusals; Prometheus (Debian's package) scrapes it every second on loopback; then each
panel's query must succeed and return at least one series. Alert rules are checked and unit
tested with promtool.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from engines.asgi_thread import BackgroundServer, free_port
from gateway import admin_ops
from gateway.app import create_app
from gateway.db.engine import make_engine, make_sessions
from gateway.db.migrate import upgrade
from gateway.settings import Settings
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
                out.append((path.stem, p["title"], t["expr"]))
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


async def _provision(url: str) -> str:
    engine = make_engine(url)
    async with make_sessions(engine)() as s:
        await admin_ops.create_team(s, "dash")
        await admin_ops.set_budget(s, "team", "dash", "day", "0.002", [0.02, 0.05])
        key = await admin_ops.create_key(s, "dash", may_override_tier=True)
    await engine.dispose()
    return key.key


@pytest.fixture(scope="module")
def scraped(sims: Sims, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[str]:
    prometheus = need("prometheus")
    work = Path(tempfile.mkdtemp(prefix="tiergate-prom-"))
    db = f"sqlite+aiosqlite:///{work}/ledger.db"
    upgrade(db)
    key = asyncio.run(_provision(db))
    catalog = demo_catalog(sims)
    app = create_app(
        Settings(log_level="warning", database_url=db, require_api_key=True), catalog=catalog
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
    try:
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
        sims.reset()
        time.sleep(2.5)
        for _ in range(200):  # until the tiny budget refuses
            try:
                client.chat.completions.create(
                    model="deepseek-v4-pro", messages=user, max_tokens=64
                )
            except openai.RateLimitError:
                break
        api = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                r = httpx.get(
                    api + "/api/v1/query",
                    params={"query": "count(rate(tiergate_requests_total[1m]))"},
                )
                if r.status_code == 200 and r.json()["data"]["result"]:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        time.sleep(3)
        yield api
    finally:
        prom.terminate()
        prom.wait(10)
        gw.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize(("dashboard", "title", "expr"), panels(), ids=lambda v: str(v)[:40])
def test_every_panel_query_returns_series(
    scraped: str, dashboard: str, title: str, expr: str
) -> None:
    r = httpx.get(scraped + "/api/v1/query", params={"query": expr})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", body
    assert body["data"]["result"], f"{dashboard}/{title}: no series for {expr}"
