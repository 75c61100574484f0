"""Without Redis the in-flight journal lives in the database (gateway/inflight_entries.py
``SqlEntries``): a gateway killed mid-stream has its requests billed, once, by the process
that comes back (the embedded default: one process, SQLite) or by another process on the
same PostgreSQL. The journal is written every 0.3 s and an entry not heard of for 2 s is a
dead process's."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
from .test_money_e2e import MASTER, ROOT, Gateways, chat, sims_catalog, sql

Query = Callable[..., list[Any]]


def sqlite_db(tmp_path: Path) -> tuple[str, Query]:
    path = tmp_path / "tiergate.db"
    cmd = [sys.executable, "-m", "gateway.cli", "db", "upgrade", "--database-url"]
    subprocess.run([*cmd, f"sqlite:///{path}"], cwd=ROOT, check=True, capture_output=True)

    def query(q: str, *args: object) -> list[Any]:
        with sqlite3.connect(path) as c:
            return c.execute(q.replace("%s", "?"), args).fetchall()

    return f"sqlite:///{path}", query


@pytest.fixture(params=["sqlite", "postgresql"])
def setup(
    request: pytest.FixtureRequest, sims: Sims, tmp_path: Path
) -> Iterator[tuple[Gateways, Query]]:
    """SQLite: one process (killed, then restarted). PostgreSQL: two (one killed)."""
    if request.param == "sqlite":
        url, query = sqlite_db(tmp_path)
    else:
        url = request.getfixturevalue("pg_url")

        def query(q: str, *args: object) -> list[Any]:
            return list(sql(url, q, *args))

    env = {k: v for k, v in os.environ.items() if k != "TIERGATE_REDIS_URL"}
    env.update(
        DEEPSEEK_API_KEY="sim-key",
        TIERGATE_DATABASE_URL=url,
        TIERGATE_MASTER_KEY=MASTER,
        TIERGATE_REQUIRE_API_KEY="true",
        TIERGATE_LOG_LEVEL="warning",
        TIERGATE_INFLIGHT_INTERVAL_S="0.3",
        TIERGATE_INFLIGHT_ORPHAN_S="2",
    )
    g = Gateways(env, sims_catalog(sims, tmp_path))
    g.start(1 if request.param == "sqlite" else 2)
    for u in sims.flash:
        sims.control(u, itl_s=STREAM_S / 120, default_output_tokens=120)
    yield g, query
    for u in sims.flash:
        sims.control(u, itl_s=0.0, default_output_tokens=24)
    g.stop()


def test_a_killed_process_requests_are_billed_once(setup: tuple[Gateways, Query]) -> None:
    gw, query = setup
    victim = len(gw.urls) - 1
    team_id, key, _ = team_with_budget(gw, f"no-redis-killed-{victim}")
    assert chat(gw.urls[victim], key).status_code == 200  # settled before the kill: once
    streams = kill_mid_stream(gw, key, victim)  # and a non-stream request: nothing to bill
    ids = [s.rid for s in streams]
    placeholders = ", ".join(["%s"] * len(ids))
    journaled = query(
        f"select count(*) from inflight_requests where request_id in ({placeholders})", *ids
    )
    assert journaled[0][0] == 3
    if victim == 0:
        restart(gw, 0)  # the only process: it settles its previous life's requests
    deadline = time.monotonic() + 30
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = query(
            "select request_id, status, route_reason, output_tokens, cache_miss_tokens,"
            " cost_nanos from ledger where team_id = %s",
            team_id,
        )
        if len(rows) >= 4:
            break
        time.sleep(0.2)
    by_id = {r[0]: r for r in rows}
    assert len(rows) == 4 and set(ids) < set(by_id), rows
    for s in streams:
        _, status, reason, output, prompt, cost = by_id[s.rid]
        assert status == 502 and str(reason).endswith("usage=estimated;orphaned"), reason
        assert int(prompt) > 0 and int(cost) > 0
        assert_billed_as_received(s, int(output))
    left = query(
        f"select count(*) from inflight_requests where request_id in ({placeholders})", *ids
    )
    assert left[0][0] == 0
    metrics = httpx.get(gw.urls[0] + "/metrics", timeout=10).text
    assert 'tiergate_orphaned_settlements_total{outcome="settled"} 3.0' in metrics
    time.sleep(1.0)  # another sweep or two: nothing more is billed
    count = query("select count(*) from ledger where team_id = %s", team_id)
    assert count[0][0] == 4
