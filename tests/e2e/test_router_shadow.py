"""Shadow mode through the real gateway: simulators, the SQLite ledger, the openai SDK.

Cheap-routed ``auto`` requests are replayed on Pro and judged by Pro (the Pro simulator is
told to answer with a verdict object); the label row, the shadow ledger rows, the budgets
and the client's responses are checked from the outside.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from engines.asgi_thread import BackgroundServer
from gateway import admin_ops
from gateway.admin_ops import parse_time
from gateway.app import create_app
from gateway.cli_common import CliError
from gateway.cli_router import export_labels
from gateway.db.engine import make_engine, make_sessions
from gateway.db.migrate import upgrade
from gateway.settings import Settings
from policies.router.data import jsonl_rows

from .conftest import Sims, demo_catalog

VERDICT = json.dumps({"better": "tie", "a_acceptable": True, "b_acceptable": True})
QUESTION = "hi there, what is the capital of France"


@dataclass
class ShadowGateway:
    server: BackgroundServer
    url: str
    db: str
    key: str
    key_id: str
    team_id: str

    def client(self) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0)

    def query(self, sql: str) -> list[Any]:
        engine = sa.create_engine(self.db.replace("+aiosqlite", ""))
        try:
            with engine.connect() as conn:
                return list(conn.execute(sa.text(sql)).all())
        finally:
            engine.dispose()

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_for(self, sql: str, n: int, timeout: float = 15.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        rows: list[Any] = []
        while time.monotonic() < deadline:
            rows = self.query(sql)
            if len(rows) >= n:
                return rows
            time.sleep(0.1)
        raise AssertionError(f"expected {n} rows of {sql!r}, got {rows}")


async def _seed(db: str, team_name: str = "shadow-team") -> tuple[str, str, str]:
    engine = make_engine(db)
    try:
        async with make_sessions(engine)() as s:
            team = await admin_ops.create_team(s, team_name)
            key = await admin_ops.create_key(s, team["id"])
            await admin_ops.set_budget(s, "key", key.id, "day", "5")
            await admin_ops.set_budget(s, "team", team["id"], "day", "5")
        return key.key, key.id, team["id"]
    finally:
        await engine.dispose()


def start(
    sims: Sims, tmp_path: Path, *, redis: tuple[str, str, str] | None = None, **shadow: Any
) -> ShadowGateway:
    """With ``redis`` = (PostgreSQL URL, Redis URL, key prefix): the production stores."""
    settings: dict[str, Any] = {}
    if redis is None:
        db = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
        upgrade(db)
        raw, key_id, team_id = asyncio.run(_seed(db))
    else:
        db, redis_url, prefix = redis
        settings = {"redis_url": redis_url, "redis_prefix": prefix}
        raw, key_id, team_id = asyncio.run(_seed(db, f"shadow-{prefix}"))
    catalog = demo_catalog(sims, shadow={"enabled": True, "share": 1.0, **shadow})
    app = create_app(
        Settings(
            log_level="warning",
            log_json=True,
            database_url=db,
            require_api_key=True,
            **settings,
        ),
        catalog=catalog,
    )
    server = BackgroundServer(app).start()
    gw = ShadowGateway(server, server.base_url, db, raw, key_id, team_id)
    gw.server = server
    return gw


@pytest.fixture
def pro_says_verdict(sims: Sims) -> Iterator[None]:
    for url in sims.pro:
        sims.control(url, reply=VERDICT)
    yield
    for url in sims.pro:
        sims.control(url, reply="")


def _pro_requests(sims: Sims) -> int:
    return sum(int(httpx.get(u + "/sim/stats", timeout=5).json()["requests"]) for u in sims.pro)


def _ask(gw: ShadowGateway, stream: bool) -> tuple[str, str, str]:
    """One cheap-routed request with the SDK; returns (request id, answer, served tier/mode)."""
    raw = gw.client().chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=64,
        stream=stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    )
    route = raw.headers["x-tiergate-route"]
    assert route.startswith("flash/") and "reason=auto:" in route
    rid = raw.headers["x-request-id"]
    parsed = raw.parse()
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    else:
        text = parsed.choices[0].message.content or ""
    return rid, text, "/".join(route.split("/")[:2])


def _gauge(gw: Any, name: str) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=5).text
    return float(next(ln for ln in text.splitlines() if ln.startswith(name + " ")).split()[-1])


def test_shadow_labels_spend_and_budgets(
    sims: Sims, tmp_path: Path, monkeypatch_module: pytest.MonkeyPatch, pro_says_verdict: None
) -> None:
    gw = start(sims, tmp_path)
    try:
        for stream in (False, True):
            before = _pro_requests(sims)
            rid, text, weak = _ask(gw, stream)
            assert text and "better" not in text  # the client got Flash's answer
            rows = gw.wait_for(
                "SELECT request_id, team_id, verdict, weak, strong, weak_ok, strong_ok, prompt,"
                f" features, shadow_cost_nanos, judge_cost_nanos FROM router_labels"
                f" WHERE request_id = '{rid}'",
                1,
            )
            assert len(rows) == 1
            label = rows[0]
            assert label.team_id == gw.team_id and label.verdict == "weak_ok"
            assert (label.weak, label.strong) == (weak, "pro/think-high")
            assert bool(label.weak_ok) and bool(label.strong_ok)
            assert label.prompt is None and len(json.loads(label.features)["dense"]) == 15
            assert label.shadow_cost_nanos > 0 and label.judge_cost_nanos > 0
            assert _pro_requests(sims) - before == 2  # one replay, one judge call
            shadow = gw.wait_for(
                "SELECT request_id, key_id, team_id, cost_nanos, route_reason FROM ledger"
                f" WHERE kind = 'shadow' AND route_reason LIKE '%{rid}'",
                2,
            )
            assert {r.request_id for r in shadow} == {rid + "-shadow", rid + "-judge"}
            assert all(r.key_id is None and r.team_id == gw.team_id for r in shadow)
            costs = {r.request_id: r.cost_nanos for r in shadow}
            assert costs[rid + "-shadow"] == label.shadow_cost_nanos
            assert costs[rid + "-judge"] == label.judge_cost_nanos
        # The client's rows are separate; budgets count them only.
        client = gw.wait_for("SELECT cost_nanos FROM ledger WHERE kind = 'client'", 2)
        client_cost = sum(r.cost_nanos for r in client)
        shadow_cost = gw.query("SELECT SUM(cost_nanos) FROM ledger WHERE kind = 'shadow'")[0][0]
        assert client_cost > 0 and shadow_cost > client_cost
        app_state = gw.server._server.config.app.state.tiergate  # type: ignore[attr-defined]
        counters = app_state.pipeline.accounting.store._counters
        budget_spent = {k.split(":")[0]: c.spent for k, c in counters.items()}
        assert len(budget_spent) == 2 and set(budget_spent.values()) == {client_cost}
        assert gw.metric("tiergate_shadow_requests_total", outcome="labelled") == 2
        assert gw.metric("tiergate_shadow_verdicts_total", verdict="weak_ok") == 2
        spent = gw.metric("tiergate_shadow_spend_nanodollars_total", team=gw.team_id)
        assert spent == shadow_cost
        # Online truth: both cheap answers were acceptable, so no quality was lost; both auto
        # requests went cheap, so always-strong would have cost what the replays cost.
        replays = gw.query("SELECT SUM(shadow_cost_nanos) FROM router_labels")[0][0]
        assert _gauge(gw, "tiergate_router_quality_kept") == 1.0
        saved = _gauge(gw, "tiergate_router_cost_saved")
        assert saved == pytest.approx(1 - client_cost / replays) and 0 < saved < 1
    finally:
        gw.server.stop()
    # Export and train on the labels.
    out = tmp_path / "labels.jsonl"
    assert asyncio.run(export_labels(gw.db, out)) == (2, 0)
    # a team by its name or its id; a time without a zone is UTC
    for team in ("shadow-team", gw.team_id):
        assert asyncio.run(export_labels(gw.db, out, team=team)) == (2, 0)
    since = parse_time("2000-01-01T00:00:00")
    assert asyncio.run(export_labels(gw.db, out, since=since, team="shadow-team")) == (2, 0)
    with pytest.raises(CliError, match="no team 'nosuch'"):
        asyncio.run(export_labels(gw.db, out, team="nosuch"))
    rows = jsonl_rows(out)
    assert all(set(r.correct.values()) == {True} and len(r.correct) == 2 for r in rows)
    assert all(r.features is not None and r.source == "shadow" for r in rows)
    from gateway.cli import main

    assert (
        main(
            [
                "router",
                "train",
                "--labels",
                str(out),
                "--shared-dir",
                "",
                "--steps",
                "5",
                "--out",
                str(tmp_path / "w"),
            ]
        )
        == 0
    )
    # the labels teach a pair model (two labels that agree: it keeps the generic router)
    from policies.router import Router

    trained = Router.load(tmp_path / "w" / "router_pair.npz")
    assert trained.pair is not None and trained.meta["chosen"] == "prior"
    assert {trained.meta["weak"], trained.meta["strong"]} == {weak, "pro/think-high"}


def test_pro_without_thinking_counts_as_cheap_in_the_online_truth(
    sims: Sims, tmp_path: Path, monkeypatch_module: pytest.MonkeyPatch, pro_says_verdict: None
) -> None:
    """Shadow mode replays a request ``auto`` served on Pro without thinking (the client
    turned reasoning off) on the strong option, Pro thinking: it was cheaper than the
    strong one. The online truth must count it on the same side, or the cost saved would
    be computed from a ratio of one set of requests applied to another."""
    gw = start(sims, tmp_path)
    try:
        raw = gw.client().chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": "Prove the claim below. " + "x " * 40_000}],
            max_tokens=64,
            reasoning_effort="none",  # type: ignore[arg-type]
        )
        assert raw.headers["x-tiergate-route"].startswith("pro/non-thinking/"), raw.headers
        rid = raw.headers["x-request-id"]
        gw.wait_for(f"SELECT verdict FROM router_labels WHERE request_id = '{rid}'", 1)
        short, _, weak = _ask(gw, False)
        assert weak.startswith("flash/")
        gw.wait_for(f"SELECT verdict FROM router_labels WHERE request_id = '{short}'", 1)
        deadline = time.monotonic() + 10  # the estimate takes a label after storing it
        while gw.metric("tiergate_shadow_requests_total", outcome="labelled") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # the ledger is written in batches: wait for both client rows
        client = sum(
            r.cost_nanos
            for r in gw.wait_for("SELECT cost_nanos FROM ledger WHERE kind = 'client'", 2)
        )
        replays = gw.query("SELECT SUM(shadow_cost_nanos) FROM router_labels")[0][0]
        # Both auto requests went cheap and both were labelled: always-strong would have
        # cost what the two replays cost.
        assert _gauge(gw, "tiergate_router_quality_kept") == 1.0
        assert _gauge(gw, "tiergate_router_cost_saved") == pytest.approx(1 - client / replays)
    finally:
        gw.server.stop()


def test_store_prompts_opt_in(
    sims: Sims, tmp_path: Path, monkeypatch_module: pytest.MonkeyPatch, pro_says_verdict: None
) -> None:
    gw = start(sims, tmp_path, store_prompts=True)
    try:
        rid, _, _ = _ask(gw, False)
        rows = gw.wait_for(f"SELECT prompt FROM router_labels WHERE request_id = '{rid}'", 1)
        assert rows[0].prompt == QUESTION
    finally:
        gw.server.stop()


def test_no_shadow_call_when_the_budget_is_spent(
    sims: Sims, tmp_path: Path, monkeypatch_module: pytest.MonkeyPatch, pro_says_verdict: None
) -> None:
    gw = start(sims, tmp_path, budget_nanos_per_day=1000)
    try:
        before = _pro_requests(sims)
        _, text, _ = _ask(gw, False)
        assert text
        deadline = time.monotonic() + 5
        while gw.metric("tiergate_shadow_requests_total", outcome="over_budget") < 1:
            assert time.monotonic() < deadline, "the over-budget sample was never counted"
            time.sleep(0.05)
        time.sleep(0.5)
        assert _pro_requests(sims) == before
        assert gw.query("SELECT COUNT(*) FROM router_labels")[0][0] == 0
        assert gw.query("SELECT COUNT(*) FROM ledger WHERE kind = 'shadow'")[0][0] == 0
    finally:
        gw.server.stop()


def test_shadow_failure_never_reaches_the_client(
    sims: Sims, tmp_path: Path, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    gw = start(sims, tmp_path)
    for url in sims.pro:
        sims.control(url, fail_rate=1.0, fail_status=500)
    try:
        for stream in (False, True):
            _, text, _ = _ask(gw, stream)
            assert text
        deadline = time.monotonic() + 5
        while gw.metric("tiergate_shadow_requests_total", outcome="failed") < 2:
            assert time.monotonic() < deadline, "the failed samples were never counted"
            time.sleep(0.05)
        assert gw.query("SELECT COUNT(*) FROM router_labels")[0][0] == 0
        assert gw.query("SELECT COUNT(*) FROM ledger WHERE kind = 'shadow'")[0][0] == 0
        # The failed replays left no reservation behind in the shadow budget.
        app_state = gw.server._server.config.app.state.tiergate  # type: ignore[attr-defined]
        store = app_state.pipeline.shadow.store
        assert all(not c.held for c in store._counters.values())
    finally:
        for url in sims.pro:
            sims.control(url, fail_rate=0.0)
        gw.server.stop()


def test_with_redis_the_shadow_budget_is_shared_and_exact(
    sims: Sims,
    tmp_path: Path,
    monkeypatch_module: pytest.MonkeyPatch,
    pro_says_verdict: None,
    pg_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    import redis

    gw = start(sims, tmp_path, redis=(pg_url, redis_url, redis_prefix))
    try:
        rid, text, _ = _ask(gw, False)
        assert text
        gw.wait_for(f"SELECT 1 FROM router_labels WHERE request_id = '{rid}'", 1)
        shadow = gw.wait_for(
            f"SELECT cost_nanos FROM ledger WHERE kind = 'shadow' AND route_reason LIKE '%{rid}'",
            2,
        )
        client = gw.wait_for(f"SELECT cost_nanos FROM ledger WHERE request_id = '{rid}'", 1)
        shadow_cost, client_cost = sum(r.cost_nanos for r in shadow), client[0].cost_nanos
        r = redis.Redis.from_url(redis_url)
        try:

            def counters(pattern: str) -> dict[str, tuple[int, int]]:
                out = {}
                for k in r.scan_iter(pattern):
                    if not k.endswith((b":z", b":h")):
                        spent, held = r.hmget(k, "spent", "reserved")
                        out[k.decode()] = (int(spent or 0), int(held or 0))
                return out

            # Settlement in Redis precedes the ledger rows read above. The shadow budget
            # lives in Redis (shared by every gateway process): it holds exactly the two
            # shadow calls' cost and no reservation.
            assert list(counters(redis_prefix + "shadow:b:*").values()) == [(shadow_cost, 0)]
            # The key's and the team's budgets count the client's request only.
            client_budgets = counters(redis_prefix + "b:*")
            assert len(client_budgets) == 2
            assert set(client_budgets.values()) == {(client_cost, 0)}
        finally:
            r.close()
    finally:
        gw.server.stop()
