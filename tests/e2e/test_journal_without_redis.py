"""Without Redis (the embedded default: one process, SQLite): a gateway killed mid-stream
bills the requests it was serving when it comes back, from the in-flight journal it kept in
the database (gateway/inflight_entries.py ``SqlEntries``). The journal is written every
0.3 s and an entry not heard of for 2 s is a dead process's."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Sims
from .test_holds import (
    STREAM_S,
    assert_billed_as_received,
    kill_mid_stream,
    restart,
    team_with_budget,
)
from .test_money_e2e import MASTER, ROOT, Gateways, chat, sims_catalog


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "tiergate.db"
    cmd = [sys.executable, "-m", "gateway.cli", "db", "upgrade", "--database-url"]
    subprocess.run([*cmd, f"sqlite:///{path}"], cwd=ROOT, check=True, capture_output=True)
    return path


@pytest.fixture
def gw(sims: Sims, db: Path, tmp_path: Path) -> Iterator[Gateways]:
    env = {k: v for k, v in os.environ.items() if k != "TIERGATE_REDIS_URL"}
    env.update(
        DEEPSEEK_API_KEY="sim-key",
        TIERGATE_DATABASE_URL=f"sqlite:///{db}",
        TIERGATE_MASTER_KEY=MASTER,
        TIERGATE_REQUIRE_API_KEY="true",
        TIERGATE_LOG_LEVEL="warning",
        TIERGATE_INFLIGHT_INTERVAL_S="0.3",
        TIERGATE_INFLIGHT_ORPHAN_S="2",
    )
    g = Gateways(env, sims_catalog(sims, tmp_path))
    g.start(1)
    for url in sims.flash:
        sims.control(url, itl_s=STREAM_S / 120, default_output_tokens=120)
    yield g
    for url in sims.flash:
        sims.control(url, itl_s=0.0, default_output_tokens=24)
    g.stop()


def query(db: Path, q: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as c:
        return c.execute(q, args).fetchall()


def test_a_killed_process_bills_its_requests_when_it_comes_back(gw: Gateways, db: Path) -> None:
    team_id, key, _ = team_with_budget(gw, "sqlite-killed-team")
    assert chat(gw.urls[0], key).status_code == 200  # settled before the kill: billed once
    streams = kill_mid_stream(gw, key, 0)  # and a non-stream request: nothing to bill
    assert query(db, "select count(*) from inflight_requests")[0][0] == 3
    restart(gw, 0)
    deadline = time.monotonic() + 30
    rows: list[tuple[object, ...]] = []
    while time.monotonic() < deadline:
        rows = query(
            db,
            "select request_id, status, route_reason, output_tokens, cache_miss_tokens,"
            " cost_nanos from ledger where team_id = ?",
            team_id,
        )
        if len(rows) >= 4:
            break
        time.sleep(0.2)
    by_id = {r[0]: r for r in rows}
    assert len(rows) == 4 and {s.rid for s in streams} < set(by_id), rows
    for s in streams:
        _, status, reason, output, prompt, cost = by_id[s.rid]
        assert status == 502 and str(reason).endswith("usage=estimated;orphaned"), reason
        assert int(prompt) > 0 and int(cost) > 0  # type: ignore[call-overload]
        assert_billed_as_received(s, int(output))  # type: ignore[call-overload]
    assert query(db, "select count(*) from inflight_requests")[0][0] == 0
    metrics = httpx.get(gw.urls[0] + "/metrics", timeout=10).text
    assert 'tiergate_orphaned_settlements_total{outcome="settled"} 3.0' in metrics
    time.sleep(1.0)  # another sweep or two: nothing more is billed
    assert query(db, "select count(*) from ledger where team_id = ?", team_id)[0][0] == 4
