"""Router latency: features + model + policy for a 2k-token and a 1M-token prompt.

    .venv/bin/python bench/router/bench_router.py

One core, one thread, after warm-up; prints p50/p99 in milliseconds and writes JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from policies.router import Router
from policies.router.calibration import Thresholds
from policies.router.policy import AutoInput, decide

ROOT = Path(__file__).resolve().parents[2]
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


def run(router: Router, messages: list[dict[str, str]], n: int) -> dict[str, float]:
    t0 = Thresholds(0.7, 0.4)
    for _ in range(50):
        decide(AutoInput(router.score(messages).hard, t0))
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        decide(AutoInput(router.score(messages).hard, t0))
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return {"p50_ms": statistics.median(lat), "p99_ms": lat[int(0.99 * len(lat))]}


def main() -> int:
    router = Router.load_default()
    res = {
        "2k_tokens": run(router, conversation(2_000), 5000),
        "1M_tokens_last_turn_small": run(router, conversation(1_000_000), 2000),
        "1M_tokens_in_last_turn": run(router, [{"role": "user", "content": PARA * 40_000}], 500),
    }
    out = ROOT / "var" / "bench" / "router.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    for name, r in res.items():
        print(f"{name:28} p50 {r['p50_ms']:.4f} ms   p99 {r['p99_ms']:.4f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
