"""An open-loop HTTP/1.1 load generator: requests leave on schedule, whatever the server does.

Closed-loop tools (wrk, a pool of workers) slow down when the server does, which hides queueing
("coordinated omission"). Here request ``i`` is due at ``t0 + i / rate``; its latency is
measured from that due time, not from when a connection became free, so a stalled server shows
up in the percentiles. Keep-alive connections are reused; a new one is opened when all are
busy (up to ``max_conns``; past that the request counts as an error: the server could not keep
up). One request body, pre-encoded; responses are read by Content-Length or chunked framing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class RateResult:
    rate: float
    seconds: float
    sent: int
    ok: int
    errors: int
    latencies_ms: list[float] = field(repr=False)

    @property
    def achieved(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    def summary(self) -> dict[str, float]:
        return {
            "rate": self.rate,
            "achieved": round(self.achieved, 1),
            "sent": self.sent,
            "errors": self.errors,
            "error_share": self.errors / self.sent if self.sent else 0.0,
            "p50_ms": round(self.pct(0.50), 3),
            "p90_ms": round(self.pct(0.90), 3),
            "p99_ms": round(self.pct(0.99), 3),
            "max_ms": round(max(self.latencies_ms, default=float("nan")), 3),
        }


def request_bytes(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = -1
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length >= 0:
        await reader.readexactly(length)
    return status


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer


async def run_rate(
    host: str,
    port: int,
    payload: bytes,
    rate: float,
    seconds: float,
    *,
    max_conns: int = 512,
    timeout_s: float = 5.0,
) -> RateResult:
    """Send ``rate`` requests per second for ``seconds``; return latencies from due times."""
    idle: list[_Conn] = []
    opened = 0
    latencies: list[float] = []
    errors = 0
    ok = 0
    total = int(rate * seconds)
    tasks: set[asyncio.Task[None]] = set()

    async def one(due: float) -> None:
        nonlocal opened, errors, ok
        conn = idle.pop() if idle else None
        reused = conn is not None
        while True:
            try:
                if conn is None:
                    if opened >= max_conns:
                        errors += 1
                        return
                    opened += 1
                    conn = _Conn(*await asyncio.open_connection(host, port))
                conn.writer.write(payload)
                status = await asyncio.wait_for(_read_response(conn.reader), timeout_s)
                break
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                if conn is not None:
                    conn.writer.close()
                    opened -= 1
                    conn = None
                # A keep-alive connection the server closed while idle: retry once on a new
                # one, as HTTP clients do. Anything else counts as an error.
                if reused and isinstance(exc, (asyncio.IncompleteReadError, ConnectionError)):
                    reused = False
                    continue
                errors += 1
                return
        latencies.append((time.perf_counter() - due) * 1000)
        if status == 200:
            ok += 1
        else:
            errors += 1
        idle.append(conn)

    t0 = time.perf_counter() + 0.05
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s + 1)
    elapsed = max(time.perf_counter() - t0, seconds)
    for c in idle:
        c.writer.close()
    return RateResult(rate, elapsed, total, ok, errors, latencies)


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()
