"""Streaming time-to-first-byte overhead; start-up time, idle RSS and RSS over 100k requests.

    .venv/bin/python bench/overhead/stream_and_memory.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        --redis-url redis://127.0.0.1:6379/0 --streams 1000 --requests 100000

1. Start-up: seconds from launching ``tiergate serve`` to the first 200 from /readyz, and the
   gateway's RSS then (idle).
2. Streaming TTFB: serially, time from sending a ``stream: true`` request to the first SSE
   event, direct to the zero-latency simulator vs through the gateway;
   p50/p99 and the difference (the gateway's overhead).
3. Memory: RSS after a 10k-request warm-up, then sampled every 10k requests while
   ``--requests`` more are sent open loop at ``--rate``; growth is last vs warm-up.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import new_loop, request_bytes, run_rate  # noqa: E402
from serial import BODY, percentiles, wait_ready  # noqa: E402
from stack import ROOT, Stack, direct_body  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def first_event_ms(port: int, payload: bytes) -> float:
    """Milliseconds until the first SSE ``data:`` event (the first chunk) arrives."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = time.perf_counter()
        s.sendall(payload)
        seen = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("stream ended before any event: " + seen[:300].decode())
            seen += chunk
            if b"\r\n\r\ndata:" in seen or b"\ndata:" in seen:
                ms = (time.perf_counter() - t) * 1000
                break
        while chunk and b"[DONE]" not in seen[-64:]:
            chunk = s.recv(65536)
            seen += chunk
        return ms


def ttfb(stack: Stack, who: str, n: int) -> list[float]:
    body = {**(direct_body(BODY) if who == "direct" else BODY), "stream": True}
    headers = {**stack.headers(who), "Connection": "close"}
    port = int(stack.url(who).rsplit(":", 1)[1])
    payload = request_bytes("127.0.0.1", port, "/v1/chat/completions", orjson.dumps(body), headers)
    return [first_event_ms(port, payload) for _ in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--warmup", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--database-url")
    ap.add_argument("--redis-url")
    ap.add_argument("--out", default=str(ROOT / "var" / "bench" / "stream_memory.json"))
    args = ap.parse_args()
    res: dict[str, object] = {
        "money_path": ("redis+sql" if args.redis_url else "sql") if args.database_url else "off"
    }
    t0 = time.perf_counter()
    with Stack(database_url=args.database_url, redis_url=args.redis_url) as stack:
        assert stack.gateway is not None
        wait_ready(stack.url("tiergate") + "/readyz")
        res["startup"] = {
            "ready_s": round(time.perf_counter() - t0, 2),
            "idle_rss_mb": round(rss_mb(stack.gateway.pid), 1),
            "note": "ready_s includes starting the simulator and provisioning the key",
        }
        with httpx.Client() as c:  # what /readyz needs before the first real request
            c.get(stack.url("tiergate") + "/readyz")
        ttfb(stack, "direct", 50)
        ttfb(stack, "tiergate", 50)
        direct: list[float] = []
        through: list[float] = []
        for _ in range(max(1, args.streams // 100)):
            direct += ttfb(stack, "direct", 100)
            through += ttfb(stack, "tiergate", 100)
        d, g = percentiles(direct), percentiles(through)
        res["ttfb_ms"] = {
            "streams": len(through),
            "direct": d,
            "tiergate": g,
            "added": {k: g[k] - d[k] for k in d},
        }
        print(json.dumps(res["ttfb_ms"], indent=2), flush=True)

        port = stack.gw_port
        payload = request_bytes(
            "127.0.0.1", port, "/v1/chat/completions", orjson.dumps(BODY), stack.headers("tiergate")
        )
        loop = new_loop()
        samples: list[dict[str, float]] = []
        errors = 0
        try:
            loop.run_until_complete(
                run_rate("127.0.0.1", port, payload, args.rate, args.warmup / args.rate)
            )
            pid = stack.gateway.pid
            warm = rss_mb(pid)
            samples.append({"requests": 0, "rss_mb": warm})
            done = 0
            while done < args.requests:
                chunk = min(10_000, args.requests - done)
                r = loop.run_until_complete(
                    run_rate("127.0.0.1", port, payload, args.rate, chunk / args.rate)
                )
                done += r.sent
                errors += r.errors
                samples.append({"requests": done, "rss_mb": rss_mb(pid)})
                print(f"  {done:>7} requests  rss {samples[-1]['rss_mb']:.1f} MB", flush=True)
        finally:
            loop.close()
        last = samples[-1]["rss_mb"]
        res["memory"] = {
            "rate": args.rate,
            "warmup_requests": args.warmup,
            "requests": samples[-1]["requests"],
            "errors": errors,
            "rss_after_warmup_mb": warm,
            "rss_after_mb": last,
            "growth_pct": round(100 * (last - warm) / warm, 2),
            "peak_mb": max(s["rss_mb"] for s in samples),
            "samples": samples,
            "median_mb": statistics.median(s["rss_mb"] for s in samples),
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    mem = res["memory"]
    assert isinstance(mem, dict)
    print(
        f"ttfb added p50 {res['ttfb_ms']['added']['p50']:.3f} ms"  # type: ignore[index]
        f" | rss {mem['rss_after_warmup_mb']:.1f} -> {mem['rss_after_mb']:.1f} MB"
        f" ({mem['growth_pct']}%) over {mem['requests']} requests | wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
