"""What one Lua call to Redis costs per layer: redis-py's Script, execute_command, a pooled
connection with a packed command, a held connection, and a raw asyncio socket.

    .venv/bin/python bench/money/redis_call.py [--url redis://127.0.0.1:6379/0] [--calls 5000]

The script body is one ``INCR``, so the numbers are the client and the round trip, not
the Lua work. Prints microseconds per call for each path (two rounds; the first warms up).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

LUA = "return redis.call('INCR', KEYS[1])"
KEY = "tg-bench:redis-call"


async def per_call(n: int, call: Callable[[], Awaitable[object]]) -> float:
    t = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - t) / n * 1e6


async def one_round(r: Redis, script: AsyncScript, n: int, reader: Any, writer: Any) -> str:
    pool = r.connection_pool
    args = ("EVALSHA", script.sha, 1, KEY, 1, 2, 3)
    out: dict[str, float] = {}
    out["Script()"] = await per_call(n, lambda: script(keys=[KEY], args=[1, 2, 3]))
    out["execute_command"] = await per_call(n, lambda: r.execute_command(*args))  # type: ignore[no-untyped-call]

    async def pooled() -> None:
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(conn.pack_command(*args), check_health=False)
            await conn.read_response()
        finally:
            await pool.release(conn)

    out["pooled packed"] = await per_call(n, pooled)
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    packed = conn.pack_command(*args)

    async def held() -> None:
        await conn.send_packed_command(packed, check_health=False)
        await conn.read_response()

    out["held connection"] = await per_call(n, held)
    await pool.release(conn)
    payload = b"".join(packed)

    async def raw() -> None:
        writer.write(payload)
        await reader.readline()

    out["raw socket"] = await per_call(n, raw)
    return "  ".join(f"{k} {v:.1f} us" for k, v in out.items())


async def main(url: str, n: int) -> None:
    r = Redis.from_url(url)
    script = r.register_script(LUA)
    await script(keys=[KEY])
    kw = r.connection_pool.connection_kwargs
    reader, writer = await asyncio.open_connection(
        kw.get("host", "127.0.0.1"), kw.get("port", 6379)
    )
    try:
        for _ in range(2):
            print(await one_round(r, script, n, reader, writer), flush=True)
    finally:
        writer.close()
        await r.delete(KEY)
        await r.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--calls", type=int, default=5000)
    a = ap.parse_args()
    asyncio.run(main(a.url, a.calls))
