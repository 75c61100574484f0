"""Router latency: features + score + policy, for the generic router and a pair model.

    taskset -c 0 nice -n 15 .venv/bin/python bench/router/bench_router.py

One core, one thread, after warm-up; prints p50/p99 in milliseconds (wall clock, and the
p99 of the call's own CPU time, which a busy host's preemption does not inflate) and writes
``var/bench/router.json``. The pair model is trained first on 1,000 labelled DCRouter rows
(if the public data is there; else on synthetic rows): its cost is the tokenizer, the
embedding, the topic and the 1,000-exemplar nearest-neighbour search. Requests that name a
model never reach the router (``Pipeline``: the classifier runs only for ``auto``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from policies.features import from_text  # noqa: E402
from policies.router import Router  # noqa: E402
from policies.router.calibration import Thresholds  # noqa: E402
from policies.router.data import MORE_LOADERS  # noqa: E402
from policies.router.embed import default_embedder  # noqa: E402
from policies.router.policy import AutoInput, decide  # noqa: E402
from policies.router.scorer import fit_pair, pair_label  # noqa: E402

# the public outcome data; TIERGATE_ROUTING_DATA names another copy of it
SHARED = Path(
    os.environ.get("TIERGATE_ROUTING_DATA") or ROOT.parent / "shared" / "data" / "routing"
)
PARA = (
    "The service must reconcile invoices against purchase orders, then flag mismatches "
    "over 2% and explain each one step by step. Return JSON with fields id and reason. "
)


def conversation(tokens: int) -> list[dict[str, str]]:
    chars = tokens * 4
    history = (PARA * (chars // len(PARA) + 1))[: chars - 400]
    return [
        {"role": "system", "content": "You are a careful finance assistant."},
        {"role": "user", "content": history},
        {"role": "assistant", "content": "Understood."},
        {"role": "user", "content": PARA[:400]},
    ]


def long_turn(tokens: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": (PARA * (tokens * 4 // len(PARA) + 1))[: tokens * 4]}]


def run(router: Router, messages: list[dict[str, str]], n: int) -> dict[str, float]:
    t0 = Thresholds(0.7, 0.4)
    for _ in range(50):
        decide(AutoInput(router.score(messages).hard, t0))
    lat, cpu = [], []
    for _ in range(n):
        c, t = time.thread_time(), time.perf_counter()
        decide(AutoInput(router.score(messages).hard, t0))
        lat.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
    lat.sort()
    cpu.sort()
    return {
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[int(0.99 * len(lat))],
        "cpu_p50_ms": statistics.median(cpu),
        # CPU time of the call: what a busy host's preemption adds to p99 is not in it
        "cpu_p99_ms": cpu[int(0.99 * len(cpu))],
    }


def pair_router(n: int = 1000) -> Router:
    path = SHARED / "dcrouter_outcomes.jsonl.gz"
    weak, strong = "mistral-7b-instruct-v0.3", "llama-3.1-nemotron-51b-instruct"
    if path.exists():
        rows = list(MORE_LOADERS["dcrouter_outcomes.jsonl.gz"](path))[:n]
        texts = [r.prompt for r in rows]
        y = [pair_label(r.correct[weak], r.correct[strong]) for r in rows]
    else:
        rng = np.random.default_rng(0)
        texts = [PARA[: int(rng.integers(20, 400))] for _ in range(n)]
        y = list(rng.choice([-1.0, 0.0, 1.0], size=n))
    feats = [from_text(t) for t in texts]
    emb = default_embedder().embed_many([f.task for f in feats])
    return Router(pair=fit_pair(feats, emb, y))


def main() -> int:
    generic = Router.load_default()
    pair = pair_router()
    print(f"pair model: {pair.meta.get('chosen')} on {pair.meta.get('rows')} rows", flush=True)
    res = {}
    for name, router in (("generic", generic), ("pair", pair)):
        res[f"{name}/2k_tokens"] = run(router, conversation(2_000), 3000)
        res[f"{name}/2k_tokens_in_last_turn"] = run(router, long_turn(2_000), 3000)
        res[f"{name}/1M_tokens_last_turn_small"] = run(router, conversation(1_000_000), 1000)
        res[f"{name}/1M_tokens_in_last_turn"] = run(router, long_turn(1_000_000), 500)
    out = ROOT / "var" / "bench" / "router.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    for name, r in res.items():
        print(
            f"{name:36} p50 {r['p50_ms']:.4f} ms   p99 {r['p99_ms']:.4f} ms   "
            f"CPU-time p50 {r['cpu_p50_ms']:.4f} ms  p99 {r['cpu_p99_ms']:.4f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
