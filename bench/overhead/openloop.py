"""Highest fixed request rate each contender holds with p99 under 10 ms and under 0.1% errors.

Open loop (bench/overhead/loadgen.py): requests leave on schedule and latency counts from the
due time. Rates step up until a contender breaks the bar (p99 >= 10 ms, errors >= 0.1%, or it
answers less than 98% of what was offered); its best passing rate is its maximum. Upstream
is the zero-latency simulator. tiergate runs its real path: API key, router, budgets in Redis,
ledger in PostgreSQL, metrics (pass --database-url/--redis-url; without them the embedded
default).

    .venv/bin/python bench/overhead/openloop.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        --redis-url redis://127.0.0.1:6379/0 --litellm
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import new_loop, request_bytes, run_rate  # noqa: E402
from serial import BODY  # noqa: E402
from stack import ROOT, Stack, direct_body  # noqa: E402

RATES = (50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1200, 1400, 1700, 2000, 2500, 3000)


def passes(s: dict[str, float], p99_ms: float) -> bool:
    return s["p99_ms"] < p99_ms and s["error_share"] < 0.001 and s["achieved"] >= 0.98 * s["rate"]


def sweep(
    stack: Stack, who: str, seconds: float, p99_ms: float, max_rate: int
) -> dict[str, object]:
    body = direct_body(BODY) if who == "direct" else BODY
    path = "/v1/chat/completions"
    payload = request_bytes("127.0.0.1", 0, path, orjson.dumps(body), stack.headers(who))
    port = int(stack.url(who).rsplit(":", 1)[1])
    loop = new_loop()
    steps: list[dict[str, float]] = []
    best = 0.0
    misses = 0
    try:
        loop.run_until_complete(run_rate("127.0.0.1", port, payload, 100, 3))  # warm-up
        for rate in (r for r in RATES if r <= max_rate):
            s = loop.run_until_complete(run_rate("127.0.0.1", port, payload, rate, seconds))
            summary = s.summary()
            steps.append(summary)
            print(f"  {who:9} {json.dumps(summary)}", flush=True)
            if passes(summary, p99_ms):
                best = rate
                misses = 0
            else:
                misses += 1
                if misses == 3 or summary["achieved"] < 0.9 * rate:
                    break
    finally:
        loop.close()
    return {"max_rate": best, "steps": steps}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--p99-ms", type=float, default=10.0)
    ap.add_argument("--max-rate", type=int, default=3000)
    ap.add_argument("--database-url")
    ap.add_argument("--redis-url")
    ap.add_argument("--litellm", action="store_true")
    ap.add_argument(
        "--external-drain", action="store_true", help="ledger inserts in a separate process"
    )
    ap.add_argument("--only", choices=("direct", "tiergate", "litellm"), help="one contender")
    ap.add_argument("--out", default=str(ROOT / "var" / "bench" / "openloop.json"))
    args = ap.parse_args()
    res: dict[str, object] = {
        "money_path": ("redis+sql" if args.redis_url else "sql") if args.database_url else "off",
        "ledger_drain": "external" if args.external_drain else "inline",
        "p99_bar_ms": args.p99_ms,
        "seconds_per_rate": args.seconds,
    }
    with Stack(
        database_url=args.database_url,
        redis_url=args.redis_url,
        litellm=args.litellm,
        external_drain=args.external_drain,
    ) as stack:
        contenders = ["direct", "tiergate"] + (["litellm"] if args.litellm else [])
        if args.only:
            contenders = [args.only]
        for who in contenders:
            res[who] = sweep(stack, who, args.seconds, args.p99_ms, args.max_rate)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"\nmax rate with p99 < {args.p99_ms} ms and < 0.1% errors (open loop):")
    for who in ("direct", "tiergate", "litellm"):
        r = res.get(who)
        if isinstance(r, dict):
            print(f"  {who:9} {r['max_rate']:>6} req/s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
