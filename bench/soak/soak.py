"""Soak: a steady request rate through the whole path for minutes, with a fault every minute.

    .venv/bin/python bench/soak/soak.py --minutes 10 --rate 40 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        --redis-url redis://127.0.0.1:6379/0

Processes: two simulated Flash replicas, one Pro replica and the hosted API (each its own
``tiergate sim`` process, with V4-like latencies scaled down), and one ``tiergate serve``
process with API keys, budgets in Redis, the ledger in PostgreSQL and Redis failure mode
``open``. Redis and PostgreSQL are reached through loopback TCP proxies so that the soak
can take them away without touching the real servers.

Load: open loop at ``--rate`` requests/s, a mix of OpenAI non-stream and stream, ``auto``,
``deepseek-reasoner`` and Anthropic Messages requests, through httpx.

Faults, one per minute in turn, each lasting ``--fault-s`` seconds: a Flash replica drops
every connection; the hosted API answers 429 to half its requests; a Flash replica process
is killed (SIGKILL) and started again; Redis is cut; PostgreSQL is cut; the Pro replica
answers 503.

Report, per minute: requests, errors (any non-2xx or transport error), error rate, p50/p99
latency, the gateway's RSS. At the end, after the ledger has caught up: spend in the ledger
(PostgreSQL) = spend in Prometheus (the gateway's /metrics) = the sum of the per-request
costs in the gateway's request log lines, for the soak's team.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "overhead"))
from serial import free_port, provision, wait_ready  # noqa: E402

from tests.e2e.tcpproxy import TcpProxy  # noqa: E402

NANOS = 1_000_000_000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def via(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


@dataclass
class Sim:
    name: str
    args: list[str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str]) -> None:
        cmd = [sys.executable, "-m", "gateway.cli", "sim", *self.args, "--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def control(self, **body: Any) -> None:
        httpx.post(self.url + "/sim/control", json=body, timeout=5)


@dataclass
class Outcome:
    t: float
    status: int
    ms: float


REQUESTS: list[tuple[float, str, dict[str, Any]]] = [
    (0.45, "/v1/chat/completions", {"model": "deepseek-chat"}),
    (0.20, "/v1/chat/completions", {"model": "deepseek-chat", "stream": True}),
    (0.15, "/v1/chat/completions", {"model": "auto"}),
    (0.10, "/v1/chat/completions", {"model": "deepseek-reasoner", "max_tokens": 64}),
    (0.10, "/v1/messages", {"model": "deepseek-chat"}),
]


def pick(rng: random.Random, i: int) -> tuple[str, dict[str, Any]]:
    x = rng.random()
    chosen = REQUESTS[-1]
    for entry in REQUESTS:
        if x < entry[0]:
            chosen = entry
            break
        x -= entry[0]
    words = " ".join(rng.choice(("plan", "sum", "why", "code")) for _ in range(20))
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": f"soak request {i}: {words}"}],
        "max_tokens": 32,
    }
    body.update(chosen[2])
    return chosen[1], body


async def one(c: httpx.AsyncClient, path: str, body: dict[str, Any], out: list[Outcome]) -> None:
    t = time.perf_counter()
    status = 0
    try:
        if body.get("stream"):
            async with c.stream("POST", path, json=body) as r:
                status = r.status_code
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and '"error"' in line:
                        status = 599  # an error event after a 200
        else:
            r = await c.post(path, json=body)
            status = r.status_code
    except httpx.HTTPError:
        status = 0
    out.append(Outcome(t, status, (time.perf_counter() - t) * 1000))


async def load(base: str, key: str, rate: float, seconds: float, out: list[Outcome]) -> None:
    rng = random.Random(7)
    headers = {"Authorization": f"Bearer {key}", "x-api-key": key}
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as c:
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            path, body = pick(rng, i)
            task = asyncio.create_task(one(c, path, body, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)


def metrics_spend(base: str, team: str) -> int:
    total = 0.0
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith("tiergate_cost_nanodollars_total{") and f'team="{team}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def log_spend(path: Path, team: str) -> tuple[int, int]:
    """Sum of ``cost_usd`` over the gateway's request log lines for ``team``, and their count."""
    nanos, n = 0, 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "request" and rec.get("team") == team:
            nanos += round(float(rec["cost_usd"]) * NANOS)
            n += 1
    return nanos, n


async def ledger_spend(url: str, team: str) -> tuple[int, int]:
    from sqlalchemy import text

    from gateway.db.engine import make_engine

    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT coalesce(sum(cost_nanos), 0), count(*) FROM ledger"
                        " WHERE team_id = :t AND kind = 'client'"
                    ),
                    {"t": team},
                )
            ).one()
    finally:
        await engine.dispose()
    return int(row[0]), int(row[1])


def team_of(database_url: str, key: str) -> str:
    async def go() -> str:
        import hashlib

        from sqlalchemy import text

        from gateway.db.engine import make_engine

        engine = make_engine(database_url)
        try:
            async with engine.connect() as conn:
                digest = hashlib.sha256(key.encode()).hexdigest()
                q = text("SELECT team_id FROM api_keys WHERE key_hash = :h")
                return str((await conn.execute(q, {"h": digest})).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(go())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=float, default=40)
    ap.add_argument("--fault-s", type=float, default=15)
    ap.add_argument("--latency-scale", type=float, default=0.05)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--out", default=str(ROOT / "var" / "bench" / "soak.json"))
    args = ap.parse_args()

    key = provision(args.database_url)
    team = team_of(args.database_url, key)
    pg, rd = urlsplit(args.database_url), urlsplit(args.redis_url)
    pg_proxy = TcpProxy(pg.hostname or "127.0.0.1", pg.port or 5432).start()
    rd_proxy = TcpProxy(rd.hostname or "127.0.0.1", rd.port or 6379).start()
    scale = ["--latency-scale", str(args.latency_scale)]
    flash = ["--preset", "flash", "--model", "deepseek-ai/DeepSeek-V4-Flash", *scale]
    sims = {
        "flash-0": Sim("flash-0", [*flash, "--replica-id", "flash-0"]),
        "flash-1": Sim("flash-1", [*flash, "--replica-id", "flash-1"]),
        "pro-0": Sim(
            "pro-0",
            ["--preset", "pro", "--model", "deepseek-ai/DeepSeek-V4-Pro", "--replica-id", "pro-0"]
            + scale,
        ),
        "hosted": Sim("hosted", ["--preset", "hosted", "--replica-id", "hosted", *scale]),
    }
    catalog = yaml.safe_load((ROOT / "gateway" / "examples" / "demo.yaml").read_text())
    catalog["backends"]["flash-local"]["replicas"] = [sims["flash-0"].url, sims["flash-1"].url]
    catalog["backends"]["pro-local"]["replicas"] = [sims["pro-0"].url]
    catalog["backends"]["hosted"]["base_url"] = sims["hosted"].url
    tmp = Path(tempfile.mkdtemp())
    (tmp / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    log_path = tmp / "gateway.log"
    env = {**os.environ, "DEEPSEEK_API_KEY": "sim"}
    for s in sims.values():
        s.start(env)
    gw_port = free_port()
    gw_env = {
        **env,
        "TIERGATE_DATABASE_URL": via(args.database_url, pg_proxy.port),
        "TIERGATE_REDIS_URL": via(args.redis_url, rd_proxy.port),
        "TIERGATE_REDIS_PREFIX": f"tgsoak{os.getpid()}:",
        "TIERGATE_REDIS_FAILURE_MODE": "open",
        "TIERGATE_REQUIRE_API_KEY": "true",
        "TIERGATE_LOG_LEVEL": "info",
        "TIERGATE_LOG_JSON": "true",
    }
    with log_path.open("wb") as log:
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(tmp / "catalog.yaml")]
            + ["--port", str(gw_port)],
            cwd=ROOT,
            env=gw_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{gw_port}"
    outcomes: list[Outcome] = []
    rss: list[tuple[float, float]] = []
    faults: list[dict[str, Any]] = []
    try:
        for s in sims.values():
            wait_ready(s.url + "/health")
        wait_ready(base + "/readyz")

        def restart_flash_1() -> None:
            p = sims["flash-1"].proc
            assert p is not None
            p.send_signal(signal.SIGKILL)
            p.wait()

        plan: list[tuple[str, Any, Any]] = [
            (
                "flash-0 drops connections",
                lambda: sims["flash-0"].control(fail_rate=1.0, fail_mode="disconnect"),
                lambda: sims["flash-0"].control(fail_rate=0.0, fail_mode=""),
            ),
            (
                "hosted answers 429 to half",
                lambda: sims["hosted"].control(fail_rate=0.5, fail_status=429),
                lambda: sims["hosted"].control(fail_rate=0.0),
            ),
            ("flash-1 killed and restarted", restart_flash_1, lambda: sims["flash-1"].start(env)),
            ("Redis cut", rd_proxy.cut, rd_proxy.restore),
            ("PostgreSQL cut", pg_proxy.cut, pg_proxy.restore),
            (
                "pro-0 answers 503",
                lambda: sims["pro-0"].control(fail_rate=1.0, fail_status=503),
                lambda: sims["pro-0"].control(fail_rate=0.0),
            ),
        ]
        seconds = args.minutes * 60
        t0 = time.perf_counter()

        async def orchestrate() -> None:
            runner = asyncio.create_task(load(base, key, args.rate, seconds, outcomes))
            minute = 0
            while not runner.done():
                await asyncio.sleep(1)
                now = time.perf_counter() - t0
                if int(now) % 5 == 0:
                    rss.append((now, rss_mb(gw.pid)))
                if now >= (minute + 1) * 60 - 45 and minute < int(seconds // 60):
                    name, start, stop = plan[minute % len(plan)]
                    faults.append({"minute": minute, "fault": name, "at_s": round(now, 1)})
                    await asyncio.to_thread(start)
                    await asyncio.sleep(args.fault_s)
                    await asyncio.to_thread(stop)
                    minute += 1
            await runner

        asyncio.run(orchestrate())
        # Let the ledger catch up: every successful request has its row.
        ok = sum(1 for o in outcomes if 200 <= o.status < 300)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            lsum, rows = asyncio.run(ledger_spend(args.database_url, team))
            if rows >= ok:
                break
            time.sleep(2)
        lsum, rows = asyncio.run(ledger_spend(args.database_url, team))
        msum = metrics_spend(base, team)
    finally:
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(30)
        except subprocess.TimeoutExpired:
            gw.kill()
        for s in sims.values():
            if s.proc is not None and s.proc.poll() is None:
                s.proc.terminate()
        pg_proxy.stop()
        rd_proxy.stop()
    gsum, lines = log_spend(log_path, team)

    t_start = min(o.t for o in outcomes)
    per_minute = []
    for m in range(int(args.minutes + 0.999)):
        xs = [o for o in outcomes if m * 60 <= o.t - t_start < (m + 1) * 60]
        if not xs:
            continue
        lat = sorted(o.ms for o in xs)
        errs = sum(1 for o in xs if not 200 <= o.status < 300)
        statuses: dict[str, int] = {}
        for o in xs:
            if not 200 <= o.status < 300:
                statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
        mem = [r for t, r in rss if m * 60 <= t < (m + 1) * 60]
        per_minute.append(
            {
                "minute": m,
                "requests": len(xs),
                "errors": errs,
                "error_rate": round(errs / len(xs), 4),
                "error_statuses": statuses,
                "p50_ms": round(lat[len(lat) // 2], 1),
                "p99_ms": round(lat[int(0.99 * (len(lat) - 1))], 1),
                "rss_mb": round(max(mem), 1) if mem else None,
            }
        )
    total = len(outcomes)
    errors = sum(1 for o in outcomes if not 200 <= o.status < 300)
    lat = sorted(o.ms for o in outcomes)
    res = {
        "minutes": args.minutes,
        "rate": args.rate,
        "requests": total,
        "ok": ok,
        "errors": errors,
        "error_rate": round(errors / total, 4) if total else 0.0,
        "p50_ms": round(lat[len(lat) // 2], 1),
        "p99_ms": round(lat[int(0.99 * (len(lat) - 1))], 1),
        "rss_mb": {"first": rss[0][1] if rss else None, "last": rss[-1][1] if rss else None},
        "faults": faults,
        "per_minute": per_minute,
        "spend_nanos": {"ledger": lsum, "prometheus": msum, "request_logs": gsum},
        "rows": {"ledger": rows, "request_log_lines": lines, "client_2xx": ok},
        "books_agree": lsum == msum == gsum,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"{'min':>3} {'reqs':>6} {'errors':>6} {'err%':>6} {'p50':>7} {'p99':>8} {'rss MB':>7}")
    names = {f["minute"]: f["fault"] for f in faults}
    for r in per_minute:
        print(
            f"{r['minute']:>3} {r['requests']:>6} {r['errors']:>6} {100 * r['error_rate']:>5.2f}%"
            f" {r['p50_ms']:>7} {r['p99_ms']:>8} {r['rss_mb'] or 0:>7}"
            f"  {names.get(r['minute'], '')} {r['error_statuses'] or ''}"
        )
    print(
        f"total {total} requests, {errors} errors ({100 * res['error_rate']:.2f}%),"
        f" p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms"
    )
    print(f"spend (nanodollars): {res['spend_nanos']}  rows: {res['rows']}")
    print(f"ledger = Prometheus = request logs: {res['books_agree']}")
    print(f"wrote {out}")
    return 0 if res["books_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
