"""Mutable simulator state: config, prefix cache, scheduler slots, counters, runtime control."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from engines.sim.config import SimConfig
from engines.sim.errors import SimError
from engines.sim.generation import Generation
from engines.sim.metrics import VllmMetrics
from engines.sim.prefix_cache import PrefixCache

_LATENCY_KEYS = (
    "ttft_base_s",
    "prefill_s_per_token",
    "itl_s",
    "idle_close_s",
    "queue_s",
    "keepalive_every_s",
    "queue_close_s",
    "poll_delay_s",
)
_COUNT_KEYS = (
    "default_output_tokens",
    "reasoning_tokens",
    "tool_arg_chars",
    "concurrency_limit",
    "parallel_tool_calls",
)
# How hard the simulator is, switchable at runtime (see SimConfig)
_BOOL_KEYS = (
    "strict_encoder",
    "keepalive_comments",
    "tool_call_fragments",
    "named_tool_stop",
    "interleave_tool_calls",
    "tool_call_ids",
)
_CONTROL_KEYS = frozenset(
    (
        "healthy",
        "fail_rate",
        "fail_status",
        "fail_mode",
        "models",
        "reset_cache",
        "reply",
        "prompt_tokens_per_byte",
    )
    + _LATENCY_KEYS
    + _COUNT_KEYS
    + _BOOL_KEYS
)


@dataclass(slots=True)
class SimEngine:
    """One data-parallel engine of a replica: its own running slots and prefix cache."""

    index: int
    cache: PrefixCache
    slots: asyncio.Semaphore
    running: int = 0
    waiting: int = 0


class SimState:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.healthy = True
        self.last_user_id: str | None = None
        self.engines = [
            SimEngine(i, PrefixCache(config.cache_blocks), asyncio.Semaphore(config.max_num_seqs))
            for i in range(config.data_parallel_size)
        ]
        self._turn = -1
        self.metrics = VllmMetrics(
            config.model,
            block_size=config.block_size,
            num_gpu_blocks=config.cache_blocks,
            engines=config.data_parallel_size,
        )
        self.stats: dict[str, int] = {
            "requests": 0,  # generation requests received
            "completed": 0,  # answered in full
            "errors": 0,  # answered with an error status (refused or injected)
            "faults": 0,  # injected failures of any kind
            "prompt_tokens": 0,
            "cached_tokens": 0,
            "generation_tokens": 0,
            "idle_closes": 0,  # requests dropped on a connection closed for idleness
            "aborted": 0,  # not-streamed requests whose client left (vLLM mode stops them)
        }

    @property
    def cache(self) -> PrefixCache:
        """The first engine's prefix cache (the only one without data parallelism)."""
        return self.engines[0].cache

    @property
    def running(self) -> int:
        return sum(e.running for e in self.engines)

    @property
    def waiting(self) -> int:
        return sum(e.waiting for e in self.engines)

    def pick_engine(self, rank: int | None = None) -> SimEngine:
        """The engine a new request goes to: the one the caller asked for (vLLM's
        ``X-data-parallel-rank``), else the least loaded (vLLM's data-parallel balancing
        by queue lengths), in turn on a tie; never by cached prefix."""
        n = len(self.engines)
        if rank is not None:
            if not 0 <= rank < n:
                # vLLM's InputProcessor.process_inputs: a VLLMValidationError, so a 400
                raise SimError(400, f"data_parallel_rank {rank} is out of range [0, {n}).")
            return self.engines[rank]
        self._turn = (self._turn + 1) % n  # spreads a burst that arrives at once
        return min(self.engines, key=lambda e: (e.running + e.waiting, (e.index - self._turn) % n))

    @asynccontextmanager
    async def slot(self, engine: int = 0) -> AsyncIterator[float]:
        """Hold one of ``max_num_seqs`` running slots of an engine; yields the seconds
        spent queued.

        A free slot is taken without suspending, so an idle zero-latency simulator never
        yields to the event loop here.
        """
        e = self.engines[engine]
        start = time.perf_counter()
        if e.slots.locked():
            e.waiting += 1
            try:
                await e.slots.acquire()
            finally:
                e.waiting -= 1
        else:
            await e.slots.acquire()
        e.running += 1
        try:
            yield time.perf_counter() - start
        finally:
            e.running -= 1
            e.slots.release()

    def finished(self, gen: Generation, queued_s: float) -> None:
        stats = self.stats
        stats["completed"] += 1
        stats["prompt_tokens"] += gen.prompt_tokens
        stats["cached_tokens"] += gen.cached_tokens
        stats["generation_tokens"] += gen.output_tokens
        self.metrics.finished(
            engine=gen.engine,
            prompt_tokens=gen.prompt_tokens,
            cached_tokens=gen.cached_tokens,
            output_tokens=gen.output_tokens,
            finish_reason=gen.finish_reason,
            queued_s=queued_s,
            ttft_s=queued_s + gen.prefill_s,
            e2e_s=time.perf_counter() - gen.started,
        )

    def exposition(self) -> bytes:
        return self.metrics.exposition(
            [(e.running, e.waiting, e.cache.usage()) for e in self.engines]
        )

    def control(self, data: Any) -> None:
        """Apply a runtime change (all of it, or none of it if anything is invalid)."""
        if not isinstance(data, dict):
            raise SimError(400, "control body must be a JSON object")
        unknown = sorted(set(data) - _CONTROL_KEYS)
        if unknown:
            raise SimError(400, f"unknown control keys {unknown}; known: {sorted(_CONTROL_KEYS)}")
        changes: dict[str, Any] = {}
        try:
            for key in _LATENCY_KEYS:
                if key in data:
                    changes[key] = float(data[key])
            for key in _COUNT_KEYS:
                if key in data:
                    changes[key] = int(data[key])
            for key in _BOOL_KEYS:
                if key in data:
                    if not isinstance(data[key], bool):
                        raise TypeError(f"{key} must be true or false")
                    changes[key] = data[key]
            if "prompt_tokens_per_byte" in data:
                changes["prompt_tokens_per_byte"] = max(0.0, float(data["prompt_tokens_per_byte"]))
            if "fail_rate" in data:
                changes["fail_rate"] = float(data["fail_rate"])
            if "fail_status" in data:
                changes["fail_status"] = int(data["fail_status"])
            if "fail_mode" in data:
                changes["fail_mode"] = str(data["fail_mode"] or "")
            if "reply" in data:
                changes["reply"] = str(data["reply"] or "")
            if "models" in data:
                if not isinstance(data["models"], list):
                    raise TypeError("models must be a list of names")
                changes["models"] = tuple(str(m) for m in data["models"])
            config = replace(self.config, **changes)
        except (TypeError, ValueError) as exc:
            raise SimError(400, f"invalid control: {exc}") from exc
        self.config = config
        if "healthy" in data:
            self.healthy = bool(data["healthy"])
        if data.get("reset_cache"):
            for e in self.engines:
                e.cache.clear()

    def snapshot(self) -> dict[str, Any]:
        cfg = self.config
        return {
            **self.stats,
            "running": self.running,
            "waiting": self.waiting,
            "in_flight": self.running + self.waiting,
            "cache_blocks": sum(len(e.cache) for e in self.engines),
            "cache_capacity": sum(e.cache.capacity for e in self.engines),
            "healthy": self.healthy,
            "fail_rate": cfg.fail_rate,
            "fail_status": cfg.fail_status,
            "fail_mode": cfg.fail_mode,
            "replica_id": cfg.replica_id,
            "last_user_id": self.last_user_id,
        }
