"""Prefix-affinity benchmark: cache hit rate, load balance and TTFT per replica-choice strategy.

    .venv/bin/python bench/pools/bench_affinity.py --replicas 2 4 8 --requests 320 --runs 4

A multi-tenant workload (tenants with long shared system prompts, multi-turn sessions that
grow, long documents queried repeatedly, one-off requests) is streamed through the gateway
to N simulated Flash replicas with bounded prefix caches, once per strategy:
round-robin, least-loaded, ours (prefix affinity with bounded load; ``affinity_queue``
adds the gateway's own queue, at the replicas' 4 running sequences), and an oracle (one
replica with an unbounded cache: the best hit rate any routing could reach). Hit rates
come from the replicas' own counters. Then a replica is killed mid-run to count
client-visible failures.

The gateway and every replica run as processes of their own (the gateway pinned to core 0,
replicas and client on core 1 where taskset exists), as in production, so that one
process's work does not delay another's under a shared interpreter lock. Each run starts
fresh processes; strategies take turns within a run, and TTFT percentiles pool every
run's requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "overhead"))
from serial import free_port, pinned, wait_ready  # noqa: E402

from policies.catalog import parse_catalog  # noqa: E402

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


def warmup(n: int) -> list[list[dict[str, str]]]:
    rng = random.Random(1)
    return [[{"role": "user", "content": text(rng, 20)}] for _ in range(n)]


SEQS = 4  # running sequences per simulated replica


def catalog(urls: list[str], strategy: str, load_factor: float) -> dict[str, Any]:
    """``oracle`` is affinity (over one replica); ``affinity_queue`` adds the gateway's queue."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "gateway" / "examples" / "demo.yaml").read_text())
    selection = {"oracle": "affinity", "affinity_queue": "affinity"}.get(strategy, strategy)
    data["backends"]["flash-local"].update(
        replicas=urls, selection=selection, poll_interval_s=0.5, load_factor=load_factor
    )
    if strategy == "affinity_queue":
        data["backends"]["flash-local"]["max_in_flight_per_replica"] = SEQS
    data["backends"]["pro-local"]["replicas"] = urls[:1]
    data["backends"]["hosted"]["base_url"] = "http://127.0.0.1:9"
    data["routing"]["spill_to_hosted"] = False
    parse_catalog(data)  # fail here, not in the gateway process, if it is invalid
    return data


async def drive(
    url: str, reqs: list[list[dict[str, str]]], concurrency: int, kill: Any = None
) -> tuple[list[float], int]:
    """Stream every request at ``concurrency``; TTFT in ms of each, and failures."""
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
    return ttft, failures


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class Pool:
    """N simulated replicas and a gateway in front of them, each a process of its own."""

    def __init__(self, n: int, strategy: str, args: argparse.Namespace) -> None:
        self.n, self.strategy, self.args = n, strategy, args
        self.sims: list[subprocess.Popen[bytes]] = []
        self.ports = [free_port() for _ in range(n)]
        self.gw_port = free_port()
        self.gateway: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gw_port}"

    def sim_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def __enter__(self) -> Pool:
        env = {
            **os.environ,
            "DEEPSEEK_API_KEY": "unused",
            "TIERGATE_LOG_LEVEL": "warning",
            "TIERGATE_DATABASE_URL": "none",
        }
        py = sys.executable
        oracle = self.strategy == "oracle"
        for i, port in enumerate(self.ports):
            cmd = [py, "-m", "gateway.cli", "sim", "--preset", "flash", "--log-level", "warning"]
            cmd += ["--replica-id", f"r{i}", "--port", str(port), "--max-num-seqs", str(SEQS)]
            cmd += ["--cache-blocks", str(10**9 if oracle else self.args.cache_blocks)]
            cmd += ["--latency-scale", str(self.args.latency_scale)]
            self.sims.append(self._start(cmd, 1, env))
        tmp = Path(tempfile.mkdtemp(prefix="tg-pools-"))
        urls = [self.sim_url(i) for i in range(self.n)]
        data = catalog(urls, self.strategy, self.args.load_factor)
        (tmp / "catalog.yaml").write_text(yaml.safe_dump(data))
        serve = [py, "-m", "gateway.cli", "serve", "--config", str(tmp / "catalog.yaml")]
        self.gateway = self._start([*serve, "--port", str(self.gw_port)], 0, env)
        try:
            for u in urls:
                wait_ready(u + "/health")
            wait_ready(self.url + "/healthz")
            time.sleep(1.2)  # two health polls: every replica is known and usable
        except BaseException:
            self.__exit__()
            raise
        return self

    @staticmethod
    def _start(cmd: list[str], core: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            pinned(cmd, core),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self, i: int) -> None:
        """A crash, not a shutdown: the process gets no chance to finish its requests."""
        self.sims[i].send_signal(signal.SIGKILL)

    def stats(self) -> list[dict[str, Any]]:
        out = []
        for i, proc in enumerate(self.sims):
            if proc.poll() is None:
                out.append(httpx.get(self.sim_url(i) + "/sim/stats").json())
        return out

    def __exit__(self, *exc: object) -> None:
        for proc in [*self.sims, *([self.gateway] if self.gateway else [])]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.sims, *([self.gateway] if self.gateway else [])]:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def run(
    strategy: str,
    n: int,
    reqs: list[list[dict[str, str]]],
    args: argparse.Namespace,
    kill: bool = False,
) -> dict[str, Any]:
    with Pool(1 if strategy == "oracle" else n, strategy, args) as pool:
        # Warm every process's first-request paths with prompts under one block (no
        # affinity, nothing worth caching); the counters' deltas leave them out.
        asyncio.run(drive(pool.url, warmup(4 * args.concurrency), args.concurrency))
        before = pool.stats()
        ttft, failures = asyncio.run(
            drive(pool.url, reqs, args.concurrency, (lambda: pool.kill(n - 1)) if kill else None)
        )
        after = pool.stats()
    if kill:
        before = before[: len(after)]
    stats = [
        {k: a[k] - b[k] for k in ("prompt_tokens", "cached_tokens", "requests")}
        for a, b in zip(after, before, strict=True)
    ]
    prompt = sum(s["prompt_tokens"] for s in stats)
    cached = sum(s["cached_tokens"] for s in stats)
    loads = [s["requests"] for s in stats]
    return {
        "strategy": strategy,
        "replicas": n,
        "hit_rate": cached / prompt if prompt else 0.0,
        "max_over_mean_load": max(loads) / statistics.fmean(loads) if strategy != "oracle" else 1.0,
        "ttft_ms": ttft,
        "failures": failures,
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ttft = [t for r in rows for t in r["ttft_ms"]]
    return {
        "strategy": rows[0]["strategy"],
        "replicas": rows[0]["replicas"],
        "runs": len(rows),
        "hit_rate": statistics.fmean(r["hit_rate"] for r in rows),
        "hit_rate_range": [min(r["hit_rate"] for r in rows), max(r["hit_rate"] for r in rows)],
        "max_over_mean_load": statistics.fmean(r["max_over_mean_load"] for r in rows),
        "max_over_mean_worst": max(r["max_over_mean_load"] for r in rows),
        "ttft_p50_ms": pct(ttft, 0.50) if ttft else None,
        "ttft_p90_ms": pct(ttft, 0.90) if ttft else None,
        "ttft_p99_ms": pct(ttft, 0.99) if ttft else None,
        "requests": len(ttft),
        "failures": sum(r["failures"] for r in rows),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--requests", type=int, default=320)
    ap.add_argument("--runs", type=int, default=1, help="fresh processes per run; results pooled")
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--no-kill", action="store_true", help="skip the killed-replica run")
    ap.add_argument("--load-factor", type=float, default=1.25, help="the pools' load bound")
    ap.add_argument(
        "--strategies", nargs="+", default=["round_robin", "least_loaded", "affinity", "oracle"]
    )
    ap.add_argument("--cache-blocks", type=int, default=160, help="per replica, 256-token blocks")
    ap.add_argument(
        "--latency-scale",
        type=float,
        default=1.0,
        help="x the V4-like preset's latencies; far below 1, routing's effect on TTFT "
        "shrinks to the size of the host's scheduling noise",
    )
    ap.add_argument("--out", default=str(ROOT / "var" / "bench" / "pools.json"))
    args = ap.parse_args()
    reqs = workload(args.requests)
    per_run: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for k in range(args.runs):
        for n in args.replicas:
            # Strategies take turns, in a rotated order per run, so drift hits each alike.
            order = (
                args.strategies[k % len(args.strategies) :]
                + args.strategies[: k % len(args.strategies)]
            )
            for strategy in order:
                r = run(strategy, n, reqs, args)
                per_run.setdefault((n, strategy), []).append(r)
                print(
                    f"run {k + 1}: {n} replicas {strategy:13} hit {r['hit_rate']:.3f} "
                    f"max/mean {r['max_over_mean_load']:.2f} "
                    f"p99 {pct(r['ttft_ms'], 0.99):.1f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    results = [summary(per_run[(n, s)]) for n in args.replicas for s in args.strategies]
    rr = {r["replicas"]: r["hit_rate"] for r in results if r["strategy"] == "round_robin"}
    oracle = {r["replicas"]: r["hit_rate"] for r in results if r["strategy"] == "oracle"}
    print(
        f"{'replicas':>8} {'strategy':13} {'hit rate':>8} {'x RR':>5} {'of oracle':>9}"
        f" {'max/mean':>8} {'worst':>6} {'TTFT p50':>9} {'p90':>6} {'p99':>6}"
    )
    for r in results:
        n = r["replicas"]
        x_rr = f"{r['hit_rate'] / rr[n]:5.2f}" if n in rr else "    -"
        of = f"{r['hit_rate'] / oracle[n]:8.0%}" if n in oracle else "        -"
        print(
            f"{n:>8} {r['strategy']:13} {r['hit_rate']:8.3f} {x_rr} {of} "
            f"{r['max_over_mean_load']:8.2f} {r['max_over_mean_worst']:6.2f} "
            f"{r['ttft_p50_ms']:9.1f} {r['ttft_p90_ms']:6.1f} {r['ttft_p99_ms']:6.1f}",
            flush=True,
        )
    out: dict[str, Any] = {"args": vars(args), "results": results}
    if not args.no_kill:
        out["kill"] = {}
        for strategy in [s for s in ("affinity", "affinity_queue") if s in args.strategies]:
            kill = run(strategy, 4, reqs, args, kill=True)
            print(
                f"replica killed mid-run (4 replicas, {strategy}): {kill['failures']}"
                f" client-visible failures of {len(reqs)} streamed requests"
            )
            out["kill"][strategy] = {k: v for k, v in kill.items() if k != "ttft_ms"}
    out["runs"] = {f"{n}/{s}": rows for (n, s), rows in per_run.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
