"""Holds: what a request reserved stays held, in the windows it was reserved in, while it runs.

Two `tiergate serve` processes share Redis and PostgreSQL, with the reservation TTL scaled
down to 2 s and budget leases off (every reservation is visible in Redis). The Flash
simulators stream slowly, so a stream outlives the TTL. The in-flight journal is written
every 0.3 s and an entry not heard of for 2 s is a dead process's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
import redis

from .conftest import Sims
from .test_money_e2e import (
    ROOT,
    Gateways,
    admin,
    drop_keys,
    money_env,
    new_key,
    sims_catalog,
    sql,
    wait_ready,
    wait_rows,
)

TTL_S = 2
STREAM_S = 6  # 120 tokens at 50 ms


@pytest.fixture(scope="module")
def gw(
    sims: Sims, pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateways]:
    config = sims_catalog(sims, tmp_path_factory.mktemp("holds"))
    prefix = f"tgo:{os.getpid()}:"
    env = money_env(
        pg_url,
        redis_url,
        prefix,
        TIERGATE_RESERVATION_TTL_S=str(TTL_S),
        TIERGATE_BUDGET_LEASE_SHARE="0",
        TIERGATE_INFLIGHT_INTERVAL_S="0.3",
        TIERGATE_INFLIGHT_ORPHAN_S="2",
    )
    g = Gateways(env, config)
    g.start(2)
    yield g
    g.stop()
    drop_keys(redis_url, prefix)


@pytest.fixture
def slow_flash(sims: Sims) -> Iterator[None]:
    for url in sims.flash:
        sims.control(url, itl_s=STREAM_S / 120, default_output_tokens=120)
    yield
    for url in sims.flash:
        sims.control(url, itl_s=0.0, default_output_tokens=24)


@pytest.fixture
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


def team_with_budget(gw: Gateways, name: str, limit_usd: float = 100.0) -> tuple[str, str, str]:
    """(team id, key, budget id) of a new team with a daily budget."""
    team_id, _, key = new_key(gw, name)
    r = admin(
        gw,
        "PUT",
        "/budgets",
        {"scope": "team", "scope_id": name, "period": "day", "limit_usd": limit_usd},
    )
    assert r.status_code == 200, r.text
    return team_id, key, r.json()["id"]


class Stream:
    """A streamed chat request read to its end in a thread; ``rid`` once the head arrived."""

    def __init__(self, url: str, key: str) -> None:
        self.rid: str | None = None
        self.head = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.body = b""
        self._args = (url, key)
        threading.Thread(target=self._run, daemon=True).start()
        assert self.head.wait(30), "no response head"

    def _run(self) -> None:
        url, key = self._args
        body = {
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": "tell me a long story"}],
            "max_tokens": 120,
            "stream": True,
        }
        try:
            with httpx.stream(
                "POST",
                url + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            ) as r:
                self.rid = r.headers.get("x-request-id")
                self.head.set()
                for chunk in r.iter_bytes():
                    self.body += chunk
        except BaseException as exc:
            self.error = exc
        finally:
            self.head.set()
            self.done.set()


def holding(r: redis.Redis, prefix: str, rid: str) -> list[float | None]:
    """The expiry of the request's hold in every budget window that holds it."""
    return [
        r.zscore(hkey[:-2] + b":z", rid)
        for hkey in r.scan_iter(prefix + "b:*:h")
        if r.hexists(hkey, rid)
    ]


def counter(r: redis.Redis, prefix: str, budget_id: str) -> dict[str, int]:
    """The (only) window counter of a budget: spent, reserved, leased."""
    keys = [k for k in r.scan_iter(f"{prefix}b:{budget_id}:*") if not k.endswith((b":z", b":h"))]
    assert len(keys) == 1, keys
    return {k.decode(): int(v) for k, v in r.hgetall(keys[0]).items()}


def test_a_live_stream_keeps_its_hold_past_the_ttl(
    gw: Gateways, rdb: redis.Redis, slow_flash: None
) -> None:
    prefix = gw.env["TIERGATE_REDIS_PREFIX"]
    _, key, _ = team_with_budget(gw, "long-stream-team")
    s = Stream(gw.urls[0], key)
    assert s.rid
    seen = []
    while not s.done.wait(0.25):
        expiries = holding(rdb, prefix, s.rid)
        if s.done.is_set():
            break  # settled meanwhile
        assert expiries, "the hold of a running stream was dropped"
        assert all(e is not None and e >= time.time() - 1 for e in expiries), "it expired"
        seen.append(time.monotonic())
    assert s.error is None and b"[DONE]" in s.body
    assert seen[-1] - seen[0] > 2 * TTL_S  # held for well past the TTL
    assert holding(rdb, prefix, s.rid) == []  # settled: nothing held any more


def test_an_admin_change_mid_flight_settles_in_the_windows_reserved_in(
    gw: Gateways, rdb: redis.Redis, pg_url: str, slow_flash: None
) -> None:
    prefix = gw.env["TIERGATE_REDIS_PREFIX"]
    team_id, key, budget_id = team_with_budget(gw, "admin-change-team", 100.0)
    s = Stream(gw.urls[0], key)
    r = admin(
        gw,
        "PUT",
        "/budgets",
        {"scope": "team", "scope_id": "admin-change-team", "period": "day", "limit_usd": 50.0},
    )
    assert r.status_code == 200, r.text
    assert s.done.wait(30) and s.error is None
    assert wait_rows(pg_url, team_id, 1) == 1
    cost = sql(pg_url, "select cost_nanos from ledger where team_id = %s", team_id)[0][0]
    c = counter(rdb, prefix, budget_id)
    assert c.get("spent") == cost and c.get("reserved", 0) == 0, c


def test_a_killed_process_requests_are_billed_by_another(
    gw: Gateways, rdb: redis.Redis, pg_url: str, slow_flash: None
) -> None:
    """SIGKILL mid-stream: a surviving process settles each request from the journal, billed
    the text it had streamed (at most one journal interval behind what the client got)."""
    prefix = gw.env["TIERGATE_REDIS_PREFIX"]
    team_id, key, budget_id = team_with_budget(gw, "killed-process-team")
    streams = kill_mid_stream(gw, key, 1)
    assert wait_rows(pg_url, team_id, 3, timeout=30) == 3
    rows = sql(
        pg_url,
        "select request_id, status, route_reason, output_tokens, cache_miss_tokens, cost_nanos"
        " from ledger where team_id = %s",
        team_id,
    )
    by_id = {r[0]: r for r in rows}
    assert set(by_id) == {s.rid for s in streams}
    for s in streams:
        _, status, reason, output, prompt, cost = by_id[s.rid]
        assert status == 502 and reason.endswith("usage=estimated;orphaned"), (status, reason)
        assert prompt > 0 and cost > 0
        assert_billed_as_received(s, output)
    deadline = time.monotonic() + 10
    while rdb.hlen(prefix + "inflight") and time.monotonic() < deadline:
        time.sleep(0.2)  # the non-stream request's entry: released, not billed
    c = counter(rdb, prefix, budget_id)
    assert c.get("spent") == sum(r[5] for r in rows) and c.get("reserved", 0) == 0, c
    assert rdb.hlen(prefix + "inflight") == 0 and rdb.zcard(prefix + "inflight:seen") == 0
    assert wait_rows(pg_url, team_id, 4, timeout=1) == 3
    metrics = httpx.get(gw.urls[0] + "/metrics", timeout=10).text
    assert 'tiergate_orphaned_settlements_total{outcome="settled"} 3.0' in metrics
    assert 'tiergate_orphaned_settlements_total{outcome="released"} 1.0' in metrics
    restart(gw, 1)


def kill_mid_stream(gw: Gateways, key: str, i: int) -> list[Stream]:
    """Three streams and one non-stream request (its answer not begun) on process ``i``,
    which is killed with SIGKILL after about 50 of each stream's 120 tokens."""
    streams = [Stream(gw.urls[i], key) for _ in range(3)]
    waiting = threading.Thread(target=_ask, args=(gw.urls[i], key), daemon=True)
    waiting.start()
    time.sleep(2.5)
    gw.procs[i].send_signal(signal.SIGKILL)
    gw.procs[i].wait(10)
    for s in streams:
        assert s.done.wait(10)
    return streams


def assert_billed_as_received(s: Stream, output: int) -> None:
    """Billed what the client received, less at most a journal interval (0.3 s) of it."""
    text = "".join(
        orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in s.body.decode().splitlines()
        if line.startswith("data: {")
    )
    assert len(text) / 4 - 12 <= output <= len(text) / 4 + 1, (output, len(text))


def restart(gw: Gateways, i: int) -> None:
    port = int(gw.urls[i].rsplit(":", 1)[1])
    gw.spawn(port)
    wait_ready(gw.urls[i])


def _long_answer(url: str, key: str, timeout: float = 60.0) -> httpx.Response:
    """A non-stream request whose answer takes the slow stream's 6 s."""
    return httpx.post(
        url + "/v1/chat/completions",
        json={
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": "a long story, all at once"}],
            "max_tokens": 120,
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=timeout,
    )


def _ask(url: str, key: str) -> None:
    """``_long_answer``, any failure ignored (its process is killed meanwhile)."""
    with contextlib.suppress(httpx.HTTPError):
        _long_answer(url, key)


def test_a_stalled_process_settlement_replaces_the_journal_one(
    gw: Gateways, rdb: redis.Redis, pg_url: str, slow_flash: None
) -> None:
    """SIGSTOP past TIERGATE_INFLIGHT_ORPHAN_S: another process bills the streams from the
    journal; after SIGCONT they finish, and their own settlements replace those rows and
    charges (the ledger and the budget end with the real usage, once)."""
    prefix = gw.env["TIERGATE_REDIS_PREFIX"]
    team_id, key, budget_id = team_with_budget(gw, "stalled-process-team")
    streams = [Stream(gw.urls[1], key) for _ in range(2)]
    time.sleep(1.5)
    gw.procs[1].send_signal(signal.SIGSTOP)
    try:
        assert wait_rows(pg_url, team_id, 2, timeout=15) == 2
        reasons = sql(pg_url, "select route_reason from ledger where team_id = %s", team_id)
        assert all(r[0].endswith("orphaned") for r in reasons), reasons
    finally:
        gw.procs[1].send_signal(signal.SIGCONT)
    for s in streams:
        assert s.done.wait(30) and s.error is None and b"[DONE]" in s.body
    deadline = time.monotonic() + 15
    rows: list[tuple[str, int, str, int, int]] = []
    while time.monotonic() < deadline:
        rows = sql(
            pg_url,
            "select request_id, status, route_reason, output_tokens, cost_nanos from ledger"
            " where team_id = %s",
            team_id,
        )
        if all(r[1] == 200 for r in rows):
            break
        time.sleep(0.2)
    assert sorted(r[0] for r in rows) == sorted(s.rid for s in streams if s.rid)
    for _, status, reason, output, _ in rows:
        assert status == 200 and "orphaned" not in reason and output == 120, (status, reason)
    c = counter(rdb, prefix, budget_id)
    assert c.get("spent") == sum(r[4] for r in rows) and c.get("reserved", 0) == 0, c
    metrics = httpx.get(gw.urls[1] + "/metrics", timeout=10).text
    assert "tiergate_orphaned_settlements_replaced_total 2.0" in metrics


def _running(sims: Sims) -> float:
    """Requests the Flash simulators are generating now (their vLLM gauge)."""
    total = 0.0
    for url in sims.flash:
        for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
            if line.startswith("vllm:num_requests_running"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_client_that_leaves_before_the_answer_frees_its_hold_and_the_upstream(
    gw: Gateways, rdb: redis.Redis, pg_url: str, sims: Sims, slow_flash: None
) -> None:
    """A non-stream client times out after 1 s of a 6 s answer: the gateway cancels the
    upstream call (the replica stops generating), releases the hold at once, bills
    nothing, and counts a 499."""
    prefix = gw.env["TIERGATE_REDIS_PREFIX"]
    team_id, key, budget_id = team_with_budget(gw, "leaving-client-team")
    with pytest.raises(httpx.TimeoutException):
        _long_answer(gw.urls[0], key, timeout=1.0)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        c = counter(rdb, prefix, budget_id)
        if c.get("reserved", 0) == 0 and _running(sims) == 0:
            break
        time.sleep(0.1)
    assert c.get("reserved", 0) == 0 and c.get("spent", 0) == 0, c
    assert _running(sims) == 0  # the replica was told: vLLM aborts a request whose client left
    assert wait_rows(pg_url, team_id, 1, timeout=2) == 0
    metrics = httpx.get(gw.urls[0] + "/metrics", timeout=10).text
    assert any(
        line.startswith("tiergate_requests_total")
        and 'status="499"' in line
        and 'team="' + team_id + '"' in line
        for line in metrics.splitlines()
    ), "a 499 counted for the team"


def test_a_dead_process_hold_expires_after_the_ttl(
    gw: Gateways, rdb: redis.Redis, slow_flash: None
) -> None:
    prefix = gw.env["TIERGATE_REDIS_PREFIX"]
    _, key, _ = team_with_budget(gw, "dead-process-team")
    s = Stream(gw.urls[1], key)
    assert s.rid and holding(rdb, prefix, s.rid)
    gw.procs[1].send_signal(signal.SIGKILL)
    gw.procs[1].wait(10)
    deadline = time.monotonic() + 3 * TTL_S + 5
    while time.monotonic() < deadline:
        if all(e is not None and e < time.time() for e in holding(rdb, prefix, s.rid)):
            break
        time.sleep(0.2)
    expiries = holding(rdb, prefix, s.rid)
    assert all(e is not None and e < time.time() for e in expiries), expiries
    # The next reservation in that window drops it.
    r = httpx.post(
        gw.urls[0] + "/v1/chat/completions",
        json={
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert holding(rdb, prefix, s.rid) == []


def test_a_process_that_cannot_bind_its_port_exits(gw: Gateways) -> None:
    """A second `tiergate serve` on a port in use stops its background work (Redis watchers,
    the journal) and exits with an error, every time: a cancellation redis-py swallowed
    used to keep its shutdown waiting forever, SIGTERM included."""
    port = gw.urls[0].rsplit(":", 1)[1]
    for _ in range(3):
        proc = subprocess.Popen(
            gw.command(int(port)),
            cwd=ROOT,
            env=gw.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _, err = proc.communicate(timeout=40)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode != 0 and b"address already in use" in err, err[-2000:]


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_half_closes_after_its_body_is_a_quiet_499(
    gw: Gateways, stream: bool
) -> None:
    """Some clients shut their sending side once the body is out; the server takes that
    for a disconnect, here while the key is being checked, before the body is read. Nobody
    is left to answer: a 499 counted, never a 500 or a traceback in the log."""
    _, key, _ = team_with_budget(gw, f"half-close-{stream}")
    port = int(gw.urls[0].rsplit(":", 1)[1])
    body = orjson.dumps(
        {
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
            "stream": stream,
        }
    )
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    logs = sorted(gw.logs.glob("gateway-*.log"))
    before = sum(len(p.read_bytes()) for p in logs)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head + body)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            with contextlib.suppress(OSError):
                while sock.recv(65536):
                    pass
    time.sleep(0.5)
    new = b"".join(p.read_bytes() for p in logs)[before:]
    assert b"unhandled_error" not in new and b"Traceback" not in new, new[-3000:]
    metrics = httpx.get(gw.urls[0] + "/metrics", timeout=10).text
    assert not any(
        line.startswith("tiergate_requests_total") and 'status="500"' in line
        for line in metrics.splitlines()
    )
