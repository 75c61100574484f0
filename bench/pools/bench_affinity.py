"""Prefix-affinity benchmark: cache hit rate, load balance and TTFT per replica-choice strategy.

    .venv/bin/python bench/pools/bench_affinity.py --replicas 2 4 8 --requests 320

A multi-tenant workload (tenants with long shared system prompts, multi-turn sessions that
grow, long documents queried repeatedly, one-off requests) is streamed through the gateway
to N simulated Flash replicas with bounded prefix caches, once per strategy:
round-robin, least-loaded, ours (prefix affinity with bounded load), and an oracle (one
replica with an unbounded cache: the best hit rate any routing could reach). Hit rates
come from the replicas' own counters. Then a replica is stopped mid-run to count
client-visible failures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from engines.asgi_thread import BackgroundServer
from engines.sim.config import SimConfig
from engines.sim.runner import SimServer
from gateway.app import create_app
from gateway.settings import Settings
from policies.catalog import parse_catalog

ROOT = Path(__file__).resolve().parents[2]
WORDS = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
    "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi",
]  # fmt: skip


def text(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(tokens))


def workload(n: int, seed: int = 7) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    tenants = [text(rng, 2500) for _ in range(12)]
    docs = [text(rng, 5000) for _ in range(6)]
    sessions: list[list[dict[str, str]]] = []
    out: list[list[dict[str, str]]] = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.45:  # a session continues or starts under its tenant's system prompt
            if sessions and rng.random() < 0.7:
                s = rng.choice(sessions)
                s += [
                    {"role": "assistant", "content": text(rng, 40)},
                    {"role": "user", "content": text(rng, 30)},
                ]
            else:
                s = [
                    {"role": "system", "content": rng.choice(tenants)},
                    {"role": "user", "content": text(rng, 30)},
                ]
                sessions.append(s)
            out.append(list(s))
        elif kind < 0.75:  # a long document asked another question
            out.append(
                [{"role": "user", "content": rng.choice(docs) + "\nQuestion: " + text(rng, 20)}]
            )
        elif kind < 0.9:  # a tenant one-shot
            out.append(
                [
                    {"role": "system", "content": rng.choice(tenants)},
                    {"role": "user", "content": text(rng, 30)},
                ]
            )
        else:  # unrelated one-off
            out.append([{"role": "user", "content": text(rng, 300)}])
    return out


def catalog(urls: list[str], strategy: str, load_factor: float = 1.25) -> Any:
    data = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    data["backends"]["flash-local"].update(
        replicas=urls, selection=strategy, poll_interval_s=0.5, load_factor=load_factor
    )
    data["backends"]["pro-local"]["replicas"] = urls[:1]
    data["backends"]["hosted"]["base_url"] = "http://127.0.0.1:9"
    data["routing"]["spill_to_hosted"] = False
    return parse_catalog(data)


async def drive(
    url: str, reqs: list[list[dict[str, str]]], concurrency: int, kill: Any = None
) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    ttft: list[float] = []
    failures = 0

    async def one(i: int, messages: list[dict[str, str]], c: httpx.AsyncClient) -> None:
        nonlocal failures
        async with sem:
            if kill is not None and i == len(reqs) // 2:
                kill()
            t = time.perf_counter()
            body = {"model": "deepseek-chat", "messages": messages, "max_tokens": 8, "stream": True}
            try:
                async with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        failures += 1
                        return
                    first = None
                    async for line in r.aiter_lines():
                        if first is None and line.startswith("data: ") and '"content"' in line:
                            first = time.perf_counter() - t
                    if first is not None:
                        ttft.append(first * 1000)
            except httpx.HTTPError:
                failures += 1

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as c:
        await asyncio.gather(*(one(i, m, c) for i, m in enumerate(reqs)))
    ttft.sort()
    return {
        "ttft_p50_ms": statistics.median(ttft) if ttft else None,
        "ttft_p99_ms": ttft[int(0.99 * len(ttft))] if ttft else None,
        "failures": failures,
    }


def run(
    strategy: str,
    n: int,
    reqs: list[list[dict[str, str]]],
    args: argparse.Namespace,
    kill: bool = False,
) -> dict[str, Any]:
    blocks = 10**9 if strategy == "oracle" else args.cache_blocks
    count = 1 if strategy == "oracle" else n
    sims = [
        SimServer(
            SimConfig.preset(
                "flash", replica_id=f"r{i}", cache_blocks=blocks, max_num_seqs=4
            ).scaled(args.latency_scale)
        )
        for i in range(count)
    ]
    for s in sims:
        s.start()
    app = create_app(
        Settings(log_level="warning", database_url="none"),
        catalog=catalog(
            [s.base_url for s in sims],
            "affinity" if strategy == "oracle" else strategy,
            args.load_factor,
        ),
    )
    try:
        with BackgroundServer(app) as gw:
            time.sleep(0.6)
            res = asyncio.run(
                drive(gw.base_url, reqs, args.concurrency, sims[-1].stop if kill else None)
            )
        stats = [
            httpx.get(s.base_url + "/sim/stats").json()
            for s in sims
            if not (kill and s is sims[-1])
        ]
    finally:
        for s in sims:
            s.stop()
    prompt = sum(s["prompt_tokens"] for s in stats)
    cached = sum(s["cached_tokens"] for s in stats)
    loads = [s["requests"] for s in stats]
    res.update(
        strategy=strategy,
        replicas=n,
        hit_rate=cached / prompt if prompt else 0.0,
        max_over_mean_load=max(loads) / statistics.fmean(loads) if strategy != "oracle" else 1.0,
    )
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--requests", type=int, default=320)
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--no-kill", action="store_true", help="skip the stopped-replica run")
    ap.add_argument("--load-factor", type=float, default=1.25, help="the pools' load bound")
    ap.add_argument(
        "--strategies", nargs="+", default=["round_robin", "least_loaded", "affinity", "oracle"]
    )
    ap.add_argument("--cache-blocks", type=int, default=48, help="per replica, 256-token blocks")
    ap.add_argument("--latency-scale", type=float, default=0.2)
    ap.add_argument("--out", default=str(ROOT / "var" / "bench" / "pools.json"))
    args = ap.parse_args()
    os.environ.setdefault("DEEPSEEK_API_KEY", "unused")
    reqs = workload(args.requests)
    results = []
    print(
        f"{'replicas':>8} {'strategy':13} {'hit rate':>8} {'max/mean':>8}"
        f" {'TTFT p50':>9} {'TTFT p99':>9}"
    )
    for n in args.replicas:
        for strategy in args.strategies:
            r = run(strategy, n, reqs, args)
            results.append(r)
            print(
                f"{n:>8} {strategy:13} {r['hit_rate']:8.3f} {r['max_over_mean_load']:8.2f} "
                f"{r['ttft_p50_ms']:9.1f} {r['ttft_p99_ms']:9.1f}",
                flush=True,
            )
    if not args.no_kill:
        kill = run("affinity", 4, reqs, args, kill=True)
        print(
            f"replica stopped mid-run (4 replicas, affinity): {kill['failures']} client-visible"
            f" failures of {len(reqs)} streamed requests"
        )
        results.append({**kill, "strategy": "affinity+kill"})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
