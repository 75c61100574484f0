"""Requests and tokens per minute per key: a fixed one-minute window.

With Redis the counters are shared by every gateway process (one Lua call checks and
counts both); without it they are per process. A request is counted only if admitted, for
its prompt estimate; once it is settled, ``add`` moves the window it was admitted in to
its actual tokens, prompt and output (reasoning included). A window already spent refuses
the next request, so a key runs at most one minute's answers past its limit.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

_LUA = """
local req = tonumber(redis.call('GET', KEYS[1]) or '0')
local tok = tonumber(redis.call('GET', KEYS[2]) or '0')
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if (rpm > 0 and req + 1 > rpm) or (tpm > 0 and tok + tokens > tpm) then
  return 0
end
redis.call('INCR', KEYS[1]); redis.call('EXPIRE', KEYS[1], 120)
redis.call('INCRBY', KEYS[2], tokens); redis.call('EXPIRE', KEYS[2], 120)
return 1
"""


def window() -> tuple[int, float]:
    """The current minute (since the epoch) and the seconds left in it."""
    now = time.time()
    minute = int(now // 60)
    return minute, 60 - (now % 60)


class RateLimiter:
    """``allow`` returns 0 when admitted, else the seconds until the window resets."""

    def __init__(self, redis: Redis | None, *, prefix: str = "tg:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._script = redis.register_script(_LUA) if redis is not None else None
        self._local: dict[tuple[str, int], list[int]] = {}

    async def allow(
        self,
        key_id: str,
        rpm: int | None,
        tpm: int | None,
        tokens: int,
        at: tuple[int, float] | None = None,
    ) -> float:
        """``at``: the window (minute, seconds left) to count in; the current one if None."""
        if not rpm and not tpm:
            return 0.0
        minute, retry = at or window()
        if self._script is not None:
            keys = [f"{self.prefix}rl:{key_id}:{minute}:r", f"{self.prefix}rl:{key_id}:{minute}:t"]
            ok = await self._script(keys=keys, args=[rpm or 0, tpm or 0, tokens])
            return 0.0 if int(ok) else retry
        counts = self._local.setdefault((key_id, minute), [0, 0])
        if (rpm and counts[0] + 1 > rpm) or (tpm and counts[1] + tokens > tpm):
            return retry
        counts[0] += 1
        counts[1] += tokens
        if len(self._local) > 10_000:
            self._local = {k: v for k, v in self._local.items() if k[1] >= minute}
        return 0.0

    async def add(self, key_id: str, minute: int, tokens: int) -> None:
        """Count ``tokens`` more (or fewer) in the token window of ``minute``."""
        if not tokens:
            return
        if self.redis is not None:
            key = f"{self.prefix}rl:{key_id}:{minute}:t"
            pipe = self.redis.pipeline(transaction=True)
            pipe.incrby(key, tokens)
            pipe.expire(key, 120)
            await pipe.execute()
            return
        counts = self._local.get((key_id, minute))
        if counts is not None:
            counts[1] += tokens
