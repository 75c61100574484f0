"""A gateway process killed while Redis is away: its in-flight journal went to the database
during the outage (gateway/inflight_entries.py ``RedisOrDatabase``), so its streams are
billed up to its last write, not up to the stale entries Redis kept from before it.

Two `tiergate serve` processes on PostgreSQL and a private Redis (append-only, so it comes
back with what it held); the journal is written every 0.3 s and an entry not heard of for
2 s is a dead process's.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Sims
from .redisproc import RedisProcess
from .test_holds import STREAM_S, Stream, assert_billed_as_received, team_with_budget
from .test_money_e2e import Gateways, money_env, sims_catalog, sql, wait_rows


@pytest.fixture
def pair(sims: Sims, pg_url: str, tmp_path: Path) -> Iterator[tuple[Gateways, RedisProcess]]:
    redis = RedisProcess(tmp_path / "redis", appendonly=True).start()
    env = money_env(
        pg_url,
        redis.url,
        f"tgj:{uuid.uuid4().hex[:6]}:",
        TIERGATE_INFLIGHT_INTERVAL_S="0.3",
        TIERGATE_INFLIGHT_ORPHAN_S="2",
    )
    gw = Gateways(env, sims_catalog(sims, tmp_path))
    for u in sims.flash:
        sims.control(u, itl_s=STREAM_S / 120, default_output_tokens=120)
    try:
        gw.start(2)
        yield gw, redis
    finally:
        for u in sims.flash:
            sims.control(u, itl_s=0.0, default_output_tokens=24)
        gw.stop()
        redis.kill()


def test_streams_of_a_process_killed_during_a_redis_outage_are_billed_as_received(
    pair: tuple[Gateways, RedisProcess], pg_url: str
) -> None:
    gw, redis = pair
    team_id, key, _ = team_with_budget(gw, f"redis-outage-{uuid.uuid4().hex[:6]}")
    streams = [Stream(gw.urls[1], key) for _ in range(3)]
    time.sleep(1.0)  # journaled in Redis
    redis.kill()
    time.sleep(1.5)  # the journal goes on, in the database
    gw.procs[1].send_signal(signal.SIGKILL)
    gw.procs[1].wait(10)
    assert all(s.done.wait(10) for s in streams)
    redis.start()  # back with the entries it had before the outage
    assert wait_rows(pg_url, team_id, 3, timeout=40) == 3
    rows = sql(
        pg_url,
        "select request_id, status, route_reason, output_tokens from ledger where team_id = %s",
        team_id,
    )
    assert sorted(r[0] for r in rows) == sorted(s.rid for s in streams if s.rid)
    by_id = {r[0]: r for r in rows}
    for s in streams:
        _, status, reason, output = by_id[s.rid]
        assert status == 502 and reason.endswith("usage=estimated;orphaned"), reason
        assert_billed_as_received(s, int(output))  # not the 1 s Redis kept
    time.sleep(3.0)  # later sweeps bill nothing more
    assert wait_rows(pg_url, team_id, 4, timeout=1) == 3
    ids = [s.rid for s in streams]
    left = sql(pg_url, "select request_id from inflight_requests where request_id = any(%s)", ids)
    assert left == []
