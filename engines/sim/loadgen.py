"""A closed-loop load generator for simulators (or any OpenAI-compatible endpoint).

``concurrency`` workers each send the same request back to back until ``requests`` have
been answered; the result gives throughput, latency percentiles and errors. With
``--spawn`` it starts a zero-latency simulator in a child process pinned to one CPU and
reports how busy that CPU was, so the throughput can be read as "per simulator core":

    python -m engines.sim.loadgen --spawn flash --server-cpu 0 --client-cpu 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import orjson

from engines.asgi_thread import free_port

SIMPLE_CHAT: dict[str, Any] = {
    "model": "deepseek-ai/DeepSeek-V4-Flash",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 16,
}


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_share: float | None = None  # busy share of the server's CPU, when known


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run_load(
    url: str,
    body: dict[str, Any],
    *,
    requests: int,
    concurrency: int,
    headers: dict[str, str] | None = None,
    warmup: int = 0,
) -> LoadResult:
    """Send ``warmup`` untimed requests, then ``requests`` timed ones; any non-200 is an error."""
    payload = orjson.dumps(body)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def batch(n: int) -> tuple[list[float], int]:
            left = n
            latencies: list[float] = []
            errors = 0

            async def worker() -> None:
                nonlocal left, errors
                while left > 0:
                    left -= 1
                    t0 = time.perf_counter()
                    try:
                        async with session.post(url, data=payload, headers=hdrs) as resp:
                            await resp.read()
                            ok = resp.status == 200
                    except aiohttp.ClientError:
                        ok = False
                    latencies.append(time.perf_counter() - t0)
                    errors += not ok

            await asyncio.gather(*(worker() for _ in range(min(concurrency, max(n, 1)))))
            return latencies, errors

        if warmup:
            await batch(warmup)
        start = time.perf_counter()
        latencies, errors = await batch(requests)
        seconds = time.perf_counter() - start
    latencies.sort()
    return LoadResult(
        requests=len(latencies),
        errors=errors,
        seconds=seconds,
        rps=len(latencies) / seconds if seconds > 0 else 0.0,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
    )


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux ``/proc``), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the simulator exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"the simulator did not listen on port {port} in {timeout_s}s")


def _pin(pid: int, cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, {cpu})


def _spawned_run(args: argparse.Namespace, body: dict[str, Any]) -> LoadResult:
    port = free_port()
    cmd = [sys.executable, "-m", "engines.sim", "--preset", args.spawn, "--zero-latency"]
    proc = subprocess.Popen([*cmd, "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        _pin(proc.pid, args.server_cpu)
        _wait_for_port(port, proc)
        url = f"http://127.0.0.1:{port}{args.path}"
        asyncio.run(run_load(url, body, requests=args.warmup, concurrency=args.concurrency))
        cpu0, wall0 = _cpu_seconds(proc.pid), time.perf_counter()
        result = asyncio.run(
            run_load(url, body, requests=args.requests, concurrency=args.concurrency)
        )
        cpu1, wall1 = _cpu_seconds(proc.pid), time.perf_counter()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    share = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / (wall1 - wall0)
    return LoadResult(**{**asdict(result), "server_cpu_share": share})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.sim.loadgen", description=__doc__)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="base URL of a running server")
    target.add_argument("--spawn", choices=("flash", "pro"), help="start a zero-latency sim")
    p.add_argument("--path", default="/v1/chat/completions")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1_000)
    p.add_argument("--server-cpu", type=int, help="pin the spawned simulator to this CPU")
    p.add_argument("--client-cpu", type=int, help="pin this load generator to this CPU")
    p.add_argument("--body", help="request body as JSON (default: a short chat request)")
    args = p.parse_args(argv)
    body = orjson.loads(args.body) if args.body else dict(SIMPLE_CHAT)
    if args.spawn == "pro" and not args.body:
        body["model"] = "deepseek-ai/DeepSeek-V4-Pro"
    _pin(0, args.client_cpu)
    if args.spawn:
        result = _spawned_run(args, body)
    else:
        url = args.url.rstrip("/") + args.path
        result = asyncio.run(
            run_load(
                url, body, requests=args.requests, concurrency=args.concurrency, warmup=args.warmup
            )
        )
    print(orjson.dumps(asdict(result), option=orjson.OPT_INDENT_2).decode())
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
