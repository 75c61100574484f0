"""Serial added latency of the gateway over direct-to-simulator (one request at a time).

Starts a zero-latency vLLM-mode simulator and the gateway as separate processes (the
gateway pinned to core 0, simulator and client to core 1 where taskset exists), sends N
identical non-stream chat requests directly and N through the gateway, alternating in
blocks, and reports p50/p90/p99 of each and the added latency. Writes a JSON result.

    .venv/bin/python bench/overhead/serial.py --requests 1000 --out var/bench/serial.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
BODY = {
    "model": "deepseek-chat",
    "messages": [{"role": "user", "content": "Say hello in one word."}],
    "max_tokens": 16,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cmd: list[str], core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *cmd]
    return cmd


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready")


def percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    return {
        "p50": statistics.median(xs),
        "p90": q(0.90),
        "p99": q(0.99),
        "mean": statistics.fmean(xs),
    }


def provision(url: str) -> str:
    """Migrate, then a team with day and month budgets and one key: the full money path."""
    import asyncio

    from gateway import admin_ops
    from gateway.db.engine import make_engine, make_sessions
    from gateway.db.migrate import upgrade

    upgrade(url)

    async def go() -> str:
        engine = make_engine(url)
        async with make_sessions(engine)() as s:
            team = f"bench-{os.getpid()}-{time.time_ns()}"
            await admin_ops.create_team(s, team)
            await admin_ops.set_budget(s, "team", team, "day", "1000", [0.8])
            await admin_ops.set_budget(s, "team", team, "month", "10000")
            key = await admin_ops.create_key(s, team)
        await engine.dispose()
        return key.key

    return asyncio.run(go())


def measure(
    client: httpx.Client,
    url: str,
    body: dict[str, object],
    n: int,
    headers: dict[str, str] | None = None,
    gap_s: float = 0.0,
) -> list[float]:
    out = []
    for _ in range(n):
        if gap_s:
            time.sleep(gap_s)  # the next request finds the server idle, as between real calls
        t = time.perf_counter()
        r = client.post(url, json=body, headers=headers or {})
        out.append((time.perf_counter() - t) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
    return out


LITELLM_VENV = ROOT / "var" / "litellm-venv"
LITELLM_KEY = "sk-bench-" + "7f3a9c2e5b1d4f6a8c0e2b4d6f8a1c3e"


def litellm_proxy(sim_port: int, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """LiteLLM's proxy as BENCHMARKING.md says: pinned, own venv, no callbacks, no retries."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        pip = str(LITELLM_VENV / "bin" / "pip")
        subprocess.run(
            [pip, "install", "-q", "litellm[proxy]==1.106.2", "opentelemetry-sdk"], check=True
        )
    upstream = {
        "model": "openai/deepseek-ai/DeepSeek-V4-Flash",
        "api_base": f"http://127.0.0.1:{sim_port}/v1",
        "api_key": "sim",
    }
    cfg = {
        "model_list": [{"model_name": "deepseek-chat", "litellm_params": upstream}],
        "litellm_settings": {"callbacks": [], "num_retries": 0},
        "general_settings": {"master_key": LITELLM_KEY},
    }
    path = Path(tempfile.mkdtemp()) / "litellm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    lenv = {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    cmd = [str(exe), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(
        pinned([*cmd, "--num_workers", "1"], 0),
        env=lenv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start(cmd: list[str], core: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        pinned(cmd, core), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="pause before each timed request (0: back to back, each request arriving while "
        "the server may still finish the previous one's work)",
    )
    ap.add_argument("--out", default=str(ROOT / "var" / "bench" / "serial.json"))
    ap.add_argument("--database-url", help="run the money path: keys, budgets, ledger in this DB")
    ap.add_argument("--redis-url", help="with --database-url: budgets and ledger stream in Redis")
    ap.add_argument(
        "--litellm", action="store_true", help="also LiteLLM's proxy (pinned, own venv in var/)"
    )
    args = ap.parse_args()

    from stack import Stack, direct_body  # beside this file; it imports the helpers above

    lt: list[float] = []
    with Stack(
        database_url=args.database_url, redis_url=args.redis_url, litellm=args.litellm
    ) as stack:
        direct_url = stack.url("direct") + "/v1/chat/completions"
        gw_url = stack.url("tiergate") + "/v1/chat/completions"
        ll_url = stack.url("litellm") + "/v1/chat/completions"
        headers, ll_headers = stack.headers("tiergate"), stack.headers("litellm")
        # Direct requests name the simulator's own model and carry what the gateway would
        # add (thinking off), so both sides ask the simulator for the same work.
        dbody = direct_body(BODY)
        with httpx.Client(timeout=30) as client:
            measure(client, direct_url, dbody, args.warmup)
            measure(client, gw_url, BODY, args.warmup, headers)
            if args.litellm:
                measure(client, ll_url, BODY, args.warmup, ll_headers)
            d: list[float] = []
            g: list[float] = []
            block = 100
            for _ in range(max(1, args.requests // block)):
                gap = args.gap_ms / 1000
                d += measure(client, direct_url, dbody, block, gap_s=gap)
                g += measure(client, gw_url, BODY, block, headers, gap_s=gap)
                if args.litellm:
                    lt += measure(client, ll_url, BODY, block, ll_headers, gap_s=gap)
    keys = ("p50", "p90", "p99", "mean")
    res: dict[str, object] = {
        "requests": len(g),
        "money_path": ("redis+sql" if args.redis_url else "sql") if args.database_url else "off",
        "gap_ms": args.gap_ms,
        "direct_ms": percentiles(d),
        "gateway_ms": percentiles(g),
    }
    res["added_ms"] = {k: percentiles(g)[k] - percentiles(d)[k] for k in keys}
    if lt:
        res["litellm_ms"] = percentiles(lt)
        res["litellm_added_ms"] = {k: percentiles(lt)[k] - percentiles(d)[k] for k in keys}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"{'':16} {'p50':>8} {'p90':>8} {'p99':>8} {'mean':>8}   (ms, {len(g)} serial requests)")
    for name in ("direct_ms", "gateway_ms", "added_ms", "litellm_ms", "litellm_added_ms"):
        r = res.get(name)
        if isinstance(r, dict):
            print(
                f"{name[:-3]:16} {r['p50']:8.3f} {r['p90']:8.3f} {r['p99']:8.3f} {r['mean']:8.3f}"
            )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
