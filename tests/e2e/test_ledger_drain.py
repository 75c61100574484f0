"""External ledger drain: gateways only append to the stream; `tiergate ledger drain` writes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import Sims
from .test_money_e2e import (
    ROOT,
    Gateways,
    chat,
    drop_keys,
    money_env,
    new_key,
    sims_catalog,
    sql,
    wait_rows,
)


@pytest.fixture(scope="module")
def external(
    sims: Sims, pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateways]:
    config = sims_catalog(sims, tmp_path_factory.mktemp("drain"))
    prefix = f"tgd:{os.getpid()}:"
    gw = Gateways(money_env(pg_url, redis_url, prefix, TIERGATE_LEDGER_DRAIN="external"), config)
    gw.start(1)
    yield gw
    gw.stop()
    drop_keys(redis_url, prefix)


def drain(gw: Gateways, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "gateway.cli", "ledger", "drain", *args]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=gw.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def ids(responses: list[Any]) -> set[str]:
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return {r.headers["x-request-id"] for r in responses}


def test_gateway_leaves_the_stream_to_drainers(external: Gateways, pg_url: str) -> None:
    team_id, _, key = new_key(external, "drained-team")
    sent = ids([chat(external.urls[0], key) for _ in range(5)])
    time.sleep(1.5)  # an inline drainer would have written them by now
    assert sql(pg_url, "select count(*) from ledger where team_id = %s", team_id)[0][0] == 0

    once = drain(external, "--once")
    out, _ = once.communicate(timeout=60)
    assert once.returncode == 0, out
    rows = sql(pg_url, "select request_id, cost_nanos from ledger where team_id = %s", team_id)
    assert {r[0] for r in rows} == sent and all(r[1] > 0 for r in rows)

    worker = drain(external)
    try:
        more = ids([chat(external.urls[0], key, stream=False) for _ in range(3)])
        assert wait_rows(pg_url, team_id, 8) == 8
        got = {
            r[0] for r in sql(pg_url, "select request_id from ledger where team_id = %s", team_id)
        }
        assert got == sent | more
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out


def test_drain_refuses_without_redis(external: Gateways) -> None:
    env = {k: v for k, v in external.env.items() if k != "TIERGATE_REDIS_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "ledger", "drain", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "needs a Redis URL" in done.stderr
